"""Encoding one run of rows (in a worker process): render, tokenize in batches, mask, check, write Arrow.

What the run found — counts, bad rows, the contract's per-reply checks, the kept samples' lengths — comes back as a
`Found`, which adds up in row order over the runs of all processes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
from jinja2 import TemplateError

from peftsft.data.arrow import SAMPLES, scan, token_lists, writing
from peftsft.data.contract import ReplyChecks
from peftsft.data.formats import Content, RowError
from peftsft.data.masking import IGNORE, encode_rendered, rendered_rows
from peftsft.data.rows import BadRows, report_bad_row
from peftsft.data.tools import ToolChat

ENCODE_ROWS = 256  # rows per call into the tokenizer
WRITE_ROWS = 2048  # rows per Arrow record batch written


@dataclass
class Found:
    kept: int = 0
    truncated: int = 0
    dropped_unsupervised: int = 0
    tokens: int = 0
    supervised_tokens: int = 0
    max_tokens: int = 0
    bad_rows: BadRows = field(default_factory=BadRows)
    checks: ReplyChecks = field(default_factory=ReplyChecks)
    lengths: list = field(default_factory=list)  # the kept samples' token counts (int32 arrays)

    def merge(self, later: Found) -> None:
        add_counts(self, later)
        self.checks.merge(later.checks)
        self.lengths += later.lengths

    def all_lengths(self) -> np.ndarray:
        return np.concatenate(self.lengths) if self.lengths else np.zeros(0, np.int32)


def add_counts(total, later: Found) -> None:
    """Add what a later run found to `total` (a Found, or the build's DataStats): counts, the longest, bad rows."""
    for name in ("kept", "truncated", "dropped_unsupervised", "tokens", "supervised_tokens"):
        setattr(total, name, getattr(total, name) + getattr(later, name))
    total.max_tokens = max(total.max_tokens, later.max_tokens)
    total.bad_rows.extend(later.bad_rows)


def content_of(content: str, tools: str | None) -> Content:
    """A row's conversation (or text) from its stored JSON, with its tool schemas."""
    value = json.loads(content)
    return ToolChat(value, json.loads(tools)) if tools else value


def encode_run(tokenizer, items, order: np.ndarray, path: Path, data, markers: dict, advance) -> Found:
    """Encode the items at `order` (positions in the items dataset) into the samples file `path`."""
    found, ids, labels = Found(), [], []
    with writing(path, SAMPLES) as writer:
        for batch in scan(items, ["content", "tools", "where"], rows=order, batch_rows=ENCODE_ROWS):
            encode_batch(tokenizer, batch, data, markers, found, ids, labels)
            if len(ids) >= WRITE_ROWS:
                writer.write_batch(pa.record_batch([token_lists(ids), token_lists(labels)], schema=SAMPLES))
                ids, labels = [], []
            advance(batch.num_rows)
        if ids:
            writer.write_batch(pa.record_batch([token_lists(ids), token_lists(labels)], schema=SAMPLES))
    return found


def encode_batch(tokenizer, batch: pa.Table, data, markers: dict, found: Found, ids: list, labels: list) -> None:
    """Render, tokenize and mask the batch's rows; kept samples are appended to `ids` and `labels`.

    A row the template refuses is a bad row; a sample left with nothing supervised (after truncation) is dropped and
    counted; every kept sample's replies are checked (contract.ReplyChecks).
    """
    read = [(content_of(content, tools), where)
            for content, tools, where in zip(*(batch.column(c).to_pylist() for c in ("content", "tools", "where")))]
    rows = []
    for (content, where), row in zip(read, rendered_rows(tokenizer, [content for content, _ in read], data.masking)):
        if isinstance(row, RowError):
            report_bad_row(where, str(row), data.on_bad_row, found.bad_rows)
        elif isinstance(row, TemplateError):  # the template itself refused the row (raise_exception, a role it lacks)
            report_bad_row(where, f"the chat template cannot render it: {row}", data.on_bad_row, found.bad_rows)
        else:
            rows.append((content, where, row))
    encoded = encode_rendered(tokenizer, [row[2] for row in rows], data.masking, data.max_length)
    lengths = []
    for (content, where, _), sample in zip(rows, encoded):
        found.truncated += sample.truncated
        supervised = int(np.count_nonzero(sample.labels != IGNORE))
        if supervised == 0:
            found.dropped_unsupervised += 1
            continue
        found.checks.observe(tokenizer, content, sample, data.masking, markers, where)
        found.kept += 1
        found.tokens += len(sample.input_ids)
        found.supervised_tokens += supervised
        found.max_tokens = max(found.max_tokens, len(sample.input_ids))
        ids.append(sample.input_ids)
        labels.append(sample.labels)
        lengths.append(len(sample.input_ids))
    found.lengths.append(np.array(lengths, dtype=np.int32))
