"""Recipe [data] → tokenized train/eval datasets (input_ids + labels) and the numbers behind them.

Rows are read per dataset (format detected or given, fields and roles mapped) into an Arrow file, split into
train/eval, mixed by per-dataset sample counts or weights — as index arrays, never as lists of rows — then rendered
with the chat template, masked and tokenized by `[data] num_proc` processes, each writing its share of the samples
to Arrow files that the datasets map from disk. Every reply is checked as it is encoded (contract.ReplyChecks); the
result is cached by content.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import pyarrow as pa

from peftsft.core.config import DatasetSpec, DataSection
from peftsft.core.errors import UserError
from peftsft.data.arrow import SAMPLES, open_files, take, writing
from peftsft.data.contract import ReplyChecks
from peftsft.data.encoding import Found, add_counts, encode_run
from peftsft.data.formats import Content
from peftsft.data.items import Item, Items, load_items, write_items
from peftsft.data.parallel import Meter, processes_for, run_sharded
from peftsft.data.replay import draw_replay, interleave_order, replay_count, replay_spec
from peftsft.data.rows import BadRows
from peftsft.data.templates import apply_template, end_of_turn, generation_header, supports_tool_schemas

__all__ = ["DataStats", "Item", "apply_template", "build_datasets", "load_conversations", "load_items"]


@dataclass
class DataStats:
    rows: int = 0
    kept: int = 0
    bad_rows: BadRows = field(default_factory=BadRows)  # the first BadRows.LIMIT messages; .total counts them all
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
    bad_total: int = 0  # every bad row, also those past the messages kept

    def as_dict(self) -> dict:
        out = asdict(self)
        out["bad_rows"] = self.bad_rows.total
        out["bad_row_examples"] = self.bad_rows[:10]
        out["supervised_share"] = round(self.supervised_tokens / max(self.tokens, 1), 4)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> DataStats:
        stats = cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})
        stats.bad_rows = BadRows(stats.bad_rows, data.get("bad_total", len(stats.bad_rows)))
        return stats

    def absorb(self, found: Found, checks: ReplyChecks) -> None:
        """Add what encoding a run of rows found (runs absorbed in row order)."""
        add_counts(self, found)
        checks.merge(found.checks)


def build_datasets(tokenizer, data: DataSection, seed: int, console=None):
    """(train, eval or None, stats); a rerun with the same inputs loads the cached result instead."""
    return cached_build(tokenizer, data, seed, _build, console=console)


def cached_build(tokenizer, data: DataSection, seed: int, build: Callable, kind: str = "", console=None):
    """`build(tokenizer, data, seed, work, console)` -> ({split: [Arrow file names in work]}, stats), with the recipe's
    template set, through the dataset cache; `kind` keeps other builds of the same [data] (preference pairs, KTO
    answers) apart from the chat build."""
    import hashlib
    import shutil

    from peftsft.core.console import err_console
    from peftsft.data import cache

    info = apply_template(tokenizer, data)
    key = cache.fingerprint(tokenizer, data, seed) if data.cache else None
    key = hashlib.sha256(f"{key}:{kind}".encode()).hexdigest()[:24] if key and kind else key
    if key and (hit := cache.load(key)) is not None:
        train, evals, stats = hit
        stats = DataStats.from_dict(stats)
        stats.cache = "hit"
        return train, evals, stats
    work = cache.work_dir()
    try:
        files, stats = build(tokenizer, data, seed, work, console or err_console)
        stats.template = info.as_dict()
        train, evals = cache.keep(key, work, files, asdict(stats))
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    stats.cache = "miss" if key else "off"
    return train, evals, stats


def _build(tokenizer, data: DataSection, seed: int, work: Path, console):
    stats, checks = DataStats(), ReplyChecks()
    groups = [(spec, i) for i, spec in enumerate(data.datasets)]
    groups += [(eval_spec(data, data.eval_path), -1)] if data.eval_path else []
    items = write_items(groups, data, stats, work, "items", console)
    train_order, eval_order = split(items, data, seed)
    train_order = mix(train_order, items.source, data.datasets, seed, stats)
    refuse_dropped_tools(tokenizer, items, np.concatenate([train_order, eval_order]), data.template)
    train, found = encode(tokenizer, items, train_order, "train", data, work, console)
    stats.absorb(found, checks)
    lengths = found.all_lengths()
    if data.replay > 0 and found.kept:
        train, lengths = add_replay(tokenizer, train, lengths, data, seed, stats, checks, work, console)
    evals, found = encode(tokenizer, items, eval_order, "eval", data, work, console)
    stats.absorb(found, checks)
    for path in set(work.iterdir()) - {work / name for name in train + evals}:  # the rows read, pre-mix shards
        path.unlink()
    refuse_empty(len(lengths), stats)
    stats.train_rows, stats.eval_rows, stats.bad_total = len(lengths), found.kept, stats.bad_rows.total
    stats.checks = asdict(checks)
    stats.lengths = length_summary(lengths)
    from peftsft.data.packing import packing_stats

    samples = open_files([work / name for name in train])
    with Meter(console, "packing statistics", len(samples)) as meter:
        packed = packing_stats(samples, data.max_length, meter)
    stats.packing = {"enabled": data.packing, **packed}
    return {"train": train, "eval": evals}, stats


def refuse_empty(n_train: int, stats: DataStats) -> None:
    """An empty training set is an error that says where the rows went."""
    if not n_train:
        raise UserError(
            "the training dataset is empty after filtering",
            hint=f"{stats.rows} rows read, {stats.bad_rows.total} bad, {stats.dropped_unsupervised} with nothing "
            "to learn (no reply token left after truncation: raise [data] max_length?)",
        )


# ---------------------------------------------------------------------------------------------- reading


def eval_spec(data: DataSection, path: str) -> DatasetSpec:
    """A held-out file is read like the first dataset (format, fields, roles)."""
    if not data.datasets:
        return DatasetSpec(path=path)
    return data.datasets[0].model_copy(update={"path": path, "samples": None, "weight": None})


def load_conversations(paths: list[str], data: DataSection, stats: DataStats) -> list[Content]:
    """Every row of the given datasets (recipe paths, or an eval file) as chat messages."""
    specs = {spec.path: spec for spec in data.datasets}
    return [
        item.content for path in paths for item in load_items(specs.get(path) or eval_spec(data, path), -1, data, stats)
    ]


# ---------------------------------------------------------------------------------------------- ordering


def split(items: Items, data: DataSection, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training candidates, eval rows) as positions in `items`: the eval file's rows, or a seeded fraction."""
    candidates = np.flatnonzero(items.source >= 0)
    if data.eval_path:
        return candidates, np.flatnonzero(items.source < 0)
    if data.eval_fraction <= 0:
        return candidates, candidates[:0]
    # the same split as training.held_out.held_out_conversations: shuffle with the seed, eval rows first (a shuffle's
    # permutation depends only on the length, so shuffling positions shuffles the rows alike)
    permutation = list(range(len(candidates)))
    random.Random(seed).shuffle(permutation)
    order = candidates[np.array(permutation, dtype=np.int64)]
    n_eval = max(1, round(len(order) * data.eval_fraction))
    return order[n_eval:], order[:n_eval]


