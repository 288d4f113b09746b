"""What every lever's rule reads: one value, passed down, nothing stored elsewhere."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from peftsft.core.config import Recipe


@dataclass(frozen=True)
class Situation:
    """The recipe, the device it trains on, the model with its strategy applied (a meta-device skeleton when
    planning), the longest training sample in tokens (None: `[data] max_length`), and the memory to plan for
    (None: what this machine has available)."""

    recipe: Recipe
    device: str
    model: Any
    longest_sample: int | None = None
    available_bytes: int | None = None

    @property
    def task(self) -> str:
        return self.recipe.task

    @property
    def trains_language_model(self) -> bool:
        """A causal LM's head and attention train (chat SFT); an encoder's classification head does not."""
        return self.recipe.task != "classification"

    @property
    def preference_method(self) -> str | None:
        """task = "preference": dpo | orpo | kto | simpo; None for the other tasks."""
        return self.recipe.preference.method if self.recipe.task == "preference" else None

    @property
    def sequences_per_row(self) -> int:
        """Sequences one training row puts through the trained forward: a pair's chosen and rejected answers go in
        one batch (dpo, orpo, simpo); KTO's mismatched KL answers and every reference pass run without gradients."""
        return 2 if self.preference_method in ("dpo", "orpo", "simpo") else 1

