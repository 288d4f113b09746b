"""CLI for classification runs: `predict`, and what `eval`, `merge` and `export` do when given one."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ..errors import UserError


def add_commands(subparsers) -> None:
    predict = subparsers.add_parser("predict", help="label texts with a classification run (file, --text or stdin)")
    predict.add_argument("model", metavar="RUN_DIR|MODEL_DIR", help="a classification run dir or a merged export")
    predict.add_argument("--file", help="texts to label: .txt (one a line) or .jsonl/.json rows with a text column")
    predict.add_argument("--text", action="append", help="a text to label (repeatable)")
    predict.add_argument("--out", help="write the predictions as .jsonl here (default: a table, or JSON lines when piped)")
    predict.add_argument("--batch-size", type=int, default=32, help="texts per forward pass (default 32)")
    predict.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    predict.add_argument("--debug", action="store_true", help="show full tracebacks")
    predict.set_defaults(func=cmd_predict)


# ---------------------------------------------------------------------------------------------- predict


def read_texts(args: argparse.Namespace, text_column: str) -> list[str]:
    """--text values, else the --file's texts, else stdin's non-empty lines."""
    if args.text:
        return list(args.text)
    if args.file:
        return texts_from_file(Path(args.file), text_column)
    if sys.stdin.isatty():
        raise UserError("nothing to label", hint="pass --file FILE, --text TEXT, or pipe lines into stdin")
    return [line.strip() for line in sys.stdin if line.strip()]


def texts_from_file(path: Path, text_column: str) -> list[str]:
    from ..data.rows import read_rows

    if not path.is_file():
        raise UserError(f"--file {path}: no such file")
    if path.suffix not in (".jsonl", ".json"):
        return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    texts = []
    for row in read_rows(path):
        text = row.data.get(text_column)
        if not isinstance(text, str):
            raise UserError(f"{row.where}: no text in column {text_column!r}", hint="rows need a text column")
        texts.append(text)
    return texts


def predictions(classifier, texts: list[str], batch_size: int) -> list[dict]:
    """Per text: the predicted label, its probability, and every label's probability."""
    from .model import logits_for

    probs = logits_for(classifier, texts, batch_size).softmax(-1)
    names = classifier.labels.names
    return [
        {"text": text, "label": names[int(p.argmax())], "score": round(float(p.max()), 6),
         "scores": {name: round(float(v), 6) for name, v in zip(names, p)}}
        for text, p in zip(texts, probs)
    ]


def cmd_predict(args: argparse.Namespace) -> int:
    from ..models import pick_device
    from ..rundir import write_text
    from .model import load_classifier

    if args.batch_size < 1:
        raise UserError("--batch-size must be at least 1")
    console = Console(stderr=True)  # stdout carries the predictions when piped
    with console.status(f"loading {args.model}"):
        classifier = load_classifier(args.model, pick_device(args.device))
    column = classifier.recipe.classification.text_column if classifier.recipe else "text"
    texts = read_texts(args, column)
    if not texts:
        raise UserError("no texts to label (the input is empty)")
    rows = predictions(classifier, texts, args.batch_size)
    lines = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    if args.out:
        write_text(Path(args.out), lines)
        console.print(f"[green]labelled[/] {len(rows)} text(s) → {args.out}")
    elif sys.stdout.isatty():
        Console().print(prediction_table(rows))
    else:
        sys.stdout.write(lines)
    return 0


def prediction_table(rows: list[dict]) -> Table:
    table = Table("text", "label", "probability")
    for row in rows:
        table.add_row(row["text"], f"[bold]{row['label']}[/]", f"{row['score']:.3f}")
    return table


# ---------------------------------------------------------------------------------------------- eval


def cmd_eval_classification(args: argparse.Namespace) -> int:
    """`eval` on a classification run or merged dir: accuracy, macro-F1, per-label scores, confusion matrix."""
    from ..models import pick_device
    from ..rundir import write_json
    from .metrics import classification_metrics
    from .model import load_classifier
    from .train import confusion_table

    console = Console()
    with console.status(f"loading {args.model}"):
        classifier = load_classifier(args.model, pick_device(args.device))
    texts, label_ids, source = held_out(classifier, args.data)
    texts, label_ids = texts[: args.limit], label_ids[: args.limit]
    if not texts:
        raise UserError(f"{source}: no rows to evaluate")
    with console.status(f"labelling {len(texts)} row(s)"):
        rows = predictions(classifier, texts, args.batch_size)
    names = classifier.labels.names
    report = classification_metrics(label_ids, [names.index(r["label"]) for r in rows], names)
    for row, label_id in zip(rows, label_ids):
        row["true"] = names[label_id]
    out = Path(args.out) if args.out else (_run_dir_of(args.model) / "eval.json")
    write_json(out, {"model": args.model, "task": "classification", "data": source, **report, "predictions": rows})
    console.print(confusion_table(report, f"{source}: accuracy {report['accuracy']:.3f}, "
                                          f"macro-F1 {report['macro_f1']:.3f} ({report['rows']} rows)"))
    console.print(f"[green]saved[/] → {out}")
    return 0


def held_out(classifier, data_path: str | None) -> tuple[list[str], list[int], str]:
    """(texts, label ids, where from): --data, else the run's eval_path or eval_fraction split."""
    from ..config import DataSection, DatasetSpec, Recipe
    from .data import ClassificationStats, label_ids, read_labelled, split_rows

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


def _run_dir_of(model: str) -> Path:
    """A run dir keeps its eval.json; anything else writes to the current dir (as `eval` does for chat models)."""
    path = Path(model)
    return path if (path / "adapter").is_dir() else Path(".")


# ---------------------------------------------------------------------------------------------- merge / export


def cmd_export_classification(args: argparse.Namespace, fmt: str) -> int:
    """`merge` (fmt "merged") and `export --format adapter|merged` for a classification run."""
    from ..cli import console
    from .export import export_classification

    if getattr(args, "quant", None):
        raise UserError("--quant applies to GGUF exports, which classification runs do not have", hint="drop --quant")
    if args.dtype and fmt != "merged":
        raise UserError(f"--dtype applies to --format merged, not {fmt!r}", hint="drop --dtype")
    export_classification(args.run_dir, fmt, Path(args.out), console, dtype=args.dtype,
                          verify=not args.no_verify, force=args.force)
    return 0
