"""`--format gguf`: the adapter merged into the base as one GGUF of weight type `--quant` (+ an Ollama Modelfile),
checked in llama.cpp itself (transformers' GGUF reader when llama-cpp-python is not installed)."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

from peftsft.artifacts.export.formats.base import ExportJob, Format
from peftsft.artifacts.export.single_file import modelfile_path, place, staged


def export(session, job: ExportJob) -> Path:
    from peftsft.artifacts.export.gguf import check_exportable, require_quant, write_gguf
    from peftsft.artifacts.export.record import write_record
    from peftsft.artifacts.export.run_models import tuned_config
    from peftsft.artifacts.export.template import modelfile

    run = session.run
    require_quant(job.quant)  # before any work: a K-quant without llama-cpp-python is refused here
    check_exportable(tuned_config(run), session.tokenizer)  # before the costly merge
    text = modelfile(f"./{job.out.name}", session.tokenizer, run.name, quant=job.quant) if job.modelfile else None
    merged = session.merged  # (its own status line: rich shows one at a time)
    checked = len(session.checks)
    with ExitStack() as stack:
        tmp = stack.enter_context(staged(job.out))
        with session.console.status(f"writing GGUF ({job.quant})"):
            # the pre-tokenizer is named after the tokenizer training used (a GGUF base's own name may differ:
            # transformers rebuilds SmolLM2's "smollm" split as plain GPT-2), so llama.cpp splits text as training did
            write_gguf(merged, session.tokenizer, tmp, job.quant, run.name)
        session.check(f"gguf {job.quant}", f"gguf {job.quant}", lambda: reload(session, tmp), job.out)
        written = place(stack, {job.out: tmp}, job.out, text)
    write_record(job.out, "gguf", session.checks[checked:])  # beside it; its card is written by `push`
    return session.done(*written)


def reload(session, path: Path):
    from peftsft.artifacts.export.runtimes import gguf_runtime

    return gguf_runtime(path, context_for(session))


def context_for(session) -> int:
    """llama.cpp's context for the check: the longest reference sequence, with room to spare."""
    return max(64, session.reference.longest + 16)


def companions(job: ExportJob, run) -> list[Path]:
    return [modelfile_path(job.out)] if job.modelfile else []


FORMAT = Format(
    name="gguf",
    description="one GGUF file (llama.cpp, Ollama) with the adapter merged in, + an Ollama Modelfile",
    export=export,
    default_name=lambda run_name, quant: f"{run_name}.{quant}.gguf",
    options=frozenset({"quant", "modelfile"}),
    single_file=True,
    merges=True,
    chat_only=True,
    companions=companions,
)
