"""Export a run: adapter | merged | gguf | gguf-lora, each verified against base + adapter before it appears at --out.

Every artifact is written beside its target under a temporary name, re-loaded from there and checked, and only
then renamed into place: a failed check, an error or Ctrl-C leaves nothing at --out.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console

from peftsft.core.errors import UserError
from peftsft.core.rundir import write_dir
from peftsft.artifacts.export.formats import DTYPES
from peftsft.artifacts.export.record import check_entry, write_record
from peftsft.artifacts.export.runs import (
    TrainedRun,
    load_training_tokenizer,
    load_tuned,
    merged_model,
    open_run,
    require_mergeable,
    tuned_config,
)
from peftsft.artifacts.export.runtimes import TransformersRuntime
from peftsft.artifacts.export.to_gguf import export_gguf, export_gguf_lora, gguf_companions
from peftsft.artifacts.export.verify import (
    Check,
    Reference,
    check_artifact,
    held_out_prompts,
    loosest,
    print_checks,
    reference_outputs,
    require_passed,
)

RECIPE_FILE = "recipe.resolved.toml"
# what a clean PEFT adapter dir holds (training may leave other files beside them)
ADAPTER_FILES = (
    "adapter_config.json",
    "adapter_model.safetensors",
    "adapter_model.bin",
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "generation_config.json",
    "README.md",
)


@dataclass(frozen=True)
class ExportJob:
    format: str
    out: Path
    quant: str = "f16"  # gguf only
    dtype: str | None = None  # merged only; None: the base checkpoint's own dtype
    modelfile: bool = True  # gguf only: write an Ollama Modelfile beside the file


@dataclass(frozen=True)
class ExportRequest:
    """One export as asked for on the command line (any task); `quant` None: the format's default."""

    fmt: str
    out: Path
    quant: str | None = None
    dtype: str | None = None
    modelfile: bool = True
    verify: bool = True
    force: bool = False


class Exporter:
    """One run, any number of exports; the reference outputs and the merged model are computed once."""

    def __init__(self, run: TrainedRun, console: Console, verify: bool = True):
        self.run = run
        self.console = console
        self.verify = verify
        self.tokenizer = load_training_tokenizer(run)
        self._reference: Reference | None = None
        self._merged: torch.nn.Module | None = None
        self.checks: list[Check] = []

    # ------------------------------------------------------------------------------------------ shared state

    @property
    def reference(self) -> Reference:
        if self._reference is None:
            with self.console.status("reference: base + adapter on held-out prompts"), quiet_bitsandbytes():
                model = load_tuned(self.run)
                prompts = held_out_prompts(self.run.recipe.run.sample_prompts)
                self._reference = reference_outputs(model, self.tokenizer, prompts)
            del model
        return self._reference

    @property
    def merged(self) -> torch.nn.Module:
        if self._merged is None:
            with self.console.status("merging the adapter into the base (float32)"):
                self._merged = merged_model(self.run)
        return self._merged

    def _check(self, artifact: str, tolerance: str, load, out: Path) -> None:
        """Load the artifact from disk (`load` → a runtime), compare it with the reference, print the result;
        raise if it diverged."""
        if not self.verify:
            return
        reference = self.reference
        if self.run.recipe.quantization.bits == 8:
            tolerance = loosest(tolerance, "int8 reference")
        with self.console.status(f"verifying {artifact}"), quiet_bitsandbytes():
            runtime = load()
            try:
                check = check_artifact(artifact, runtime, reference, tolerance)
            finally:
                runtime.close()
        self.checks.append(check)
        print_checks(self.console, [check])
        require_passed([check], out)

    # ------------------------------------------------------------------------------------------ formats

    def export(self, job: ExportJob, force: bool = False) -> Path:
        refuse_existing(job, self.run, force)
        if job.format == "merged":
            require_mergeable(self.run)  # before any loading: the clear error comes first
            return self._export_merged(job)
        if job.format == "gguf":
            require_mergeable(self.run)
            checked = len(self.checks)
            path = export_gguf(self, job)
            write_record(job.out, "gguf", self.checks[checked:])  # beside it; its card is written by `push`
            return path
        if job.format == "gguf-lora":
            return export_gguf_lora(self, job)
        return self._export_adapter(job)

    def _seal(self, folder: Path, job: ExportJob, checked: int) -> None:
        """An export dir's model card and verification record, written before the dir moves into place."""
        from peftsft.artifacts.card import CardTarget, write_card

        checks = self.checks[checked:]
        target = CardTarget(job.format, str(job.out.resolve()), checks=tuple(check_entry(c) for c in checks))
        write_card(self.run.path, folder, target)
        write_record(job.out, job.format, checks, where=folder)

    def _export_adapter(self, job: ExportJob) -> Path:
        def fill(tmp: Path) -> None:
            for name in ADAPTER_FILES:
                if (self.run.adapter_dir / name).is_file():
                    shutil.copy2(self.run.adapter_dir / name, tmp / name)
            shutil.copy2(self.run.path / RECIPE_FILE, tmp / RECIPE_FILE)
            checked = len(self.checks)
            self._check("adapter", "float32", lambda: self._load_adapter(tmp), job.out)
            self._seal(tmp, job, checked)
            tmp.chmod(0o755)  # mkdtemp makes it private; a model dir is meant to be shared

        write_dir(job.out, fill)
        return self._done(job.out)

    def _load_adapter(self, directory: Path) -> TransformersRuntime:
        from transformers import AutoTokenizer

        return TransformersRuntime(load_tuned(self.run, adapter_dir=directory), AutoTokenizer.from_pretrained(directory))

    def _export_merged(self, job: ExportJob) -> Path:
        from peftsft.artifacts.export.merge import name_base_model, save_merged

        dtype = job.dtype or default_dtype(self.run)

        def fill(tmp: Path) -> None:
            save_merged(self.merged, self.tokenizer, tmp, dtype)
            name_base_model(tmp, self.run.recipe.model.base_id)
            shutil.copy2(self.run.path / RECIPE_FILE, tmp / RECIPE_FILE)
            checked = len(self.checks)
            self._check(f"merged {dtype}", dtype, lambda: TransformersRuntime(*load_merged_dir(tmp)), job.out)
            self._seal(tmp, job, checked)
            tmp.chmod(0o755)

        write_dir(job.out, fill)
        return self._done(job.out)

    def _done(self, *paths: Path | None) -> Path:
        for path in paths:
            if path is not None:
                self.console.print(f"[green]wrote[/] {path}")
        return paths[0]


