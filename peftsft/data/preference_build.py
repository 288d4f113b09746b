"""Recipe [data] for task = "preference" → tokenized train/eval datasets of pairs, or of KTO's unpaired answers.

Rows are read with the preference reader (items.rows_of), split and mixed as index arrays as for SFT (build.split,
build.mix), then each answer is rendered after its prompt and masked (preference_encode) by `[data] num_proc`
processes, each writing its share to an Arrow file in the build's directory, checked as SFT replies are
(contract.ReplyChecks), and cached like SFT datasets (build.cached_build). Pairs become TRL's DPO columns
(prompt_ids, chosen_ids, rejected_ids); for kto (`paired` false) every pair gives a desirable and an undesirable row
of KTO's columns (prompt_ids, completion_ids, label).
"""

from __future__ import annotations

import functools
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
from jinja2 import TemplateError

from peftsft.core.config import DataSection
from peftsft.core.errors import UserError
from peftsft.data.arrow import TOKENS, writing
from peftsft.data.build import DataStats, cached_build, eval_spec, length_summary, mix, refuse_empty, split
from peftsft.data.contract import ReplyChecks
from peftsft.data.encoding import Found
from peftsft.data.formats import RowError
from peftsft.data.items import Item, Reader, load_items
from peftsft.data.parallel import Meter, processes_for, run_sharded
from peftsft.data.preference import Pair, Unpaired, detect_preference_format, to_preference, unpair
from peftsft.data.preference_encode import Answer, encode_pair, encode_unpaired, pair_row, unpaired_row
from peftsft.data.rows import report_bad_row
from peftsft.data.templates import end_of_turn, generation_header

PREFERENCE = Reader(detect_preference_format, to_preference)
PAIRS = pa.schema([("prompt_ids", TOKENS), ("chosen_ids", TOKENS), ("rejected_ids", TOKENS)])
UNPAIRED = pa.schema([("prompt_ids", TOKENS), ("completion_ids", TOKENS), ("label", pa.bool_())])
WRITE_ROWS = 2048  # rows per Arrow record batch written
_COUNTS = ("pairs", "desirable", "undesirable", "identical_after_cut", "merged")


def build_preference_datasets(tokenizer, data: DataSection, seed: int, paired: bool, console=None):
    """(train, eval or None, stats): pairs for dpo/orpo/simpo (`paired`), unpaired answers for kto."""
    kind = "preference-pairs" if paired else "preference-unpaired"
    return cached_build(tokenizer, data, seed, functools.partial(_build, paired=paired), kind, console)


@dataclass
class Tally(Found):
    """What encoding a run of preference rows found: Found's counts plus pairs, labels and cut-identical pairs."""

    counts: dict = field(default_factory=lambda: dict.fromkeys(_COUNTS, 0))

    def merge(self, later: Tally) -> None:
        super().merge(later)
        for name in _COUNTS:
            self.counts[name] += later.counts[name]


def _build(tokenizer, data: DataSection, seed: int, work: Path, console, paired: bool):
    stats, checks = DataStats(), ReplyChecks()
    groups = [(spec, i) for i, spec in enumerate(data.datasets)]
    groups += [(eval_spec(data, data.eval_path), -1)] if data.eval_path else []
    items = [item for spec, index in groups for item in load_items(spec, index, data, stats, PREFERENCE)]
    source = np.array([item.source for item in items], dtype=np.int32)
    train_order, eval_order = split(_Sources(source), data, seed)
    train_order = mix(train_order, source, data.datasets, seed, stats)
    if paired:
        _refuse_unpaired(items, np.concatenate([train_order, eval_order]))
    counts = Tally()
    files = {}
    for name, order in (("train", train_order), ("eval", eval_order)):
        units = _units(items, order, paired)
        if not paired and name == "train":  # KTO reads rows in order (its KL term pairs neighbours): spread them
            random.Random(seed).shuffle(units)
        files[name], found = _encode(tokenizer, items, units, name, data, work, console, paired)
        stats.absorb(found, checks)
        counts.merge(found)
        if name == "train":
            lengths, n_train = found.all_lengths(), found.kept
    refuse_empty(n_train, stats)
    stats.train_rows, stats.eval_rows, stats.bad_total = n_train, found.kept, stats.bad_rows.total
    stats.checks = {**asdict(checks), **counts.counts}
    stats.lengths = length_summary(lengths)
    return files, stats


@dataclass
class _Sources:
    source: np.ndarray  # what build.split reads of the items: each row's [data] datasets index


def _refuse_unpaired(items: list[Item], order: np.ndarray) -> None:
    for position in order:
        if not isinstance(items[position].content, Pair):
            raise UserError(
                f"{items[position].where}: an unpaired row (prompt + completion + label) in pair data",
                hint='unpaired rows train with [preference] method = "kto"; dpo, orpo and simpo need chosen + '
                "rejected pairs",
            )


def _units(items: list[Item], order: np.ndarray, paired: bool) -> list[tuple[int, int]]:
    """What becomes one dataset row: (item position, -1) for a pair or an unpaired answer; for KTO a pair's
    (position, 0) chosen answer, desirable, and its (position, 1) rejected one."""
    if paired:
        return [(int(p), -1) for p in order]
    return [(int(p), side) for p in order for side in ((0, 1) if isinstance(items[p].content, Pair) else (-1,))]