def mix(order: np.ndarray, source: np.ndarray, specs: list[DatasetSpec], seed: int, stats: DataStats) -> np.ndarray:
    """Training rows per dataset as the recipe asks: all, exactly `samples`, or `weight` times as many."""
    out = []
    for index, spec in enumerate(specs):
        group = order[source[order] == index]
        target = spec.samples if spec.samples is not None else round(len(group) * (spec.weight or 1.0))
        chosen = draw(group, target, random.Random(seed + index))
        if index < len(stats.sources):
            stats.sources[index]["train"] = len(chosen)
        out.append(chosen)
    return np.concatenate(out) if out else order[:0]


def draw(group: np.ndarray, n: int, rng: random.Random) -> np.ndarray:
    """`n` positions: a random subset, or every one repeated (whole copies first, then a random remainder)."""
    if not len(group) or n == len(group):
        return group.copy()
    whole, rest = divmod(n, len(group))
    # random.sample picks by index from the population's length alone: sampling range(len) picks the same rows
    picked = np.array(rng.sample(range(len(group)), rest), dtype=np.int64)
    return np.concatenate([np.tile(group, whole), group[picked]])


def refuse_dropped_tools(tokenizer, items: Items, order: np.ndarray, template: str) -> None:
    """Rows with tool schemas need a template that renders them; otherwise the model never sees the tools."""
    with_tools = np.flatnonzero(items.has_tools[order])
    if len(with_tools) and not supports_tool_schemas(tokenizer):
        raise UserError(
            f"{items.where(order[with_tools[0]])}: {len(with_tools)} row(s) offer tools, but the chat template "
            f"({template}) does not render tool schemas: they would be dropped from every prompt",
            hint='set [data] template = "hermes" (ChatML with <tool_call> blocks), or a .jinja file that uses `tools`',
        )