# ---------------------------------------------------------------------------------------------- helpers


def refuse_existing(job: ExportJob, run: TrainedRun, force: bool) -> None:
    out = job.out.resolve()
    protected = [run.path.resolve(), run.adapter_dir.resolve()]
    if any(out == p or out in p.parents for p in protected) or protected[1] in out.parents:
        raise UserError(f"--out {job.out}: would overwrite the run itself", hint="choose a path outside the run dir")
    is_gguf = job.format in ("gguf", "gguf-lora")
    if is_gguf and job.out.suffix != ".gguf":
        raise UserError(f"--out {job.out}: a GGUF export is one file ending in .gguf", hint="e.g. --out model.gguf")
    targets = [job.out, *gguf_companions(job, run)] if is_gguf else [job.out]
    existing = [t for t in targets if t.exists()]
    if existing and not force:
        raise UserError(f"{existing[0]} already exists", hint="pass --force to replace it, or choose another --out")
    if is_gguf and job.out.is_dir():
        raise UserError(f"--out {job.out} is a directory", hint="give the path of the .gguf file to write")


@contextmanager
def quiet_bitsandbytes() -> Iterator[None]:
    """8-bit bases log a cast warning on every matmul; the reference runs hundreds of them."""
    logger = logging.getLogger("bitsandbytes")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def default_dtype(run: TrainedRun) -> str:
    """The recipe's [model] dtype when it names one, else the base checkpoint's own."""
    if run.recipe.model.dtype != "auto":
        return run.recipe.model.dtype
    name = str(getattr(tuned_config(run), "dtype", None) or "float32").removeprefix("torch.")
    return name if name in DTYPES else "float32"


def load_merged_dir(directory: Path):
    """Exactly what a user does: plain transformers, nothing else (upcast, so only the stored weights differ)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    return model, AutoTokenizer.from_pretrained(directory)


def export_run(
    run_dir: str | Path, jobs: list[ExportJob], console: Console, verify: bool = True, force: bool = False
) -> list[Path]:
    """Export one run in every way asked for; returns the written paths."""
    exporter = Exporter(open_run(run_dir), console, verify)
    return [exporter.export(job, force) for job in jobs]


def default_jobs(run: TrainedRun, formats: list[str], quant: str = "f16", dtype: str | None = None) -> list[ExportJob]:
    """Where a recipe's `[export] formats` go: <run dir>/exports/."""
    folder = run.path / "exports"
    paths = {"adapter": folder / "adapter", "merged": folder / "merged", "gguf": folder / f"{run.name}.{quant}.gguf",
             "gguf-lora": folder / f"{run.name}.lora.gguf"}
    return [ExportJob(f, paths[f], quant=quant, dtype=dtype) for f in formats]


def export_chat(run_dir: str | Path, request: ExportRequest, console: Console) -> Path:
    """One verified export of a chat run (adapter | merged | gguf | gguf-lora)."""
    if request.quant and request.fmt not in ("gguf", "gguf-lora"):
        raise UserError(f"--quant applies to --format gguf, not {request.fmt!r}", hint="drop --quant")
    if request.dtype and request.fmt != "merged":
        raise UserError(f"--dtype applies to --format merged, not {request.fmt!r}", hint="drop --dtype")
    job = ExportJob(request.fmt, Path(request.out), quant=request.quant or "f16", dtype=request.dtype,
                    modelfile=request.modelfile)
    return export_run(run_dir, [job], console, verify=request.verify, force=request.force)[0]


def export_chat_after_training(recipe, console: Console) -> list[str]:
    """Run the recipe's `[export] formats` into <run dir>/exports/ (verified like the CLI's exports)."""
    run = open_run(recipe.run_dir)
    jobs = default_jobs(run, recipe.export.formats, recipe.export.quant, recipe.export.dtype)
    exporter = Exporter(run, console)
    return [str(exporter.export(job)) for job in jobs]
