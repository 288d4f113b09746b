"""Recipe [data] for task = "preference" → tokenized train/eval datasets of pairs, or of KTO's unpaired answers.

Rows are read, split and mixed as for SFT (build.read_splits with the preference reader), each answer is rendered
after its prompt and masked (preference_encode), checked as SFT replies are (contract.ReplyChecks), and cached
like SFT datasets. Pairs become TRL's DPO columns (prompt_ids, chosen_ids, rejected_ids); for kto (`paired` false)
every pair gives a desirable and an undesirable row of KTO's columns (prompt_ids, completion_ids, label).
"""

from __future__ import annotations

import functools
import random
from dataclasses import asdict

from jinja2 import TemplateError

from peftsft.core.config import DataSection
from peftsft.core.errors import UserError
from peftsft.data.build import DataStats, Item, Reader, cached_build, length_summary, read_splits, refuse_empty
from peftsft.data.contract import ReplyChecks
from peftsft.data.formats import RowError
from peftsft.data.preference import Pair, detect_preference_format, to_preference, unpair
from peftsft.data.preference_encode import Answer, encode_pair, encode_unpaired, pair_row, unpaired_row
from peftsft.data.rows import report_bad_row
from peftsft.data.templates import end_of_turn, generation_header

PREFERENCE = Reader(detect_preference_format, to_preference)


def build_preference_datasets(tokenizer, data: DataSection, seed: int, paired: bool):
    """(train, eval or None, stats): pairs for dpo/orpo/simpo (`paired`), unpaired answers for kto."""
    kind = "preference-pairs" if paired else "preference-unpaired"
    return cached_build(tokenizer, data, seed, functools.partial(_build, paired=paired), kind)


def _build(tokenizer, data: DataSection, seed: int, paired: bool):
    stats = DataStats()
    train_items, eval_items = read_splits(data, seed, stats, PREFERENCE)
    encoder = Encoder(tokenizer, data, stats)
    train, evals = (encoder.pairs(train_items), encoder.pairs(eval_items)) if paired else (
        encoder.unpaired(train_items), encoder.unpaired(eval_items))
    if not paired:  # KTO reads its rows in order (its KL term pairs neighbours): spread prompts and labels with the seed
        random.Random(seed).shuffle(train)
    refuse_empty(train, stats)
    stats.train_rows, stats.eval_rows = len(train), len(evals)
    stats.checks = {**asdict(encoder.checks), **encoder.counts}
    stats.lengths = length_summary([len(row["prompt_ids"]) + len(row[key]) for row in train for key in _ANSWERS if key in row])
    return _to_dataset(train), (_to_dataset(evals) if evals else None), stats


_ANSWERS = ("chosen_ids", "rejected_ids", "completion_ids")


class Encoder:
    """Encodes rows into dataset rows, each answer through the SFT reply checks; counts what it keeps and drops."""

    def __init__(self, tokenizer, data: DataSection, stats: DataStats):
        self.tokenizer, self.data, self.stats, self.checks = tokenizer, data, stats, ReplyChecks()
        self.counts = {"pairs": 0, "desirable": 0, "undesirable": 0, "identical_after_cut": 0, "merged": 0}
        self.markers = {"eot": end_of_turn(tokenizer), "eos": tokenizer.eos_token, "header": generation_header(tokenizer)}

    def pairs(self, items: list[Item]) -> list[dict]:
        """TRL DPO rows (prompt_ids, chosen_ids, rejected_ids); unpaired rows are an error here."""
        out = []
        for item in items:
            if not isinstance(item.content, Pair):
                raise UserError(
                    f"{item.where}: an unpaired row (prompt + completion + label) in pair data",
                    hint='unpaired rows train with [preference] method = "kto"; dpo, orpo and simpo need chosen + '
                    "rejected pairs",
                )
            answers = self._guarded(lambda: encode_pair(self.tokenizer, item.content, self.data.max_length), item)
            if answers is not None and (row := self._pair(item, *answers)) is not None:
                out.append(row)
        self.stats.kept += len(out)
        return out

    def unpaired(self, items: list[Item]) -> list[dict]:
        """TRL KTO rows (prompt_ids, completion_ids, label); a pair gives two (chosen desirable, rejected not)."""
        out = []
        for item in items:
            for row in unpair(item.content) if isinstance(item.content, Pair) else [item.content]:
                answer = self._guarded(lambda: encode_unpaired(self.tokenizer, row, self.data.max_length), item)
                if answer is not None and self._kept(answer):
                    label = "desirable" if row.desirable else "undesirable"
                    self._observe([*row.prompt, row.completion], answer, f"{item.where} ({label})")
                    self.counts[label] += 1
                    out.append(unpaired_row(answer, row.desirable))
        self.stats.kept += len(out)
        return out

    def _pair(self, item: Item, chosen: Answer, rejected: Answer) -> dict | None:
        if not (self._kept(chosen) & self._kept(rejected)):  # `&`: both counted
            return None
        if chosen.answer_ids == rejected.answer_ids:  # the cut left the same tokens of two different answers
            self.counts["identical_after_cut"] += 1
            return None
        pair = item.content
        self._observe([*pair.prompt, pair.chosen], chosen, f"{item.where} (chosen)")
        self._observe([*pair.prompt, pair.rejected], rejected, f"{item.where} (rejected)")
        self.counts["pairs"] += 1
        return pair_row(chosen, rejected)

    def _kept(self, answer: Answer) -> bool:
        """Counts a cut answer, and one the cut left without a token (dropped)."""
        self.stats.truncated += answer.scored.truncated
        self.stats.dropped_unsupervised += not answer.kept
        return answer.kept

    def _observe(self, conversation: list[dict], answer: Answer, where: str) -> None:
        """The SFT reply checks on what training scores (the reply, closed by its end-of-turn), and token counts."""
        self.checks.observe(self.tokenizer, conversation, answer.scored, "last_turn", self.markers, where)
        self.counts["merged"] += answer.merged
        self.stats.tokens += len(answer.scored.input_ids)
        self.stats.supervised_tokens += len(answer.answer_ids)
        self.stats.max_tokens = max(self.stats.max_tokens, len(answer.scored.input_ids))

    def _guarded(self, encode_row, item: Item):
        """encode_row(), or None after reporting the row as bad (file:line) when it or the template refuses it."""
        try:
            return encode_row()
        except RowError as exc:
            report_bad_row(item.where, str(exc), self.data.on_bad_row, self.stats.bad_rows)
        except TemplateError as exc:  # the template itself refused the row (raise_exception, a role it lacks)
            problem = f"the chat template cannot render it: {exc}"
            report_bad_row(item.where, problem, self.data.on_bad_row, self.stats.bad_rows)
        return None


def _to_dataset(rows: list[dict]):
    from datasets import Dataset

    return Dataset.from_list(rows)
