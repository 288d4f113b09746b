"""Read dataset files row by row, keeping file:line for every row so errors can point at it."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peftsft.core.errors import UserError
from peftsft.core.text_files import HEAD, check_head, decode_utf8, read_utf8


@dataclass(frozen=True)
class Row:
    data: dict[str, Any]
    where: str  # "file.jsonl:12"


SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")


def read_rows(path: str | Path, on_bad_row: str = "fail", bad: list[str] | None = None) -> Iterator[Row]:
    """Rows of a .jsonl, .json, .parquet or .csv file. A malformed row fails, or is skipped and noted in `bad`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"dataset not found: {path}", hint="check [data] datasets.path in the recipe")
    if path.suffix == ".jsonl":
        yield from _jsonl_rows(path, on_bad_row, bad if bad is not None else [])
    elif path.suffix == ".json":
        yield from _json_rows(path)
    elif path.suffix == ".parquet":
        yield from _parquet_rows(path)
    elif path.suffix == ".csv":
        yield from _csv_rows(path)
    else:
        raise UserError(
            f"{path}: unsupported dataset file type {path.suffix!r}", hint=f"use one of {', '.join(SUFFIXES)}"
        )


def _jsonl_rows(path: Path, on_bad_row: str, bad: list[str]) -> Iterator[Row]:
    try:
        lines = read_utf8(path, "dataset").splitlines()
    except OSError as exc:
        raise UserError(f"{path}: cannot read dataset: {exc.strerror or exc}") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            data = json.loads(line)
            if not isinstance(data, dict):
                raise ValueError("a row must be a JSON object")
        except ValueError as exc:
            report_bad_row(where, f"malformed JSON: {exc}", on_bad_row, bad)
            continue
        yield Row(data, where)


def _json_rows(path: Path) -> Iterator[Row]:
    try:
        data = json.loads(read_utf8(path, "dataset"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: cannot read dataset: {exc}", hint="a .json dataset is a list of objects") from None
    if not isinstance(data, list):
        raise UserError(f"{path}: a .json dataset must be a list of objects", hint="or use .jsonl, one per line")
    for index, item in enumerate(data):
        yield Row(item if isinstance(item, dict) else {"_invalid": item}, f"{path}[{index}]")


def _parquet_rows(path: Path) -> Iterator[Row]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a damaged file
        raise UserError(f"{path}: cannot read parquet dataset: {exc}") from None
    for number, data in enumerate(table.to_pylist(), start=1):
        yield Row(data, f"{path}:row {number}")


def _csv_rows(path: Path) -> Iterator[Row]:
    """CSV rows keyed by the header; the row's line number is where it starts (quoted fields may span lines)."""
    try:
        with path.open("rb") as raw:
            check_head(raw.read(HEAD), path, "dataset")
        handle = path.open(encoding="utf-8-sig", newline="")
    except OSError as exc:
        raise UserError(f"{path}: cannot read dataset: {exc}") from None
    with handle:
        reader = csv.DictReader(handle)
        start = 2  # line 1 is the header
        try:
            for data in reader:
                yield Row(dict(data), f"{path}:{start}")
                start = reader.line_num + 1
        except UnicodeDecodeError:
            decode_utf8(path.read_bytes(), path, "dataset")  # raises, naming where in the file it stops being UTF-8
            raise
        except csv.Error as exc:
            raise UserError(f"{path}:{start}: malformed CSV: {exc}") from None


def report_bad_row(where: str, problem: str, on_bad_row: str, bad: list[str]) -> None:
    if on_bad_row == "fail":
        raise UserError(
            f"{where}: {problem}",
            hint="fix the row, or set [data] on_bad_row = \"skip\" to skip and count bad rows",
        )
    bad.append(f"{where}: {problem}")
