"""`eval` for classification runs: accuracy, macro-F1, per-label scores and the confusion matrix, saved as JSON."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from peftsft.artifacts.evaluate import EvalRequest
from peftsft.core.errors import UserError
from peftsft.tasks.classification.predict import predictions


def evaluate_classifier(request: EvalRequest, console: Console) -> Path:
    """A classification run or merged dir on held-out rows: accuracy, macro-F1, per-label scores, confusion matrix."""
    from peftsft.models import pick_device
    from peftsft.core.rundir import write_json
    from peftsft.tasks.classification.metrics import classification_metrics
    from peftsft.tasks.classification.model import load_classifier
    from peftsft.tasks.classification.train import confusion_table

    with console.status(f"loading {request.model}"):
        classifier = load_classifier(request.model, pick_device(request.device))
    texts, label_ids, source = held_out(classifier, request.data)
    texts, label_ids = texts[: request.limit], label_ids[: request.limit]
    if not texts:
        raise UserError(f"{source}: no rows to evaluate")
    with console.status(f"labelling {len(texts)} row(s)"):
        rows = predictions(classifier, texts, request.batch_size)
    names = classifier.labels.names
    report = classification_metrics(label_ids, [names.index(r["label"]) for r in rows], names)
    for row, label_id in zip(rows, label_ids):
        row["true"] = names[label_id]
    out = Path(request.out) if request.out else _eval_file_of(request.model)
    write_json(out, {"model": request.model, "task": "classification", "data": source, **report, "predictions": rows})
    console.print(confusion_table(report, f"{source}: accuracy {report['accuracy']:.3f}, "
                                          f"macro-F1 {report['macro_f1']:.3f} ({report['rows']} rows)"))
    return out


def held_out(classifier, data_path: str | None) -> tuple[list[str], list[int], str]:
    """(texts, label ids, where from): --data, else the run's eval_path or eval_fraction split."""
    from peftsft.core.config import DataSection, DatasetSpec, Recipe
    from peftsft.tasks.classification.data import ClassificationStats, label_ids, read_labelled, split_rows

    recipe = classifier.recipe
    stats = ClassificationStats()
    if data_path:
        base = recipe or Recipe(data=DataSection(datasets=[DatasetSpec(path=data_path)]))
        rows, source = read_labelled(data_path, base, stats), data_path
    elif recipe is None or not (recipe.data.eval_path or recipe.data.eval_fraction > 0):
        raise UserError("no held-out data to evaluate on", hint="pass --data FILE.jsonl (rows with text and label)")
    else:
        _, rows = split_rows(recipe, stats)
        source = recipe.data.eval_path or f"eval_fraction {recipe.data.eval_fraction} of the training data"
    rows, ids = label_ids(rows, classifier.labels, recipe.data.on_bad_row if recipe else "fail", stats)
    return [r.text for r in rows], ids, source


def _eval_file_of(model: str) -> Path:
    """A run dir keeps its eval.json; anything else writes to the current dir (as `eval` does for chat models)."""
    from peftsft.core.rundir import RunDir

    run = RunDir(model)
    return run.eval_file if run.adapter_dir.is_dir() else Path("eval.json")
