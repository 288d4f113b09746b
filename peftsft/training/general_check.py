"""The general check: what did the tune cost the model's general ability?

A small held-out set of short general questions (facts, arithmetic, language, simple reasoning; shipped as
peftsft/data/general/check.jsonl, plus any `[eval] general_path`) is scored on the base before training and on
the tuned model after it, the same way both times: the loss on the reference answers (one batched forward
pass) and greedy answers (one batched generate call) counted right when they contain an accepted answer.
A loss rise or an accuracy fall beyond `[eval] max_general_regression` is reported as forgetting.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from peftsft.core.config import DatasetSpec, DataSection, EvalSection, Recipe
from peftsft.core.errors import UserError
from peftsft.data.build import DataStats, load_conversations
from peftsft.data.replay import CHECK_SET
from peftsft.generation import Sampling, answer_batch
from peftsft.training.scoring import assistant_loss, contains_reference, exact_match

LOSS_BATCH = 8  # rows per scoring forward at most (fewer where their replies' logits pass scoring.LOGITS_BUDGET)
ANSWER_BATCH = 64  # one generate call for the whole shipped set: on CPU, per-step overhead dominates small batches
ANSWER_TOKENS = 96  # what the memory term assumes a shipped row's prompt and answer take, template included


def memory_bytes(dims, answer_tokens: int = ANSWER_TOKENS) -> int:
    """What scoring holds beyond the model's weights (for the plan): the replies' logits of one scoring batch (bf16,
    their fp32 copy and the cross-entropy's fp32 softmax), autocast's bf16 copy of the largest weight (the vocabulary
    matrix), and the key/value cache of one batch of answers. `dims`: levers.memory.Dims."""
    from peftsft.training.scoring import LOGITS_BUDGET

    logits = LOGITS_BUDGET * (2 + 4 + 4)
    head_copy = dims.vocab * dims.hidden * 2
    cache = ANSWER_BATCH * answer_tokens * dims.layers * 2 * dims.kv_heads * dims.head_dim * 4
    return logits + head_copy + cache


@dataclass(frozen=True)
class CheckRow:
    messages: list[dict]  # the prompt turns, then the reference answer (assistant)
    expect: tuple[str, ...]  # a greedy answer containing any of these counts as right
    category: str = "general"

    @property
    def prompt(self) -> list[dict]:
        return self.messages[:-1]


def shipped_rows() -> list[CheckRow]:
    rows = [json.loads(line) for line in CHECK_SET.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [CheckRow(r["messages"], tuple(r["expect"]), r.get("category", "general")) for r in rows]


def user_rows(path: str, on_bad_row: str = "fail") -> list[CheckRow]:
    """Chat rows of any [data] format; each row's last assistant reply is both reference and accepted answer."""
    data = DataSection(datasets=[DatasetSpec(path=path)], on_bad_row=on_bad_row)
    rows = []
    for i, messages in enumerate(load_conversations([path], data, DataStats()), 1):
        last = messages[-1] if isinstance(messages, list) and len(messages) > 1 else None
        if not last or last["role"] != "assistant" or not isinstance(last["content"], str):
            raise UserError(f"[eval] general_path: row {i} of {path} does not end in an assistant reply",
                            hint="each general check row is a question and its reference answer")
        rows.append(CheckRow(messages, (last["content"],), "user"))
    return rows


def autocast(model, precision: str):
    """torch autocast at the run's precision on the model's device (a no-op for fp32)."""
    import contextlib

    import torch

    if precision not in ("bf16", "fp16"):
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(next(model.parameters()).device.type, dtype=dtype)


class GeneralCheck:
    """The check's rows and settings; `score` a model, `compare` two scores."""

    def __init__(self, settings: EvalSection, max_length: int = 512, on_bad_row: str = "fail"):
        self.settings, self.max_length = settings, max_length
        self.rows = shipped_rows() + (user_rows(settings.general_path, on_bad_row) if settings.general_path else [])
        self.sources = ["peftsft general set"] + ([settings.general_path] if settings.general_path else [])

    @classmethod
    def for_recipe(cls, recipe: Recipe | None) -> GeneralCheck | None:
        """The check a chat recipe asks for (None when `[eval] general_check = false`); defaults without a recipe."""
        if recipe is None:
            return cls(EvalSection())
        if not recipe.eval.general_check:
            return None
        return cls(recipe.eval, recipe.data.max_length, recipe.data.on_bad_row)

    def score(self, model, tokenizer, precision: str = "fp32") -> dict:
        """Loss on the references, right and exact answers, the answers themselves and the seconds it took.

        `precision`: the run's autocast (bf16 where the hardware is fast at it, as training uses), the same for the
        base and the tuned model, so both are scored alike at a fraction of fp32's cost there."""
        started = time.perf_counter()
        loss = self.loss(model, tokenizer, precision)
        answers, right = self.answers(model, tokenizer, precision)
        exact = [any(exact_match(a, e) for e in (*r.expect, r.messages[-1]["content"]))
                 for a, r in zip(answers, self.rows)]
        return {
            "loss": round(loss, 4), "accuracy": round(sum(right) / len(right), 4),
            "exact_match": round(sum(exact) / len(exact), 4), "right": sum(right), "rows": len(right),
            "seconds": round(time.perf_counter() - started, 2), "answers": answers, "right_answers": right,
        }

    def loss(self, model, tokenizer, precision: str = "fp32") -> float:
        """The loss on the reference answers alone (batched forwards, no generation): the cheap check that every
        evaluation during training runs."""
        with autocast(model, precision):
            scored = assistant_loss(model, tokenizer, [r.messages for r in self.rows], self.max_length, LOSS_BATCH)
        return scored["eval_loss"]

    def answers(self, model, tokenizer, precision: str = "fp32", limit: int | None = None) -> tuple[list, list]:
        """Greedy answers of the first `limit` rows (all by default) and whether each is right."""
        rows = self.rows[:limit]
        with autocast(model, precision):
            sampling = Sampling(max_new_tokens=self.settings.general_max_new_tokens)
            answers = answer_batch(model, tokenizer, [r.prompt for r in rows], sampling, ANSWER_BATCH)
        return answers, [any(contains_reference(a, e) for e in r.expect) for a, r in zip(answers, rows)]

    def compare(self, base: dict, tuned: dict) -> dict:
        """Base vs tuned: the change, whether it is past the limit, and every answer side by side."""
        limit = self.settings.max_general_regression
        loss_rise = (tuned["loss"] - base["loss"]) / max(base["loss"], 1e-9)
        accuracy_fall = base["accuracy"] - tuned["accuracy"]
        answers = [
            {"prompt": r.prompt[-1]["content"], "expect": list(r.expect), "base": b, "tuned": t,
             "base_right": br, "tuned_right": tr}
            for r, b, t, br, tr in zip(self.rows, base["answers"], tuned["answers"], base["right_answers"],
                                       tuned["right_answers"])
        ]
        keep = ("loss", "accuracy", "exact_match", "right", "rows", "seconds")
        return {
            "base": {k: base[k] for k in keep}, "tuned": {k: tuned[k] for k in keep},
            "change": {
                "loss": round(tuned["loss"] - base["loss"], 4), "loss_relative": round(loss_rise, 4),
                "accuracy": round(-accuracy_fall, 4), "exact_match": round(tuned["exact_match"] - base["exact_match"], 4),
            },
            "regressed": loss_rise > limit or accuracy_fall > limit, "max_general_regression": limit,
            "seconds": round(base["seconds"] + tuned["seconds"], 2), "sources": self.sources, "answers": answers,
        }


def for_summary(result: dict, train_seconds: float | None = None) -> dict:
    """summary.json's "general": the comparison without the answers (samples.md lists those)."""
    out = {k: v for k, v in result.items() if k != "answers"}
    if train_seconds:
        out["share_of_train_time"] = round(result["seconds"] / train_seconds, 4)
    return out


def describe(result: dict) -> str:
    """One line: 'general check: loss 1.23 → 1.31 (+6.5%), right 23/32 → 22/32 (limit 10%), 9.1 s'."""
    base, tuned, change = result["base"], result["tuned"], result["change"]
    return (
        f"general check: loss {base['loss']:.3f} → {tuned['loss']:.3f} ({change['loss_relative']:+.1%}), "
        f"right {base['right']}/{base['rows']} → {tuned['right']}/{tuned['rows']} "
        f"(limit {result['max_general_regression']:.0%}), {result['seconds']:.1f} s"
    )


def forgetting_warning(result: dict, recipe: Recipe, train_rows: int) -> str:
    """Why a tune forgets and what to change, with this recipe's own numbers."""
    t, replay = recipe.training, recipe.data.replay
    length = f"{t.max_steps} steps" if t.max_steps > 0 else f"{t.epochs:g} epoch(s)"
    return (
        f"the tuned model lost general ability (limit {result['max_general_regression']:.0%}): "
        f"loss on general answers {result['change']['loss_relative']:+.1%}, right answers "
        f"{result['base']['right']} → {result['tuned']['right']} of {result['base']['rows']}.\n"
        f"  likely causes: learning rate {t.learning_rate:g} ({length}) on {train_rows} training rows — a high rate, "
        "many passes over few rows, or narrow data (one persona, one style) pull every answer toward it.\n"
        f"  remedies: mix general data back in ([data] replay = 0.2{'; now ' + format(replay, 'g') if replay else ''}), "
        "lower [training] learning_rate, fewer epochs, or more varied data. samples.md lists the answers that changed."
    )


def report(console, result: dict, recipe: Recipe, train_rows: int) -> None:
    """The end-of-run display: one line, and the warning when the model forgot."""
    console.print(describe(result), highlight=False)
    if result["regressed"]:
        from rich.markup import escape

        console.print(f"[bold yellow]warning:[/] {escape(forgetting_warning(result, recipe, train_rows))}", highlight=False)
