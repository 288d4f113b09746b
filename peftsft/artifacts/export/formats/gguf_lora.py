"""`--format gguf-lora`: the LoRA alone, in llama.cpp's adapter GGUF, over the base's own GGUF (or one written
beside it, of weight type `--quant`), + an Ollama Modelfile naming both; checked in llama.cpp (a LoRA GGUF has no
other reader, so it needs llama-cpp-python or --no-verify)."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

from peftsft.artifacts.export.formats.base import ExportJob, Format
from peftsft.artifacts.export.formats.gguf import context_for
from peftsft.artifacts.export.single_file import modelfile_path, place, staged
from peftsft.core.errors import UserError


def export(session, job: ExportJob) -> Path:
    from peftsft.artifacts.export.gguf import check_exportable, require_quant, write_gguf, write_lora_gguf
    from peftsft.artifacts.export.gguf.quants import quant_of_file
    from peftsft.artifacts.export.run_models import base_gguf_file, load_base, tuned_config
    from peftsft.artifacts.export.runtimes import LlamaCppRuntime
    from peftsft.artifacts.export.template import modelfile

    run = session.run
    config = tuned_config(run)
    check_exportable(config, session.tokenizer)  # every refusal comes before any work
    _require_lora_exportable(session)
    source = base_gguf_file(run)
    if source is None:
        require_quant(job.quant)
    base = Path(source) if source else base_path(job)
    from_line = str(base.resolve()) if source else f"./{base.name}"
    text = modelfile(from_line, session.tokenizer, run.name, adapter=f"./{job.out.name}") if job.modelfile else None
    with ExitStack() as stack:
        tmp = stack.enter_context(staged(job.out))
        files = {job.out: tmp}
        with session.console.status("writing the LoRA as GGUF"):
            write_lora_gguf(run.adapter_dir, config, tmp, run.name)
        if source is None:
            files[base] = base_tmp = stack.enter_context(staged(base))
            with session.console.status(f"writing the base as GGUF ({job.quant})"):
                write_gguf(load_base(run, dequantize=True), session.tokenizer, base_tmp, job.quant, run.name)
        tolerance = f"gguf {job.quant if source is None else quant_of_file(base)}"
        base_now = files.get(base, base)
        session.check("gguf-lora", tolerance,
                      lambda: LlamaCppRuntime(base_now, lora=tmp, n_ctx=context_for(session)), job.out)
        written = place(stack, files, job.out, text)
    return session.done(*written)


def _require_lora_exportable(session) -> None:
    from peftsft.artifacts.export.gguf import lora_problems
    from peftsft.artifacts.export.gguf.quants import install_command
    from peftsft.artifacts.export.runtimes import llama_cpp_importable

    run = session.run
    if not run.is_peft:
        raise UserError(f"strategy {run.recipe.strategy.name!r} saved a whole model, not a LoRA adapter",
                        hint=f"export it merged: python -m peftsft export {run.path} --format gguf --out model.gguf")
    problems = lora_problems(run.dir.adapter_config())
    if problems:
        raise UserError("cannot export this adapter as a GGUF LoRA", problems=problems,
                        hint="use --format gguf (the adapter merged into the base) instead")
    if session.verify and not llama_cpp_importable():
        raise UserError("a GGUF LoRA is verified in llama.cpp, and llama-cpp-python is not installed",
                        hint=f"install it: {install_command()}; or pass --no-verify (not recommended)")


def base_path(job: ExportJob) -> Path:
    """Where the base GGUF goes when the base did not come as one."""
    return job.out.with_name(f"{job.out.stem}.base.{job.quant}.gguf")


def companions(job: ExportJob, run) -> list[Path]:
    from peftsft.artifacts.export.run_models import base_gguf_file

    files = [modelfile_path(job.out)] if job.modelfile else []
    return files + ([base_path(job)] if base_gguf_file(run) is None else [])


FORMAT = Format(
    name="gguf-lora",
    description="the LoRA alone as a llama.cpp adapter GGUF, over the base's GGUF, + an Ollama Modelfile",
    export=export,
    default_name=lambda run_name, quant: f"{run_name}.lora.gguf",
    options=frozenset({"quant", "modelfile"}),
    single_file=True,
    chat_only=True,
    pushable=False,
    companions=companions,
)
