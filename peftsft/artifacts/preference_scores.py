"""The numbers of a preference evaluation: DPO's implicit rewards on held-out pairs, and a win rate of two models'
answers judged by the tuned policy's own log-probabilities.

Every log-probability here is over an answer's tokens only (as training scores them: data.preference_encode), never
over its prompt's.
"""

from __future__ import annotations

from dataclasses import dataclass

from peftsft.data.preference import Pair
from peftsft.data.preference_encode import encode_answer, encode_pair
from peftsft.training.scoring import answer_logprobs


@dataclass(frozen=True)
class Scored:
    """An answer's summed log-probability and its token count (the end-of-turn token included)."""

    logprob: float
    tokens: int

    @property
    def per_token(self) -> float:
        return self.logprob / max(self.tokens, 1)


def pair_logprobs(model, tokenizer, pairs: list[Pair], max_length: int, batch_size: int):
    """(chosen, rejected): each pair's two answers scored by `model` after the pair's prompt."""
    encoded = [encode_pair(tokenizer, pair, max_length) for pair in pairs]
    chosen = answer_logprobs(model, tokenizer, [(c.prompt_ids, c.answer_ids) for c, _ in encoded], batch_size)
    rejected = answer_logprobs(model, tokenizer, [(r.prompt_ids, r.answer_ids) for _, r in encoded], batch_size)
    return [Scored(*s) for s in chosen], [Scored(*s) for s in rejected]


def reward_metrics(policy: tuple[list[Scored], list[Scored]], reference: tuple[list[Scored], list[Scored]],
                   beta: float) -> dict:
    """DPO's implicit reward r(y) = beta × (log π(y) − log π_ref(y)) of each chosen and rejected answer: how often
    the chosen one is rewarded more (accuracy; a tie counts as wrong, as in TRL) and by how much (margin)."""
    rewards = {side: [beta * (p.logprob - r.logprob) for p, r in zip(policy[i], reference[i])]
               for i, side in enumerate(("chosen", "rejected"))}
    margins = [c - r for c, r in zip(rewards["chosen"], rewards["rejected"])]
    n = max(len(margins), 1)
    return {
        "accuracy": round(sum(m > 0 for m in margins) / n, 4),
        "margin": round(sum(margins) / n, 4),
        "chosen": round(sum(rewards["chosen"]) / n, 4),
        "rejected": round(sum(rewards["rejected"]) / n, 4),
        "pairs": len(margins),
    }


def prefers_chosen(scores: tuple[list[Scored], list[Scored]]) -> float:
    """Share of pairs whose chosen answer one model finds likelier per token than the rejected one (length-
    normalised: a rambling answer is not penalised for its length alone, nor a curt one favoured for its shortness)."""
    chosen, rejected = scores
    return round(sum(c.per_token > r.per_token for c, r in zip(chosen, rejected)) / max(len(chosen), 1), 4)


def judge_answers(model, tokenizer, prompts: list[list[dict]], answers: list[str], max_length: int,
                  batch_size: int) -> list[Scored]:
    """Each answer (as the assistant's reply after its prompt) scored by `model`: the judge of the win rate."""
    encoded = [encode_answer(tokenizer, prompt, {"role": "assistant", "content": answer}, max_length)
               for prompt, answer in zip(prompts, answers)]
    return [Scored(*s) for s in answer_logprobs(model, tokenizer, [(e.prompt_ids, e.answer_ids) for e in encoded], batch_size)]


def win_rate(tuned: list[Scored], start: list[Scored], tuned_answers: list[str], start_answers: list[str]) -> dict:
    """Tuned against start, prompt by prompt, by the judge's mean log-probability per answer token: a win, a loss,
    or a tie (the same answer text, or equal scores) counted as half a win."""
    wins = ties = 0
    for t, s, t_text, s_text in zip(tuned, start, tuned_answers, start_answers):
        if t_text.strip() == s_text.strip() or t.per_token == s.per_token:
            ties += 1
        elif t.per_token > s.per_token:
            wins += 1
    n = len(tuned)
    return {"win_rate": round((wins + ties / 2) / max(n, 1), 4), "wins": wins, "ties": ties,
            "losses": n - wins - ties, "prompts": n}


def lengths(answers: list[str], scores: list[Scored]) -> dict:
    """Mean answer length in tokens (the end-of-turn token included) and in words."""
    n = max(len(answers), 1)
    return {"tokens": round(sum(s.tokens for s in scores) / n, 2),
            "words": round(sum(len(a.split()) for a in answers) / n, 2)}
