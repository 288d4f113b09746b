"""Export a run: adapter | merged | gguf | gguf-lora (formats/, one module each), verified before it appears at --out.

`Exporter` is the session every export of one run shares: the training tokenizer, the reference outputs of base +
adapter and the merged model are computed once; `check` compares an artifact re-loaded from disk with the reference,
`seal` writes an export dir's card and verification record. Each format writes under a temporary name, re-loads,
checks and only then renames: a failed check, an error or Ctrl-C leaves nothing at --out.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console

from peftsft.artifacts.export.formats import ExportJob, format_named, refuse_options
from peftsft.artifacts.export.record import check_entry, write_record
from peftsft.artifacts.export.run_models import (
    TrainedRun,
    load_training_tokenizer,
    load_tuned,
    merged_model,
    open_run,
    require_mergeable,
)
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
from peftsft.core.errors import UserError
from peftsft.core.rundir import require_parent_folders

__all__ = ["ExportJob", "ExportRequest", "Exporter", "export_chat", "export_chat_after_training", "export_run"]


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

    def export(self, job: ExportJob, force: bool = False) -> Path:
        """Write one verified export (see the module docstring); returns its path."""
        fmt = format_named(job.format)
        refuse_existing(job, self.run, force)
        if fmt.merges:
            require_mergeable(self.run)  # before any loading: the clear error comes first
        return fmt.export(self, job)

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

    # ------------------------------------------------------------------------------------------ for the formats

    def check(self, artifact: str, tolerance: str, load, out: Path) -> None:
        """Load the artifact from disk (`load` → a runtime), compare it with the reference, print the result;
        raise if it diverged (nothing has been placed at `out` yet)."""
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

    def seal(self, folder: Path, job: ExportJob, checked: int) -> None:
        """An export dir's model card and verification record (the checks since `checked`), written before the
        dir moves into place."""
        from peftsft.artifacts.card import CardTarget, write_card

        checks = self.checks[checked:]
        target = CardTarget(job.format, str(job.out.resolve()), checks=tuple(check_entry(c) for c in checks))
        write_card(self.run.path, folder, target)
        write_record(job.out, job.format, checks, where=folder)

    def done(self, *paths: Path | None) -> Path:
        for path in paths:
            if path is not None:
                self.console.print(f"[green]wrote[/] {path}")
        return paths[0]


# ---------------------------------------------------------------------------------------------- helpers


def refuse_existing(job: ExportJob, run: TrainedRun, force: bool) -> None:
    """--out must not be the run itself, must suit the format (a .gguf file or a dir), and must not exist yet."""
    fmt = format_named(job.format)
    out = job.out.resolve()
    protected = [run.path.resolve(), run.adapter_dir.resolve()]
    if any(out == p or out in p.parents for p in protected) or protected[1] in out.parents:
        raise UserError(f"--out {job.out}: would overwrite the run itself", hint="choose a path outside the run dir")
    require_parent_folders(job.out, "--out")
    if fmt.single_file and job.out.suffix != ".gguf":
        raise UserError(f"--out {job.out}: a GGUF export is one file ending in .gguf", hint="e.g. --out model.gguf")
    existing = [t for t in [job.out, *fmt.companions(job, run)] if t.exists()]
    if existing and not force:
        raise UserError(f"{existing[0]} already exists", hint="pass --force to replace it, or choose another --out")
    if fmt.single_file and job.out.is_dir():
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


def export_run(
    run_dir: str | Path, jobs: list[ExportJob], console: Console, verify: bool = True, force: bool = False
) -> list[Path]:
    """Export one run in every way asked for; returns the written paths."""
    exporter = Exporter(open_run(run_dir), console, verify)
    return [exporter.export(job, force) for job in jobs]


def default_jobs(run: TrainedRun, formats: list[str], quant: str = "f16", dtype: str | None = None) -> list[ExportJob]:
    """Where a recipe's `[export] formats` go: <run dir>/exports/<the format's default name>."""
    return [ExportJob(name, run.dir.exports_dir / format_named(name).default_name(run.name, quant), quant=quant,
                      dtype=dtype) for name in formats]  # fmt: skip


def export_chat(run_dir: str | Path, request: ExportRequest, console: Console) -> Path:
    """One verified export of a chat run (adapter | merged | gguf | gguf-lora)."""
    refuse_options(format_named(request.fmt), {"quant": bool(request.quant), "dtype": bool(request.dtype)})
    job = ExportJob(request.fmt, Path(request.out), quant=request.quant or "f16", dtype=request.dtype,
                    modelfile=request.modelfile)
    return export_run(run_dir, [job], console, verify=request.verify, force=request.force)[0]


def export_chat_after_training(recipe, console: Console) -> list[str]:
    """Run the recipe's `[export] formats` into <run dir>/exports/ (verified like the CLI's exports)."""
    run = open_run(recipe.run_dir)
    jobs = default_jobs(run, recipe.export.formats, recipe.export.quant, recipe.export.dtype)
    exporter = Exporter(run, console)
    return [str(exporter.export(job)) for job in jobs]
