"""Recipe [data] → tokenized train/eval datasets (input_ids + labels) and the numbers behind them.

Rows are read per dataset (format detected or given, fields and roles mapped), split into train/eval,
mixed by per-dataset sample counts or weights, then rendered with the chat template, masked and
tokenized. Every reply is checked as it is encoded (contract.ReplyChecks); the result is cached.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any, NamedTuple

from jinja2 import TemplateError

from peftsft.core.config import DatasetSpec, DataSection
from peftsft.core.errors import UserError
from peftsft.data.contract import ReplyChecks
from peftsft.data.formats import Content, Mapping, RowError, detect_format, to_messages
from peftsft.data.masking import IGNORE, Encoded, encode
from peftsft.data.replay import draw_replay, interleave, replay_count, replay_spec
from peftsft.data.rows import report_bad_row
from peftsft.data.sources import iter_rows
from peftsft.data.templates import apply_template, end_of_turn, generation_header, supports_tool_schemas
from peftsft.data.tools import tools_of

__all__ = ["DataStats", "apply_template", "build_datasets", "load_conversations"]


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
    sources: list[dict] = field(default_factory=list)  # per dataset: path, format, rows, bad, train, eval
    template: dict = field(default_factory=dict)  # name, sha256, end_of_turn
    lengths: dict = field(default_factory=dict)  # training samples' token counts: min, p50, p90, max, mean
    packing: dict = field(default_factory=dict)  # packed rows and their fill (the trainer packs when [data] packing)
    checks: dict = field(default_factory=dict)  # contract.ReplyChecks counts
    cache: str = "off"  # off | miss (built, stored) | hit (loaded)
    replay: dict = field(default_factory=dict)  # [data] replay: share asked, rows mixed in, the share they make

    def as_dict(self) -> dict:
        out = asdict(self)
        out["bad_rows"] = len(self.bad_rows)
        out["bad_row_examples"] = self.bad_rows[:10]
        out["supervised_share"] = round(self.supervised_tokens / max(self.tokens, 1), 4)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> DataStats:
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


@dataclass
class Item:
    content: Content  # or, for preference data, a preference.Pair / Unpaired
    where: str
    source: int  # index into [data] datasets; -1 for eval_path


class Reader(NamedTuple):
    """How a task reads rows: detect(row, mapping) -> format; parse(row, format, mapping) -> content (RowError if bad)."""

    detect: Callable[[dict, Mapping], str]
    parse: Callable[[dict, str, Mapping], Any]


CHAT = Reader(detect_format, to_messages)


def build_datasets(tokenizer, data: DataSection, seed: int):
    """(train, eval or None, stats); a rerun with the same inputs loads the cached result instead."""
    return cached_build(tokenizer, data, seed, _build)


def cached_build(tokenizer, data: DataSection, seed: int, build: Callable, kind: str = ""):
    """`build(tokenizer, data, seed)` with the recipe's template set, through the dataset cache; `kind` keeps the
    builds of other rows from the same [data] (preference pairs, KTO answers) apart from the chat build."""
    import hashlib

    from peftsft.data import cache

    info = apply_template(tokenizer, data)
    key = cache.fingerprint(tokenizer, data, seed) if data.cache else None
    key = hashlib.sha256(f"{key}:{kind}".encode()).hexdigest()[:24] if key and kind else key
    if key and (hit := cache.load(key)) is not None:
        train, evals, stats = hit
        stats = DataStats.from_dict(stats)
        stats.cache = "hit"
        return train, evals, stats
    train, evals, stats = build(tokenizer, data, seed)
    stats.template = info.as_dict()
    if key:
        cache.save(key, train, evals, asdict(stats))
        stats.cache = "miss"
    return train, evals, stats


def _build(tokenizer, data: DataSection, seed: int):
    stats, checks = DataStats(), ReplyChecks()
    train_items, eval_items = read_splits(data, seed, stats, CHAT)
    refuse_dropped_tools(tokenizer, train_items + eval_items, data.template)
    train = encode_all(tokenizer, train_items, data, stats, checks)
    if data.replay > 0 and train:
        train = add_replay(tokenizer, train, data, seed, stats, checks)
    evals = encode_all(tokenizer, eval_items, data, stats, checks)
    refuse_empty(train, stats)
    stats.train_rows, stats.eval_rows = len(train), len(evals)
    stats.checks = asdict(checks)
    stats.lengths = length_summary([len(s.input_ids) for s in train])
    train_ds = _to_dataset(train)
    from peftsft.data.packing import packing_stats

    stats.packing = {"enabled": data.packing, **packing_stats(train_ds, data.max_length)}
    return train_ds, (_to_dataset(evals) if evals else None), stats


def refuse_empty(train: list, stats: DataStats) -> None:
    """An empty training set is an error that says where the rows went."""
    if not train:
        raise UserError(
            "the training dataset is empty after filtering",
            hint=f"{stats.rows} rows read, {len(stats.bad_rows)} bad, {stats.dropped_unsupervised} with nothing "
            "to learn (no reply token left after truncation: raise [data] max_length?)",
        )


# ---------------------------------------------------------------------------------------------- reading


def read_splits(data: DataSection, seed: int, stats: DataStats, reader: Reader) -> tuple[list[Item], list[Item]]:
    """(train, eval) rows: every dataset read, the eval file or fraction split off, the training rows mixed."""
    per_source = [load_items(spec, i, data, stats, reader) for i, spec in enumerate(data.datasets)]
    train_items = [item for items in per_source for item in items]
    eval_items = load_items(eval_spec(data, data.eval_path), -1, data, stats, reader) if data.eval_path else []
    if not data.eval_path and data.eval_fraction > 0:
        # the same split evaluate.held_out_conversations reproduces: shuffle with the seed, eval rows first
        random.Random(seed).shuffle(train_items)
        n_eval = max(1, round(len(train_items) * data.eval_fraction))
        eval_items, train_items = train_items[:n_eval], train_items[n_eval:]
    return mix(train_items, data.datasets, seed, stats), eval_items


def eval_spec(data: DataSection, path: str) -> DatasetSpec:
    """A held-out file is read like the first dataset (format, fields, roles)."""
    if not data.datasets:
        return DatasetSpec(path=path)
    return data.datasets[0].model_copy(update={"path": path, "samples": None, "weight": None})


def load_items(spec: DatasetSpec, index: int, data: DataSection, stats: DataStats, reader: Reader = CHAT) -> list[Item]:
    """Every row of one dataset, normalised by `reader`; bad rows fail or are skipped per the recipe."""
    mapping, fmt = Mapping(spec.fields, spec.roles), spec.format
    source = {"path": spec.path, "format": fmt, "rows": 0, "bad": 0}
    bad_before, items = len(stats.bad_rows), []
    for row in iter_rows(spec, data.on_bad_row, stats.bad_rows):
        stats.rows += 1
        source["rows"] += 1
        try:
            if fmt == "auto":  # judged on the first good row, then held: a stray row is an error, not a new format
                fmt = reader.detect(row.data, mapping)
                source["format"] = f"{fmt} (detected)"
            items.append(Item(reader.parse(row.data, fmt, mapping), row.where, index))
        except RowError as exc:
            report_bad_row(row.where, str(exc), data.on_bad_row, stats.bad_rows)
    source["bad"] = len(stats.bad_rows) - bad_before
    if index >= 0:
        stats.sources.append(source)
    return items


def load_conversations(paths: list[str], data: DataSection, stats: DataStats) -> list[Content]:
    """Every row of the given datasets (recipe paths, or an eval file) as chat messages."""
    specs = {spec.path: spec for spec in data.datasets}
    return [
        item.content for path in paths for item in load_items(specs.get(path) or eval_spec(data, path), -1, data, stats)
    ]


def mix(items: list[Item], specs: list[DatasetSpec], seed: int, stats: DataStats) -> list[Item]:
    """Training rows per dataset as the recipe asks: all, exactly `samples`, or `weight` times as many."""
    out = []
    for index, spec in enumerate(specs):
        group = [item for item in items if item.source == index]
        target = spec.samples if spec.samples is not None else round(len(group) * (spec.weight or 1.0))
        chosen = draw(group, target, random.Random(seed + index))
        if index < len(stats.sources):
            stats.sources[index]["train"] = len(chosen)
        out += chosen
    return out


def add_replay(tokenizer, train: list[Encoded], data: DataSection, seed: int, stats: DataStats, checks: ReplyChecks):
    """The task's samples with `[data] replay` of general samples spread among them; stats.replay counts them."""
    spec = replay_spec(data)
    read = DataStats(bad_rows=stats.bad_rows)  # the pool's bad rows are reported with the rest, its rows apart
    pool = load_items(spec, -1, data, read)
    if not pool:
        raise UserError(f"[data] replay_path: no rows in {spec.path}", hint="point replay_path at chat data, or unset it")
    replay = encode_all(tokenizer, draw_replay(pool, replay_count(len(train), data.replay), seed), data, stats, checks)
    stats.replay = {
        "share": data.replay, "pool": spec.path, "pool_rows": len(pool), "task_rows": len(train),
        "replay_rows": len(replay), "actual_share": round(len(replay) / (len(train) + len(replay)), 4),
    }
    return interleave(train, replay)


