"""Arrow files for data larger than memory: written batch by batch, opened memory-mapped, read back window by window.

A memory-mapped file costs no memory until it is read, but every page read stays in the process's resident set for
as long as the mapping lives: one pass over a million tokenized rows would leave gigabytes resident. `scan` therefore
reads through a fresh mapping per window of rows, dropped (unmapped) before the next window is opened.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa

TOKENS = pa.list_(pa.int32())  # token ids and labels: vocabularies stay far below 2**31, -100 included
SAMPLES = pa.schema([("input_ids", TOKENS), ("labels", TOKENS)])
WINDOW_ROWS = 32000  # rows read through one mapping (tens of MB at chat lengths); a multiple of 1000, see packing
BATCH_ROWS = 1024


@contextmanager
def writing(path: Path, schema: pa.Schema):
    """An Arrow stream file (the format `datasets.Dataset.from_file` maps) open for record batches."""
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        yield writer


def token_lists(arrays: list[np.ndarray]) -> pa.ListArray:
    """One list<int32> array from per-row numpy arrays, without a Python int per token."""
    lengths = np.fromiter((len(a) for a in arrays), dtype=np.int32, count=len(arrays))
    offsets = np.concatenate(([0], np.cumsum(lengths, dtype=np.int32)))
    values = np.concatenate(arrays).astype(np.int32, copy=False) if arrays else np.zeros(0, np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(values, pa.int32()))


def open_files(paths: list[Path]):
    """The files' rows, in order, as one memory-mapped `datasets.Dataset` (None when there are none)."""
    from datasets import Dataset, concatenate_datasets

    parts = [Dataset.from_file(str(path)) for path in paths]
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else concatenate_datasets(parts)


def scan(dataset, columns: list[str] | None = None, rows=None, batch_rows: int = BATCH_ROWS) -> Iterator[pa.Table]:
    """The dataset's rows (all, or those at the positions `rows`, in that order) as Arrow tables of `batch_rows`.

    Each window is read through a copy of the dataset unpickled afresh: a memory-mapped table pickles as its file
    path, so the copy maps the file anew and its pages leave the resident set when the copy is dropped.
    """
    total = len(dataset) if rows is None else len(rows)
    blob = pickle.dumps(dataset) if dataset.cache_files else None
    if blob is not None and len(blob) > 1 << 24:  # partly in memory: a copy per window would cost more than it saves
        blob = None
    for start in range(0, total, WINDOW_ROWS):
        end = min(start + WINDOW_ROWS, total)
        source = pickle.loads(blob) if blob is not None else dataset
        window = source.select(range(start, end) if rows is None else rows[start:end], keep_in_memory=True)
        yield from window.with_format("arrow", columns=columns).iter(batch_rows)
        del source, window


def take(dataset, rows) -> pa.Table:
    """The rows at the positions `rows` (in that order) as one table with the samples' schema; none of a None dataset."""
    if dataset is None or not len(rows):
        return SAMPLES.empty_table()
    parts = [batch.replace_schema_metadata(None) for batch in scan(dataset, rows=rows, batch_rows=len(rows))]
    return pa.concat_tables(parts)
