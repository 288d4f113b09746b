"""Labelled text rows → label map and tokenized train/eval datasets (input ids + one label id per row)."""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from peftsft.core.config import Recipe
from peftsft.data.rows import read_rows, report_bad_row
from peftsft.core.errors import UserError

LABELS_FILE = "labels.json"


@dataclass(frozen=True)
class LabelMap:
    """Label names in id order; rows may give a name or an id."""

    names: tuple[str, ...]

    def id_of(self, value: str | int) -> int | None:
        if isinstance(value, int):
            return value if 0 <= value < len(self.names) else None
        return self.names.index(value) if value in self.names else None

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.names))

    @property
    def label2id(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.names)}

    def save(self, directory: Path) -> None:
        (directory / LABELS_FILE).write_text(json.dumps({"labels": list(self.names)}, indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, directory: Path) -> LabelMap:
        return cls(tuple(json.loads((directory / LABELS_FILE).read_text(encoding="utf-8"))["labels"]))


@dataclass
class LabelledRow:
    text: str
    label: str | int  # as the file gives it
    where: str  # file:line


@dataclass
class ClassificationStats:
    rows: int = 0
    bad_rows: list[str] = field(default_factory=list)
    train_rows: int = 0
    eval_rows: int = 0
    truncated: int = 0
    max_tokens: int = 0
    train_labels: dict[str, int] = field(default_factory=dict)
    eval_labels: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {
            "rows": self.rows, "train_rows": self.train_rows, "eval_rows": self.eval_rows,
            "bad_rows": len(self.bad_rows), "bad_row_examples": self.bad_rows[:10], "truncated": self.truncated,
            "max_tokens": self.max_tokens, "train_labels": self.train_labels, "eval_labels": self.eval_labels,
        }


# ---------------------------------------------------------------------------------------------- reading


def read_labelled(path: str, recipe: Recipe, stats: ClassificationStats) -> list[LabelledRow]:
    """Every row of a .jsonl/.json file as (text, label); bad rows fail or are skipped per [data] on_bad_row."""
    section, on_bad_row = recipe.classification, recipe.data.on_bad_row
    rows = []
    for row in read_rows(path, on_bad_row, stats.bad_rows):
        stats.rows += 1
        text, label = row.data.get(section.text_column), row.data.get(section.label_column)
        problem = _row_problem(text, label, section.text_column, section.label_column)
        if problem:
            report_bad_row(row.where, problem, on_bad_row, stats.bad_rows)
            continue
        rows.append(LabelledRow(text, label, row.where))
    return rows


def _row_problem(text, label, text_column: str, label_column: str) -> str | None:
    if not isinstance(text, str) or not text.strip():
        return f"no text: column {text_column!r} must be a non-empty string (set [classification] text_column)"
    if isinstance(label, bool) or not isinstance(label, (str, int)):
        return (f"no label: column {label_column!r} must be a label name or an integer id, got {label!r} "
                "(set [classification] label_column)")
    return None


def label_map(recipe: Recipe, train: list[LabelledRow]) -> LabelMap:
    """The recipe's labels, else the training data's: sorted names, or ids 0..max."""
    if recipe.classification.labels:
        return LabelMap(tuple(recipe.classification.labels))
    values = {row.label for row in train}
    if all(isinstance(v, int) for v in values):
        if min(values) < 0:
            raise UserError(f"negative label id {min(values)} in the training data", hint="ids count from 0")
        names = tuple(str(i) for i in range(max(values) + 1))
    elif all(isinstance(v, str) for v in values):
        names = tuple(sorted(values))
    else:
        raise UserError(
            "the training labels mix names and integer ids",
            hint='list the names in id order: [classification] labels = ["negative", "positive"]',
        )
    if len(names) < 2:
        raise UserError(f"the training data has a single label ({names[0]!r}): nothing to classify",
                        hint="a classifier needs rows of at least two labels")
    return LabelMap(names)


def label_ids(rows: list[LabelledRow], labels: LabelMap, on_bad_row: str, stats: ClassificationStats):
    """(rows, ids) of the rows whose label is in the map; the others fail or are skipped."""
    kept, ids = [], []
    for row in rows:
        label_id = labels.id_of(row.label)
        if label_id is None:
            report_bad_row(row.where, f"label {row.label!r} is not one of {list(labels.names)} "
                           f"(ids 0..{len(labels.names) - 1})", on_bad_row, stats.bad_rows)
            continue
        kept.append(row)
        ids.append(label_id)
    return kept, ids


# ---------------------------------------------------------------------------------------------- datasets


def split_rows(recipe: Recipe, stats: ClassificationStats) -> tuple[list[LabelledRow], list[LabelledRow]]:
    """(train, eval): eval from [data] eval_path, else a seeded eval_fraction of the training rows, else none."""
    train = [row for spec in recipe.data.datasets for row in read_labelled(spec.path, recipe, stats)]
    if recipe.data.eval_path:
        return train, read_labelled(recipe.data.eval_path, recipe, stats)
    if recipe.data.eval_fraction > 0:
        random.Random(recipe.training.seed).shuffle(train)
        n_eval = max(1, round(len(train) * recipe.data.eval_fraction))
        return train[n_eval:], train[:n_eval]
    return train, []


def tokenize(tokenizer, texts: list[str], label_ids: list[int], max_length: int, stats: ClassificationStats):
    """A datasets.Dataset of input ids (+ attention mask, token type ids) and `labels`; padding is per batch."""
    from datasets import Dataset

    encoded = tokenizer(texts, truncation=True, max_length=max_length)
    full = tokenizer(texts, truncation=False)["input_ids"]
    stats.truncated += sum(len(ids) > max_length for ids in full)
    stats.max_tokens = max([stats.max_tokens, *(len(ids) for ids in encoded["input_ids"])])
    return Dataset.from_dict({**encoded, "labels": label_ids})


def build_datasets(tokenizer, recipe: Recipe, labels: LabelMap | None = None):
    """(train, eval or None, label map, stats) for a classification recipe."""
    stats = ClassificationStats()
    train_rows, eval_rows = split_rows(recipe, stats)
    if not train_rows:
        raise UserError("the training data has no usable rows", hint=f"{stats.rows} read, {len(stats.bad_rows)} bad")
    labels = labels or label_map(recipe, train_rows)
    on_bad_row = recipe.data.on_bad_row
    train_rows, train_ids = label_ids(train_rows, labels, on_bad_row, stats)
    eval_rows, eval_ids = label_ids(eval_rows, labels, on_bad_row, stats)
    max_length = min(recipe.classification.max_length, _model_max_length(tokenizer))
    train = tokenize(tokenizer, [r.text for r in train_rows], train_ids, max_length, stats)
    evals = tokenize(tokenizer, [r.text for r in eval_rows], eval_ids, max_length, stats) if eval_rows else None
    stats.train_rows, stats.eval_rows = len(train_rows), len(eval_rows)
    stats.train_labels = _counts(train_ids, labels)
    stats.eval_labels = _counts(eval_ids, labels)
    return train, evals, labels, stats


def _counts(ids: list[int], labels: LabelMap) -> dict[str, int]:
    counts = Counter(ids)
    return {name: counts.get(i, 0) for i, name in enumerate(labels.names)}


def _model_max_length(tokenizer) -> int:
    """The tokenizer's limit (encoders have learned positions only that far); huge sentinels mean none."""
    limit = getattr(tokenizer, "model_max_length", None) or 0
    return limit if 0 < limit < 1_000_000 else 1_000_000
