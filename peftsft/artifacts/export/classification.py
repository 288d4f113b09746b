"""merge / export for classification runs: adapter dir or merged model dir, each checked against base + adapter.

As for chat runs, an export is written beside its target, re-loaded from there and compared (logits and
predicted labels on held-out texts) with the model as trained, and only then moved into place.
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import torch
from rich.console import Console

from peftsft.artifacts.export.formats import ExportJob, format_named, refuse_options
from peftsft.artifacts.export.formats.merged import default_dtype
from peftsft.artifacts.export.pipeline import ExportRequest, refuse_existing
from peftsft.artifacts.export.run_models import open_run, require_mergeable
from peftsft.core.errors import UserError
from peftsft.core.rundir import write_dir
from peftsft.data.rows import read_rows
from peftsft.tasks.classification.model import Classifier, load_classifier, load_run, logits_for, merge

FALLBACK_TEXTS = (
    "I really enjoyed this, it was great.",
    "This was a terrible waste of time.",
    "The meeting is scheduled for Tuesday.",
    "Not sure what to think about it.",
)
MAX_TEXTS = 32


def export_classification(run_dir: str | Path, request: ExportRequest, console: Console) -> Path:
    """Write one verified export (`adapter` or `merged`) of a classification run to `request.out`."""
    fmt, out, dtype = format_named(request.fmt), Path(request.out), request.dtype
    verify, force = request.verify, request.force
    if fmt.chat_only:
        raise UserError(f"a classification run cannot be exported as {fmt.name}: that format holds chat (causal) LMs",
                        hint="use --format merged (a standard transformers model dir) or --format adapter")
    if request.quant:
        raise UserError("--quant applies to GGUF exports, which classification runs do not have", hint="drop --quant")
    refuse_options(fmt, {"dtype": bool(dtype)})
    run = open_run(run_dir)
    refuse_existing(ExportJob(fmt.name, out), run, force)
    if fmt.merges:
        require_mergeable(run)
    with console.status("loading base + adapter (float32)"):
        reference = load_run(run.dir, "cpu", dequantize=True)
        texts = verification_texts(reference)
        want = logits_for(reference, texts)
    if fmt.merges:
        dtype = dtype or default_dtype(run)
        with console.status("merging the adapter into the base"):
            model = merge(reference)
        fill = lambda tmp: save_merged(model, reference, tmp, dtype)  # noqa: E731
    else:
        dtype = "float32"
        fill = lambda tmp: copy_adapter(run.adapter_dir, tmp)  # noqa: E731

    def fill_and_check(tmp: Path) -> None:
        fill(tmp)
        run.dir.copy_recipe(tmp)
        if verify:
            check_export(f"{fmt.name} {dtype}", tmp, texts, want, dtype, console)
        tmp.chmod(0o755)  # mkdtemp makes it private; a model dir is meant to be shared

    write_dir(out, fill_and_check)
    console.print(f"[green]wrote[/] {out}")
    return out


def save_merged(model: torch.nn.Module, reference: Classifier, directory: Path, dtype: str) -> None:
    """A plain *ForSequenceClassification dir (config carries id2label) + tokenizer + labels.json."""
    target = getattr(torch, dtype)
    model = model if model.dtype == target else copy.deepcopy(model).to(target)
    model.config.dtype = target
    model.save_pretrained(directory, safe_serialization=True)
    reference.tokenizer.save_pretrained(directory)
    reference.labels.save(directory)


def copy_adapter(adapter_dir: Path, directory: Path) -> None:
    for path in adapter_dir.iterdir():
        if path.is_file():
            shutil.copy2(path, directory / path.name)


def verification_texts(classifier: Classifier) -> list[str]:
    """Held-out texts of the run (its eval file, else training rows), else a few fixed sentences."""
    recipe = classifier.recipe
    if recipe is not None:
        column = recipe.classification.text_column
        paths = [recipe.data.eval_path] if recipe.data.eval_path else [s.path for s in recipe.data.datasets]
        texts = [row.data[column] for path in paths if path and Path(path).is_file()
                 for row in read_rows(path, "skip", []) if isinstance(row.data.get(column), str)]
        if texts:
            return texts[:MAX_TEXTS]
    return list(FALLBACK_TEXTS)


def check_export(artifact: str, directory: Path, texts: list[str], want: torch.Tensor, tolerance: str,
                 console: Console) -> None:
    """The export re-loaded from disk must give the reference's logits (within the dtype's rounding) and labels."""
    from peftsft.artifacts.export.verify import TOLERANCES

    got = logits_for(load_classifier(directory, "cpu"), texts)
    limit = TOLERANCES[tolerance].max_rel * float(want.abs().max())
    max_diff = float((got - want).abs().max())
    agreement = float((got.argmax(-1) == want.argmax(-1)).float().mean())
    line = f"{artifact}: max |Δ logit| {max_diff:.2e} (limit {limit:.2e}), same label on {agreement:.0%} of {len(texts)} texts"
    if max_diff > limit or agreement < TOLERANCES[tolerance].min_agreement:
        raise UserError(f"verification failed: {line}; nothing was written",
                        hint="--no-verify skips this check (not recommended)")
    console.print(f"[green]verified[/] {line}")


def export_classification_after_training(recipe, console: Console) -> list[str]:
    """A classification recipe's `[export] formats`, into <run dir>/exports/<format>."""
    run = open_run(recipe.run_dir)
    requests = [ExportRequest(fmt, run.dir.exports_dir / format_named(fmt).default_name(run.name, "f16"),
                              dtype=recipe.export.dtype) for fmt in recipe.export.formats]  # fmt: skip
    return [str(export_classification(run.path, request, console)) for request in requests]
