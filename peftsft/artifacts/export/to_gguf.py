"""GGUF exports of a chat run: the merged model (`gguf`), or the LoRA alone over a base GGUF (`gguf-lora`), each
with an Ollama Modelfile, and verified in llama.cpp itself (transformers' GGUF reader when llama-cpp-python is
not installed; a LoRA GGUF has no other reader, so it needs llama.cpp or --no-verify).

Every file is written under a temporary name beside its target and renamed only after the check passed.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from peftsft.core.errors import UserError
from peftsft.artifacts.export.runs import base_gguf_file, load_base, tuned_config
from peftsft.artifacts.export.runtimes import LlamaCppRuntime, TransformersRuntime, llama_cpp_importable
from peftsft.artifacts.export.template import modelfile


def gguf_companions(job, run) -> list[Path]:
    """Files written beside --out: the Modelfile, and for gguf-lora a base GGUF when the base did not come as one."""
    files = [job.out.with_suffix(".Modelfile")] if job.modelfile else []
    if job.format == "gguf-lora" and base_gguf_file(run) is None:
        files.append(lora_base_path(job))
    return files


def lora_base_path(job) -> Path:
    return job.out.with_name(f"{job.out.stem}.base.{job.quant}.gguf")


@contextmanager
def staged(path: Path) -> Iterator[Path]:
    """A temporary name beside `path` (same file system, so the final rename is atomic); removed unless used."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}-{uuid.uuid4().hex[:8]}.tmp{path.suffix}")
    try:
        yield tmp
    finally:
        tmp.unlink(missing_ok=True)


def export_gguf(exporter, job) -> Path:
    """The adapter merged into the base, as one GGUF of weight type `job.quant` (+ Modelfile)."""
    from peftsft.artifacts.export.gguf import check_exportable, require_quant, write_gguf

    run = exporter.run
    require_quant(job.quant)  # before any work: a K-quant without llama-cpp-python is refused here
    check_exportable(tuned_config(run), exporter.tokenizer)  # before the costly merge
    text = modelfile(f"./{job.out.name}", exporter.tokenizer, run.name, quant=job.quant) if job.modelfile else None
    merged = exporter.merged  # (its own status line: rich shows one at a time)
    with ExitStack() as stack:
        tmp = stack.enter_context(staged(job.out))
        with exporter.console.status(f"writing GGUF ({job.quant})"):
            # the pre-tokenizer is named after the tokenizer training used (a GGUF base's own name may differ:
            # transformers rebuilds SmolLM2's "smollm" split as plain GPT-2), so llama.cpp splits text as training did
            write_gguf(merged, exporter.tokenizer, tmp, job.quant, run.name)
        exporter._check(f"gguf {job.quant}", f"gguf {job.quant}", lambda: gguf_runtime(exporter, tmp), job.out)
        written = _place(stack, {job.out: tmp}, job, text)
    return exporter._done(*written)


def export_gguf_lora(exporter, job) -> Path:
    """The LoRA alone in llama.cpp's adapter GGUF, over the base's own GGUF (or one written beside it)."""
    from peftsft.artifacts.export.gguf import check_exportable, require_quant, write_gguf, write_lora_gguf

    run = exporter.run
    config = tuned_config(run)
    check_exportable(config, exporter.tokenizer)  # every refusal comes before any work
    _require_lora_exportable(exporter)
    source = base_gguf_file(run)
    if source is None:
        require_quant(job.quant)
    base = Path(source) if source else lora_base_path(job)
    from_line = str(base.resolve()) if source else f"./{base.name}"
    text = modelfile(from_line, exporter.tokenizer, run.name, adapter=f"./{job.out.name}") if job.modelfile else None
    with ExitStack() as stack:
        tmp = stack.enter_context(staged(job.out))
        files = {job.out: tmp}
        with exporter.console.status("writing the LoRA as GGUF"):
            write_lora_gguf(run.adapter_dir, config, tmp, run.name)
        if source is None:
            files[base] = base_tmp = stack.enter_context(staged(base))
            with exporter.console.status(f"writing the base as GGUF ({job.quant})"):
                write_gguf(load_base(run, dequantize=True), exporter.tokenizer, base_tmp, job.quant, run.name)
        tolerance = f"gguf {job.quant if source is None else gguf_file_quant(base)}"
        base_now = files.get(base, base)
        exporter._check("gguf-lora", tolerance, lambda: LlamaCppRuntime(base_now, lora=tmp, n_ctx=_n_ctx(exporter)),
                        job.out)
        written = _place(stack, files, job, text)
    return exporter._done(*written)


def _require_lora_exportable(exporter) -> None:
    from peftsft.artifacts.export.gguf import lora_problems
    from peftsft.artifacts.export.gguf.quants import install_command

    run = exporter.run
    if not run.is_peft:
        raise UserError(f"strategy {run.recipe.strategy.name!r} saved a whole model, not a LoRA adapter",
                        hint=f"export it merged: python -m peftsft export {run.path} --format gguf --out model.gguf")
    problems = lora_problems(json.loads((run.adapter_dir / "adapter_config.json").read_text(encoding="utf-8")))
    if problems:
        raise UserError("cannot export this adapter as a GGUF LoRA", problems=problems,
                        hint="use --format gguf (the adapter merged into the base) instead")
    if exporter.verify and not llama_cpp_importable():
        raise UserError("a GGUF LoRA is verified in llama.cpp, and llama-cpp-python is not installed",
                        hint=f"install it: {install_command()}; or pass --no-verify (not recommended)")


def _place(stack: ExitStack, files: dict[Path, Path], job, text: str | None) -> list[Path]:
    """Rename every checked temporary into place, then the Modelfile (written last: it names the others)."""
    for target, tmp in files.items():
        os.replace(tmp, target)
    written = list(files)
    if text is not None:
        path = job.out.with_suffix(".Modelfile")
        tmp = stack.enter_context(staged(path))
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
        written.append(path)
    return written


def _n_ctx(exporter) -> int:
    return max(64, exporter.reference.longest + 16)


def gguf_runtime(exporter, path: Path):
    """llama.cpp when llama-cpp-python is installed; transformers' GGUF reader (dequantized) otherwise."""
    if llama_cpp_importable():
        return LlamaCppRuntime(path, n_ctx=_n_ctx(exporter))
    return load_gguf_file(path)


def load_gguf_file(path: Path) -> TransformersRuntime:
    """The GGUF through transformers' own GGUF loader (dequantized to float32)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    return TransformersRuntime(model, tokenizer, runtime="transformers (GGUF reader)")


def gguf_file_quant(path: Path) -> str:
    """The --quant name of an existing GGUF's file type (its tolerance applies to a LoRA over it)."""
    from gguf import GGUFReader

    from peftsft.artifacts.export.gguf.quants import QUANTS, file_type

    field = GGUFReader(str(path)).fields.get("general.file_type")
    by_type = {file_type(q): q for q in QUANTS}
    return by_type.get(int(field.contents()) if field is not None else -1, "q4_0")
