"""Recipe [data] → tokenized train/eval datasets (input_ids + labels) and the numbers behind them."""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

from datasets import Dataset

from ..config import DataSection
from ..errors import UserError
from .formats import RowError, to_messages
from .masking import IGNORE, Encoded, encode
from .rows import read_rows, report_bad_row


@dataclass
class DataStats:
    rows: int = 0
    kept: int = 0
    bad_rows: list[str] = field(default_factory=list)
    truncated: int = 0
    dropped_unsupervised: int = 0
    tokens: int = 0
    supervised_tokens: int = 0
    max_tokens: int = 0
    train_rows: int = 0
    eval_rows: int = 0

    def as_dict(self) -> dict:
        out = asdict(self)
        out["bad_rows"] = len(self.bad_rows)
        out["bad_row_examples"] = self.bad_rows[:10]
        out["supervised_share"] = round(self.supervised_tokens / max(self.tokens, 1), 4)
        return out


def apply_template(tokenizer, data: DataSection) -> None:
    """Use a custom Jinja template when the recipe names one; the tokenizer's own otherwise."""
    if data.template != "auto":
        tokenizer.chat_template = Path(data.template).read_text(encoding="utf-8")
    if not tokenizer.chat_template:
        raise UserError(
            "the tokenizer has no chat template",
            hint='set [data] template = "path/to/template.jinja"',
        )


def load_conversations(paths: list[str], data: DataSection, stats: DataStats) -> list[list[dict]]:
    """Every row of the given files as chat messages; bad rows fail or are skipped per the recipe."""
    formats = {spec.path: spec.format for spec in data.datasets}
    conversations = []
    for path in paths:
        for row in read_rows(path, data.on_bad_row, stats.bad_rows):
            stats.rows += 1
            try:
                conversations.append(to_messages(row.data, formats.get(path, "auto")))
            except RowError as exc:
                report_bad_row(row.where, str(exc), data.on_bad_row, stats.bad_rows)
    return conversations


def encode_all(tokenizer, conversations: list[list[dict]], data: DataSection, stats: DataStats) -> list[Encoded]:
    """Tokenize and mask; samples left with nothing supervised (after truncation) are dropped and counted."""
    kept = []
    for messages in conversations:
        try:
            sample = encode(tokenizer, messages, data.masking, data.max_length)
        except RowError as exc:
            report_bad_row("conversation", str(exc), data.on_bad_row, stats.bad_rows)
            continue
        stats.truncated += sample.truncated
        supervised = sum(label != IGNORE for label in sample.labels)
        if supervised == 0:
            stats.dropped_unsupervised += 1
            continue
        stats.tokens += len(sample.input_ids)
        stats.supervised_tokens += supervised
        stats.max_tokens = max(stats.max_tokens, len(sample.input_ids))
        kept.append(sample)
    stats.kept += len(kept)
    return kept


def build_datasets(tokenizer, data: DataSection, seed: int) -> tuple[Dataset, Dataset | None, DataStats]:
    stats = DataStats()
    train_conv = load_conversations([spec.path for spec in data.datasets], data, stats)
    eval_conv = load_conversations([data.eval_path], data, stats) if data.eval_path else []
    if not data.eval_path and data.eval_fraction > 0:
        random.Random(seed).shuffle(train_conv)
        n_eval = max(1, round(len(train_conv) * data.eval_fraction))
        eval_conv, train_conv = train_conv[:n_eval], train_conv[n_eval:]
    train = encode_all(tokenizer, train_conv, data, stats)
    evals = encode_all(tokenizer, eval_conv, data, stats)
    if not train:
        raise UserError(
            "the training dataset is empty after filtering",
            hint=f"{stats.rows} rows read, {len(stats.bad_rows)} bad, {stats.dropped_unsupervised} with nothing "
            "to learn (no assistant tokens left after truncation: raise [data] max_length?)",
        )
    stats.train_rows, stats.eval_rows = len(train), len(evals)
    return _to_dataset(train), (_to_dataset(evals) if evals else None), stats


def _to_dataset(samples: list[Encoded]) -> Dataset:
    return Dataset.from_dict(
        {"input_ids": [s.input_ids for s in samples], "labels": [s.labels for s in samples]}
    )
