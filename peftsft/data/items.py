"""Every row of the recipe's datasets, read once and normalised to chat messages, in an Arrow file on disk.

The file is what the encoding processes share (memory-mapped); the main process keeps two small arrays per row (which
dataset it came from, whether it offers tools) to split, mix and check without holding the rows themselves.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from peftsft.core.config import DatasetSpec, DataSection
from peftsft.core.errors import UserError
from peftsft.data.arrow import open_files, scan, writing
from peftsft.data.formats import Content, Mapping, RowError, detect_format, to_messages
from peftsft.data.rows import BadRows, parse_jsonl_row, report_bad_row
from peftsft.data.sources import iter_raw_rows, iter_rows
from peftsft.data.tools import tools_of

ITEMS = pa.schema([("content", pa.string()), ("tools", pa.string()), ("where", pa.string())])
BATCH = 4096


@dataclass
class Item:
    content: Content
    where: str
    source: int  # index into [data] datasets; -1 for eval_path


@dataclass
class Items:
    dataset: object  # datasets.Dataset: content (JSON), tools (JSON or null), where
    source: np.ndarray  # per row: its [data] datasets index (-1: the eval file, a replay pool)
    has_tools: np.ndarray

    def __len__(self) -> int:
        return len(self.source)

    def where(self, position: int) -> str:
        return self.dataset[int(position)]["where"]


def rows_of(spec: DatasetSpec, index: int, data: DataSection, stats) -> Iterator[tuple[Content, str]]:
    """Every row of one dataset, normalised; bad rows fail or are skipped per the recipe."""
    mapping, fmt = Mapping(spec.fields, spec.roles), spec.format
    source = {"path": spec.path, "format": fmt, "rows": 0, "bad": 0}
    bad_before = stats.bad_rows.total
    for row in iter_rows(spec, data.on_bad_row, stats.bad_rows):
        stats.rows += 1
        source["rows"] += 1
        try:
            if fmt == "auto":  # judged on the first good row, then held: a stray row is an error, not a new format
                fmt = detect_format(row.data, mapping)
                source["format"] = f"{fmt} (detected)"
            yield to_messages(row.data, fmt, mapping), row.where
        except RowError as exc:
            report_bad_row(row.where, str(exc), data.on_bad_row, stats.bad_rows)
    source["bad"] = stats.bad_rows.total - bad_before
    if index >= 0:
        stats.sources.append(source)


def load_items(spec: DatasetSpec, index: int, data: DataSection, stats) -> list[Item]:
    """A (small) dataset's rows in memory: the general check's and evaluation's conversations."""
    return [Item(content, where, index) for content, where in rows_of(spec, index, data, stats)]


def write_items(groups: list[tuple[DatasetSpec, int]], data: DataSection, stats, work: Path, name: str, console) -> Items:
    """The rows of each (dataset, index) in turn, normalised by `[data] num_proc` processes into Arrow files.

    The main process only streams the raw rows (JSONL lines as they are) to disk; parsing and normalising, the bulk
    of reading, run in the processes, each on a contiguous share, in row order.
    """
    from peftsft.data.parallel import Meter, processes_for, run_sharded

    files, sources, tools = [], [], []
    for n, (spec, index) in enumerate(groups):
        with Meter(console, f"reading {spec.path}", None, unit="rows") as meter:
            raw = _write_raw(spec, work / f"{name}-raw-{n}.arrow", meter)
        mapping = Mapping(spec.fields, spec.roles)
        fmt, detected_at = _detect(raw, spec.format, mapping)
        processes = processes_for(data.num_proc, len(raw))
        names = [f"{name}-{n}-{i:05d}.arrow" for i in range(processes)]

        def work_on(shard: int, start: int, end: int, advance):  # runs before the next dataset's turn
            return _normalise(raw, range(start, end), fmt, detected_at, mapping, data, work / names[shard], advance)

        with Meter(console, f"normalising {spec.path} ({processes} process{'es' if processes > 1 else ''})",
                   len(raw)) as meter:
            parts = run_sharded(work_on, len(raw), processes, meter)
        bad_before = stats.bad_rows.total
        for part in parts:
            stats.rows += part.rows
            stats.bad_rows.extend(part.bad_rows)
            sources.append(np.full(part.items, index, dtype=np.int32))
            tools.append(part.tools)
        files += [work / n for n in names if (work / n).exists()]
        if index >= 0:
            stats.sources.append({"path": spec.path, "format": f"{fmt} (detected)" if detected_at is not None and
                                  spec.format == "auto" else spec.format, "rows": sum(p.rows for p in parts),
                                  "bad": stats.bad_rows.total - bad_before})
    source = np.concatenate(sources) if sources else np.zeros(0, np.int32)
    return Items(open_files(files) if files else None, source, np.concatenate(tools) if tools else np.zeros(0, bool))


