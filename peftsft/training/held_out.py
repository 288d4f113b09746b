"""A chat recipe's held-out rows as `eval` and the evaluations during training read them, and their answers scored:
answer metrics where a row ends in a reference reply, tool-call metrics where it offers tools."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from peftsft.core.errors import UserError
from peftsft.data.tools import tools_of, with_tools
from peftsft.training.scoring import answer_metrics
from peftsft.training.tool_scoring import expected_calls, tool_metrics


@dataclass
class EvalRow:
    messages: list[dict] | str  # a conversation, or plain text (format "text": loss only)

    @property
    def reference(self) -> str | None:
        last = self.messages[-1] if isinstance(self.messages, list) else None
        if last and last.get("tool_calls"):  # a tool call is scored by tool_scoring, not as text
            return None
        return last["content"] if last and last["role"] == "assistant" and isinstance(last["content"], str) else None

    @property
    def answerable(self) -> bool:
        return bool(self.prompt) and (self.reference is not None or bool(expected_calls(self.messages)))

    @property
    def prompt(self) -> list[dict]:
        return with_tools(self.messages[:-1], tools_of(self.messages)) if isinstance(self.messages, list) else []


def score_answers(predictions: list[str], rows: list[EvalRow]) -> dict[str, float]:
    """Answer metrics over the rows with a text reference, tool metrics over the rows that offer tools."""
    texts = [(p, r.reference) for p, r in zip(predictions, rows) if r.reference is not None]
    metrics = answer_metrics([p for p, _ in texts], [ref for _, ref in texts])
    return metrics | tool_metrics(predictions, [r.messages for r in rows])


def held_out_conversations(recipe, data_path: str | None) -> tuple[list, str]:
    """(conversations, where they came from): `data_path`, else the recipe's eval_path, else its eval split."""
    from peftsft.core.config import DataSection, DatasetSpec
    from peftsft.data.build import DataStats, load_conversations

    if data_path:
        on_bad_row = recipe.data.on_bad_row if recipe else "fail"
        data = DataSection(datasets=[DatasetSpec(path=data_path)], on_bad_row=on_bad_row)
        return load_conversations([data_path], data, DataStats()), data_path
    if recipe is None or not (recipe.data.eval_path or recipe.data.eval_fraction > 0):
        raise UserError(
            "no held-out data to evaluate on", hint="pass --data FILE.jsonl (chat rows with a reference answer)"
        )
    if recipe.data.eval_path:
        path = Path(recipe.data.eval_path)
        if path.suffix and not path.exists():  # a file that moved (a Hub dataset id has no suffix)
            raise UserError(f"the run's eval_path is gone: {path}", hint="pass --data FILE.jsonl")
        return load_conversations([recipe.data.eval_path], recipe.data, DataStats()), recipe.data.eval_path
    # the same split as data.build.build_datasets: shuffle the training rows with the seed, eval first
    conversations = load_conversations([spec.path for spec in recipe.data.datasets], recipe.data, DataStats())
    random.Random(recipe.training.seed).shuffle(conversations)
    n_eval = max(1, round(len(conversations) * recipe.data.eval_fraction))
    return conversations[:n_eval], f"eval_fraction {recipe.data.eval_fraction} of the training data"
