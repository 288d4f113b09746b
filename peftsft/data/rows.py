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


def jsonl_lines(path: Path) -> Iterator[tuple[str, str]]:
    """(line, "file:line") for every non-blank line, streamed: a file of a million rows is never held whole."""
    try:
        with path.open("rb") as handle:
            check_head(handle.read(HEAD), path, "dataset")
            handle.seek(0)
            for number, raw in enumerate(handle, start=1):
                try:
                    line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
                except UnicodeDecodeError:
                    decode_utf8(path.read_bytes(), path, "dataset")  # raises, naming where it stops being UTF-8
                    raise
                if line.strip():
                    yield line, f"{path}:{number}"
    except OSError as exc:
        raise UserError(f"{path}: cannot read dataset: {exc.strerror or exc}") from None


def parse_jsonl_row(line: str | bytes) -> dict[str, Any]:
    """A JSONL line as a row; ValueError when it is not a JSON object."""
    data = json.loads(line)
    if not isinstance(data, dict):
        raise ValueError("a row must be a JSON object")
    return data


def _jsonl_rows(path: Path, on_bad_row: str, bad: list[str]) -> Iterator[Row]:
    for line, where in jsonl_lines(path):
        try:
            data = parse_jsonl_row(line)
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
    """Rows of a parquet file, read a record batch at a time."""
    import pyarrow.parquet as pq

    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=4096)
        number = 0
        for batch in batches:
            for data in batch.to_pylist():
                number += 1
                yield Row(data, f"{path}:row {number}")
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a damaged file
        raise UserError(f"{path}: cannot read parquet dataset: {exc}") from None


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


class BadRows(list):
    """Bad-row messages: every one counted in `total`, the first LIMIT kept (not a million of them)."""

    LIMIT = 100

    def __init__(self, lines=(), total: int | None = None):
        super().__init__(lines)
        self.total = len(self) if total is None else total

    def append(self, line: str) -> None:
        self.total += 1
        if len(self) < self.LIMIT:
            super().append(line)

    def __reduce__(self):  # pickled whole (results of worker processes), the total included
        return BadRows, (list(self), self.total)

    def extend(self, later: BadRows) -> None:  # type: ignore[override]
        """Add those found after these (in another process), keeping the first LIMIT."""
        free = max(self.LIMIT - len(self), 0)
        super().extend(list(later)[:free])
        self.total += getattr(later, "total", len(later))


def report_bad_row(where: str, problem: str, on_bad_row: str, bad: list[str]) -> None:
    if on_bad_row == "fail":
        raise UserError(
            f"{where}: {problem}",
            hint="fix the row, or set [data] on_bad_row = \"skip\" to skip and count bad rows",
        )
    bad.append(f"{where}: {problem}")