RAW = pa.schema([("line", pa.string()), ("pickled", pa.binary()), ("where", pa.string())])


def _write_raw(spec: DatasetSpec, path: Path, meter):
    """The dataset's rows as they are (JSON lines, or pickled rows of other formats), in order."""
    with writing(path, RAW) as writer:
        batch = []
        for row in iter_raw_rows(spec):
            batch.append(row)
            if len(batch) == BATCH:
                writer.write_batch(pa.record_batch([pa.array(c, t.type) for c, t in zip(zip(*batch), RAW)], schema=RAW))
                meter.advance(len(batch))
                batch = []
        if batch:
            writer.write_batch(pa.record_batch([pa.array(c, t.type) for c, t in zip(zip(*batch), RAW)], schema=RAW))
            meter.advance(len(batch))
    return open_files([path])


def _parse(line: str | None, pickled: bytes | None) -> dict:
    return pickle.loads(pickled) if line is None else parse_jsonl_row(line)


def _detect(raw, setting: str, mapping: Mapping) -> tuple[str, int | None]:
    """The format and the position of the row it was judged on: with "auto", the first row that shows one."""
    if setting != "auto":
        return setting, None
    position = 0
    for batch in scan(raw, batch_rows=256):
        for line, pickled in zip(batch.column("line").to_pylist(), batch.column("pickled").to_pylist()):
            try:
                return detect_format(_parse(line, pickled), mapping), position
            except (ValueError, RowError):  # malformed, or no format: reported when the rows are normalised
                position += 1
    return "auto", None


@dataclass
class Normalised:
    rows: int  # rows that parsed (a malformed JSON line is a bad row, not a row)
    items: int
    tools: np.ndarray
    bad_rows: BadRows


def _normalise(raw, rows: range, fmt: str, detected_at, mapping: Mapping, data: DataSection, path: Path, advance):
    """Parse and normalise the raw rows at `rows` into the items file `path`; bad rows fail or are skipped."""
    done = Normalised(0, 0, np.zeros(0, bool), BadRows())
    tools, batch = bytearray(), []
    with writing(path, ITEMS) as writer:
        position = rows.start
        for chunk in scan(raw, rows=rows, batch_rows=BATCH):
            for line, pickled, where in zip(*(chunk.column(c).to_pylist() for c in ("line", "pickled", "where"))):
                content = _normalise_row(line, pickled, where, fmt, detected_at, position, mapping, data, done)
                position += 1
                if content is not None:
                    schemas = tools_of(content)
                    batch.append((_json(content, where), json.dumps(schemas, ensure_ascii=False) if schemas else None, where))
                    tools.append(bool(schemas))
            _write(writer, batch)
            done.items += len(batch)
            batch = []
            advance(chunk.num_rows)
    done.tools = np.frombuffer(tools, dtype=np.bool_).copy()
    return done


def _normalise_row(line, pickled, where, fmt, detected_at, position, mapping, data, done) -> Content | None:
    try:
        row = _parse(line, pickled)
    except ValueError as exc:
        report_bad_row(where, f"malformed JSON: {exc}", data.on_bad_row, done.bad_rows)
        return None
    done.rows += 1
    try:
        if detected_at is None or position < detected_at:  # rows before the one the format was judged on show none
            detect_format(row, mapping)
        return to_messages(row, fmt, mapping)
    except RowError as exc:
        report_bad_row(where, str(exc), data.on_bad_row, done.bad_rows)
        return None


def _json(content: Content, where: str) -> str:
    try:
        return json.dumps(content if isinstance(content, str) else list(content), ensure_ascii=False)
    except (TypeError, ValueError) as exc:  # parquet can hold values JSON has no form for (bytes, dates)
        raise UserError(f"{where}: a value in this row cannot be stored as JSON: {exc}") from None


def _write(writer, batch: list[tuple]) -> None:
    if batch:
        writer.write_batch(pa.record_batch([pa.array(list(column), pa.string()) for column in zip(*batch)], schema=ITEMS))