# ---------------------------------------------------------------------------------------------- encoding


def encode(tokenizer, items: Items, order: np.ndarray, name: str, data: DataSection, work: Path, console):
    """Encode the rows at `order` with `[data] num_proc` processes: ([samples file names], what they found)."""
    markers = {"eot": end_of_turn(tokenizer), "eos": tokenizer.eos_token, "header": generation_header(tokenizer)}
    processes = processes_for(data.num_proc, len(order))
    names = [f"{name}-{i:05d}.arrow" for i in range(max(processes, 1))]

    def work_on(shard: int, start: int, end: int, advance) -> Found:
        found = encode_run(tokenizer, items.dataset, order[start:end], work / names[shard], data, markers, advance)
        found.lengths = [found.all_lengths()]  # one array to send back, not one per batch
        return found

    label = f"{name}: templating, tokenizing, masking ({processes} process{'es' if processes > 1 else ''})"
    with Meter(console, label, len(order)) as meter:
        parts = run_sharded(work_on, len(order), processes, meter) if len(order) else [Found()]
    found = parts[0]
    for later in parts[1:]:
        found.merge(later)
    return [n for n in names if (work / n).exists()], found


def add_replay(tokenizer, train: list[str], lengths, data: DataSection, seed: int, stats, checks, work: Path, console):
    """The task's samples with `[data] replay` of general samples spread among them; stats.replay counts them."""
    spec = replay_spec(data)
    read = DataStats(bad_rows=stats.bad_rows)  # the pool's bad rows are reported with the rest, its rows apart
    pool = write_items([(spec, -1)], data, read, work, "pool", console)
    if not len(pool):
        raise UserError(f"[data] replay_path: no rows in {spec.path}", hint="point replay_path at chat data, or unset it")
    drawn = draw_replay(range(len(pool)), replay_count(len(lengths), data.replay), seed)
    replay, found = encode(tokenizer, pool, np.array(drawn, dtype=np.int64), "replay", data, work, console)
    stats.absorb(found, checks)
    stats.replay = {
        "share": data.replay, "pool": spec.path, "pool_rows": len(pool), "task_rows": len(lengths),
        "replay_rows": found.kept, "actual_share": round(found.kept / (len(lengths) + found.kept), 4),
    }
    merged = interleave_files(work, train, replay, len(lengths), found.kept)
    return merged, np.concatenate([lengths, found.all_lengths()])


def interleave_files(work: Path, task_files: list[str], replay_files: list[str], n_task: int, n_replay: int) -> list[str]:
    """One samples file: the replay samples spread evenly among the task's, read and written a chunk at a time."""
    task, replay = open_files([work / n for n in task_files]), open_files([work / n for n in replay_files])
    order = interleave_order(n_task, n_replay)
    with writing(work / "train-mixed.arrow", SAMPLES) as writer:
        for start in range(0, len(order), 32768):
            chunk = order[start : start + 32768]
            from_replay = chunk >= n_task
            local = np.empty(len(chunk), dtype=np.int64)
            local[~from_replay] = np.arange(np.count_nonzero(~from_replay))  # both runs arrive in their own order
            local[from_replay] = np.count_nonzero(~from_replay) + np.arange(np.count_nonzero(from_replay))
            rows = [take(task, chunk[~from_replay]), take(replay, chunk[from_replay] - n_task)]
            writer.write_table(pa.concat_tables(rows).take(local))
    return ["train-mixed.arrow"]


def length_summary(lengths: np.ndarray) -> dict:
    if not len(lengths):
        return {}
    ordered = np.sort(np.asarray(lengths, dtype=np.int64))

    def pct(p: float) -> int:
        return int(ordered[min(len(ordered) - 1, int(p * len(ordered)))])

    summary = {"min": int(ordered[0]), "p50": pct(0.5), "p90": pct(0.9), "max": int(ordered[-1])}
    mean = int(ordered.sum()) / len(ordered)  # exact, as statistics.mean: a sum of ints over their count
    return summary | {"mean": round(mean, 1), "histogram": histogram(ordered)}


def histogram(values: np.ndarray, bins: int = 10) -> list[int]:
    """Counts in `bins` equal-width bins from min to max (of sorted values)."""
    low, width = int(values[0]), max((int(values[-1]) - int(values[0])) / bins, 1e-9)
    index = np.minimum(bins - 1, ((values - low) / width).astype(np.int64))
    return np.bincount(index, minlength=bins).tolist()