def _encode(tokenizer, items, units, name: str, data: DataSection, work: Path, console, paired: bool):
    """Encode `units` with `[data] num_proc` forked processes: ([Arrow file names], what they found)."""
    processes = processes_for(data.num_proc, len(units))
    names = [f"{name}-{i:05d}.arrow" for i in range(max(processes, 1))]

    def work_on(shard: int, start: int, end: int, advance) -> Tally:
        found = Tally()
        encoder = Encoder(tokenizer, data, found)
        rows, lengths, schema = [], [], PAIRS if paired else UNPAIRED
        with writing(work / names[shard], schema) as writer:
            for position, side in units[start:end]:
                item = items[position]
                row = encoder.pair(item) if paired else encoder.unpaired(item, _answer_of(item.content, side))
                if row is not None:
                    rows.append(row)
                    lengths += [len(row["prompt_ids"]) + len(row[key]) for key in _ANSWERS if key in row]
                if len(rows) >= WRITE_ROWS:
                    writer.write_table(pa.Table.from_pylist(rows, schema))
                    rows = []
                advance(1)
            if rows:
                writer.write_table(pa.Table.from_pylist(rows, schema))
        found.lengths = [np.array(lengths, dtype=np.int32)]
        return found

    label = f"{name}: templating, tokenizing, masking answers ({processes} process{'es' if processes > 1 else ''})"
    with Meter(console, label, len(units)) as meter:
        parts = run_sharded(work_on, len(units), processes, meter) if units else [Tally()]
    found = parts[0]
    for later in parts[1:]:
        found.merge(later)
    return [n for n in names if (work / n).exists()], found


_ANSWERS = ("chosen_ids", "rejected_ids", "completion_ids")


def _answer_of(content: Pair | Unpaired, side: int) -> Unpaired:
    return content if side < 0 else unpair(content)[side]


class Encoder:
    """Encodes rows into dataset rows, each answer through the SFT reply checks; counts what it keeps and drops."""

    def __init__(self, tokenizer, data: DataSection, found: Tally):
        self.tokenizer, self.data, self.found = tokenizer, data, found
        self.markers = {"eot": end_of_turn(tokenizer), "eos": tokenizer.eos_token, "header": generation_header(tokenizer)}

    def pair(self, item: Item) -> dict | None:
        """A TRL DPO row (prompt_ids, chosen_ids, rejected_ids), or None for a row dropped or reported bad."""
        answers = self._guarded(lambda: encode_pair(self.tokenizer, item.content, self.data.max_length), item)
        if answers is None:
            return None
        chosen, rejected = answers
        if not (self._kept(chosen) & self._kept(rejected)):  # `&`: both counted
            return None
        if chosen.answer_ids == rejected.answer_ids:  # the cut left the same tokens of two different answers
            self.found.counts["identical_after_cut"] += 1
            return None
        pair = item.content
        self._observe([*pair.prompt, pair.chosen], chosen, f"{item.where} (chosen)")
        self._observe([*pair.prompt, pair.rejected], rejected, f"{item.where} (rejected)")
        self.found.counts["pairs"] += 1
        self.found.kept += 1
        return pair_row(chosen, rejected)

    def unpaired(self, item: Item, row: Unpaired) -> dict | None:
        """A TRL KTO row (prompt_ids, completion_ids, label: true = desirable), or None."""
        answer = self._guarded(lambda: encode_unpaired(self.tokenizer, row, self.data.max_length), item)
        if answer is None or not self._kept(answer):
            return None
        label = "desirable" if row.desirable else "undesirable"
        self._observe([*row.prompt, row.completion], answer, f"{item.where} ({label})")
        self.found.counts[label] += 1
        self.found.kept += 1
        return unpaired_row(answer, row.desirable)

    def _kept(self, answer: Answer) -> bool:
        """Counts a cut answer, and one the cut left without a token (dropped)."""
        self.found.truncated += answer.scored.truncated
        self.found.dropped_unsupervised += not answer.kept
        return answer.kept

    def _observe(self, conversation: list[dict], answer: Answer, where: str) -> None:
        """The SFT reply checks on what training scores (the reply, closed by its end-of-turn), and token counts."""
        self.found.checks.observe(self.tokenizer, conversation, answer.scored, "last_turn", self.markers, where)
        self.found.counts["merged"] += answer.merged
        self.found.tokens += len(answer.scored.input_ids)
        self.found.supervised_tokens += len(answer.answer_ids)
        self.found.max_tokens = max(self.found.max_tokens, len(answer.scored.input_ids))

    def _guarded(self, encode_row, item: Item):
        """encode_row(), or None after reporting the row as bad (file:line) when it or the template refuses it."""
        try:
            return encode_row()
        except RowError as exc:
            report_bad_row(item.where, str(exc), self.data.on_bad_row, self.found.bad_rows)
        except TemplateError as exc:  # the template itself refused the row (raise_exception, a role it lacks)
            problem = f"the chat template cannot render it: {exc}"
            report_bad_row(item.where, problem, self.data.on_bad_row, self.found.bad_rows)
        return None
