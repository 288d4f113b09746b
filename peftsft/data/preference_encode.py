"""Preference rows → token ids: the prompt's, and each answer's, which are exactly the tokens scored.

An answer is rendered after its prompt with the chat template and masked as SFT masks a last reply
(masking.encode, "last_turn"): from the end of the generation header through the end-of-turn token. Template text
after the end-of-turn (ChatML's newline) is left off, so every answer token is a reply token: TRL's preference
collators score all of `chosen_ids` / `rejected_ids` / `completion_ids` and none of `prompt_ids`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from peftsft.data.masking import IGNORE, Encoded, encode
from peftsft.data.preference import Pair, Unpaired
from peftsft.data.templates import fit_messages, render


@dataclass
class Answer:
    """One answer after its prompt: the two id lists, and the sequence as scored (text, offsets) for the contract."""

    prompt_ids: list[int]
    answer_ids: list[int]
    scored: Encoded  # prompt_ids + answer_ids, labels IGNORE on the prompt: what training will score
    merged: bool = False  # the first answer token also holds the prompt's last characters

    @property
    def kept(self) -> bool:
        return bool(self.answer_ids)

    def split_at(self, n: int) -> Answer:
        """The same tokens with the prompt ending after `n` of them (n ≤ len(prompt_ids))."""
        ids = self.prompt_ids + self.answer_ids
        moved = n < len(self.prompt_ids)
        return _answer(ids, n, len(ids), self.scored, self.merged or moved)


def encode_answer(tokenizer, prompt: list[dict[str, Any]], reply: dict[str, Any], max_length: int) -> Answer:
    """The reply's tokens after the prompt's, cut at max_length; an answer the cut leaves empty is `not kept`.

    A token spanning the prompt's end and the reply's start (a template whose generation prompt ends in a space)
    joins the answer, as TRL's own tokenization does: the prompt is then one token shorter, and `merged` says so.
    """
    enc = encode(tokenizer, [*prompt, reply], "last_turn", max_length)
    scored = [i for i, label in enumerate(enc.labels) if label != IGNORE]
    if not scored:
        return _answer(enc.input_ids, len(enc.input_ids), len(enc.input_ids), enc, False)
    start, end = scored[0], scored[-1] + 1
    boundary = len(render(tokenizer, fit_messages(tokenizer, prompt), add_generation_prompt=True))
    merged = start > 0 and enc.offsets[start - 1][1] > boundary
    return _answer(enc.input_ids, start - merged, end, enc, merged)


def _answer(ids: list[int], start: int, end: int, enc: Encoded, merged: bool) -> Answer:
    """ids[:start] as the prompt, ids[start:end] as the answer; `enc` gives the text and offsets behind them."""
    prompt_ids, answer_ids = ids[:start], ids[start:end]
    cut = enc.truncated and end == len(enc.input_ids)
    sequence = Encoded(prompt_ids + answer_ids, [IGNORE] * start + answer_ids, cut, enc.text, enc.offsets[:end])
    return Answer(prompt_ids, answer_ids, sequence, merged)


def encode_pair(tokenizer, pair: Pair, max_length: int) -> tuple[Answer, Answer]:
    """(chosen, rejected) after one prompt: where the two answers' first tokens take different prompt characters,
    the prompt ends where both sequences still agree (TRL's rule), so both answers follow the same prompt ids."""
    chosen = encode_answer(tokenizer, pair.prompt, pair.chosen, max_length)
    rejected = encode_answer(tokenizer, pair.prompt, pair.rejected, max_length)
    if chosen.kept and rejected.kept and chosen.prompt_ids != rejected.prompt_ids:
        shared = next((i for i, (a, b) in enumerate(zip(chosen.prompt_ids, rejected.prompt_ids)) if a != b),
                      min(len(chosen.prompt_ids), len(rejected.prompt_ids)))
        chosen, rejected = chosen.split_at(shared), rejected.split_at(shared)
    return chosen, rejected


def encode_unpaired(tokenizer, row: Unpaired, max_length: int) -> Answer:
    return encode_answer(tokenizer, row.prompt, row.completion, max_length)


def pair_row(chosen: Answer, rejected: Answer) -> dict[str, list[int]]:
    """A pair as TRL's DPOTrainer tokenizes it (its collator scores every chosen/rejected id, no prompt id)."""
    return {"prompt_ids": chosen.prompt_ids, "chosen_ids": chosen.answer_ids, "rejected_ids": rejected.answer_ids}


def unpaired_row(answer: Answer, desirable: bool) -> dict[str, Any]:
    """An answer as TRL's KTOTrainer tokenizes it (`label` true = desirable)."""
    return {"prompt_ids": answer.prompt_ids, "completion_ids": answer.answer_ids, "label": desirable}


def answer_sides(row: dict) -> list[tuple[str, list[int]]]:
    """(side, answer ids) of a built row: chosen and rejected for a pair, KTO's one answer titled by its label."""
    if "chosen_ids" in row:
        return [("chosen", row["chosen_ids"]), ("rejected", row["rejected_ids"])]
    return [("desirable" if row["label"] else "undesirable", row["completion_ids"])]


def scored_sequence(prompt_ids: list[int], answer_ids: list[int]) -> dict[str, list[int]]:
    """input_ids + labels of prompt and answer (the prompt unscored): for previews and label-based trainers."""
    return {"input_ids": prompt_ids + answer_ids, "labels": [IGNORE] * len(prompt_ids) + answer_ids}