def draw(group: list, n: int, rng: random.Random) -> list:
    """`n` items: a random subset, or every item repeated (whole copies first, then a random remainder)."""
    if not group or n == len(group):
        return list(group)
    whole, rest = divmod(n, len(group))
    return group * whole + rng.sample(group, rest)


# ---------------------------------------------------------------------------------------------- encoding


def refuse_dropped_tools(tokenizer, items: list[Item], template: str) -> None:
    """Rows with tool schemas need a template that renders them; otherwise the model never sees the tools."""
    with_tools = [item for item in items if tools_of(item.content)]
    if with_tools and not supports_tool_schemas(tokenizer):
        raise UserError(
            f"{with_tools[0].where}: {len(with_tools)} row(s) offer tools, but the chat template ({template}) "
            "does not render tool schemas: they would be dropped from every prompt",
            hint='set [data] template = "hermes" (ChatML with <tool_call> blocks), or a .jinja file that uses `tools`',
        )


def encode_all(tokenizer, items: list[Item], data: DataSection, stats: DataStats, checks: ReplyChecks) -> list[Encoded]:
    """Tokenize and mask; samples left with nothing supervised (after truncation) are dropped and counted."""
    markers = {"eot": end_of_turn(tokenizer), "eos": tokenizer.eos_token, "header": generation_header(tokenizer)}
    kept = []
    for item in items:
        try:
            sample = encode(tokenizer, item.content, data.masking, data.max_length)
        except RowError as exc:
            report_bad_row(item.where, str(exc), data.on_bad_row, stats.bad_rows)
            continue
        except TemplateError as exc:  # the template itself refused the row (raise_exception, a role it lacks)
            report_bad_row(item.where, f"the chat template cannot render it: {exc}", data.on_bad_row, stats.bad_rows)
            continue
        stats.truncated += sample.truncated
        supervised = sum(label != IGNORE for label in sample.labels)
        if supervised == 0:
            stats.dropped_unsupervised += 1
            continue
        checks.observe(tokenizer, item.content, sample, data.masking, markers, item.where)
        stats.tokens += len(sample.input_ids)
        stats.supervised_tokens += supervised
        stats.max_tokens = max(stats.max_tokens, len(sample.input_ids))
        kept.append(sample)
    stats.kept += len(kept)
    return kept


def length_summary(lengths: list[int]) -> dict:
    if not lengths:
        return {}
    ordered = sorted(lengths)

    def pct(p: float) -> int:
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))]

    summary = {"min": ordered[0], "p50": pct(0.5), "p90": pct(0.9), "max": ordered[-1]}
    return summary | {"mean": round(statistics.mean(ordered), 1), "histogram": histogram(ordered)}


def histogram(values: list[int], bins: int = 10) -> list[int]:
    """Counts in `bins` equal-width bins from min to max."""
    low, width = values[0], max((values[-1] - values[0]) / bins, 1e-9)
    counts = [0] * bins
    for value in values:
        counts[min(bins - 1, int((value - low) / width))] += 1
    return counts


def _to_dataset(samples: list[Encoded]):
    from datasets import Dataset

    return Dataset.from_dict({"input_ids": [s.input_ids for s in samples], "labels": [s.labels for s in samples]})
