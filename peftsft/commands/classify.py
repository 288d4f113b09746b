"""CLI for classification runs: `predict`, and what `eval`, `merge` and `export` do when given one."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from peftsft.core.errors import UserError
from peftsft.tasks.classification.predict import prediction_table, predictions


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
    if sys.stdin is None or sys.stdin.closed or sys.stdin.isatty():
        raise UserError("nothing to label", hint="pass --file FILE, --text TEXT, or pipe lines into stdin")
    return [line.strip() for line in sys.stdin if line.strip()]


def texts_from_file(path: Path, text_column: str) -> list[str]:
    from peftsft.data.rows import read_rows

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


def cmd_predict(args: argparse.Namespace) -> int:
    from peftsft.models import pick_device
    from peftsft.core.rundir import write_text
    from peftsft.tasks.classification.model import load_classifier

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
