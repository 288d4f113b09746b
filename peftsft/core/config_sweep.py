"""Recipe section [sweep]: what `peftsft sweep` searches (each key a range or a list of values) and how it judges a
trial. Each key of the space names the recipe key it sets (SPACE); the rest of the recipe stays as written."""

from __future__ import annotations

from typing import Any

from pydantic import model_validator

from peftsft.core.config_base import Key, Section

# [sweep] key → (the recipe key it sets, whether its values are whole numbers)
SPACE: dict[str, tuple[str, bool]] = {
    "learning_rate": ("training.learning_rate", False),
    "epochs": ("training.epochs", False),
    "max_steps": ("training.max_steps", True),
    "batch_size": ("training.batch_size", True),
    "grad_accum": ("training.grad_accum", True),
    "warmup_ratio": ("training.warmup_ratio", False),
    "weight_decay": ("training.weight_decay", False),
    "lr_scheduler": ("training.lr_scheduler", False),
    "r": ("strategy.r", True),
    "alpha": ("strategy.alpha", True),
    "dropout": ("strategy.dropout", False),
    "replay": ("data.replay", False),
}


class Span(Section):
    """A range to draw from: low to high, on a log scale or in steps."""

    low: float = Key(help="the smallest value")
    high: float = Key(help="the largest value")
    log: bool = Key(False, "draw on a log scale (learning rates: equal chances per decade)")
    step: float | None = Key(None, "draw only low + k × step (whole numbers: 1 when unset)", gt=0.0)

    @model_validator(mode="after")
    def _ordered(self) -> Span:
        if self.low >= self.high:
            raise ValueError(f"low ({self.low:g}) must be below high ({self.high:g})")
        if self.log and self.low <= 0:
            raise ValueError(f"log = true needs low > 0 (got {self.low:g})")
        if self.log and self.step is not None:
            raise ValueError("set log or step, not both")
        return self


Space = Span | list[bool | int | float | str]


def _space(recipe_key: str, example: str) -> Any:
    return Key(None, f"sets {recipe_key}: a range {{low, high, log, step}} or a list of values, e.g. {example}")


class SweepSection(Section):
    metric: str | None = Key(
        None, "the metric the sweep optimises (the names [training] early_stopping_metric takes: loss, "
        "tool_accuracy, token_f1, general, accuracy, …); unset: early_stopping_metric, else loss"
    )
    trials: int = Key(10, "trials in all (`sweep --trials` overrides); a resumed sweep runs only the missing ones", ge=1)
    startup_trials: int = Key(4, "trials drawn at random before TPE models the space", ge=0)
    seed: int | None = Key(None, "the sampler's seed; unset: [training] seed")
    prune: bool = Key(
        True, "stop a trial whose metric at an evaluation is worse than the median of earlier trials at that step "
        "(Optuna's MedianPruner); needs [training] eval_steps"
    )
    prune_startup_trials: int = Key(2, "trials finished before any is pruned", ge=0)
    prune_warmup_steps: int = Key(0, "training steps of a trial before it can be pruned", ge=0)
    general_must_not_regress: bool = Key(
        False, "a trial whose general check (after training) regressed past [eval] max_general_regression is "
        "infeasible: it is reported, never the best"
    )
    learning_rate: Space | None = _space("[training] learning_rate", "{low = 1e-5, high = 1e-3, log = true}")
    epochs: Space | None = _space("[training] epochs", "[1, 2, 3]")
    max_steps: Space | None = _space("[training] max_steps", "{low = 20, high = 80, step = 20}")
    batch_size: Space | None = _space("[training] batch_size", "[2, 4]")
    grad_accum: Space | None = _space("[training] grad_accum", "[1, 2, 4]")
    warmup_ratio: Space | None = _space("[training] warmup_ratio", "{low = 0.0, high = 0.1}")
    weight_decay: Space | None = _space("[training] weight_decay", "[0.0, 0.01]")
    lr_scheduler: list[str] | None = Key(None, "sets [training] lr_scheduler: a list, e.g. [\"cosine\", \"constant\"]",
                                         min_length=1)
    r: Space | None = _space("[strategy] r (the LoRA rank)", "[4, 8, 16]")
    alpha: Space | None = _space("[strategy] alpha (LoRA's scale numerator)", "[8, 16, 32]")
    dropout: Space | None = _space("[strategy] dropout", "{low = 0.0, high = 0.1}")
    replay: Space | None = _space("[data] replay (general data mixed in)", "[0.0, 0.1, 0.2]")

    @model_validator(mode="after")
    def _values_fit(self) -> SweepSection:
        for name, value in self.space().items():
            if isinstance(value, list) and (not value or len(set(map(repr, value))) != len(value)):
                raise ValueError(f"{name}: a list of distinct values, at least one (got {value})")
            whole = SPACE[name][1] and isinstance(value, Span)
            if whole and not all(float(v).is_integer() for v in (value.low, value.high, value.step or 1)):
                raise ValueError(f"{name} takes whole numbers: low, high and step must be integers (got {value})")
        return self

    def space(self) -> dict[str, Span | list]:
        """The keys being searched: name → its range or values, in SPACE's order."""
        return {name: getattr(self, name) for name in SPACE if getattr(self, name) is not None}

    def extremes(self) -> list[tuple[str, str, Any]]:
        """(name, recipe key, value) for each end of each range and each listed value: a recipe with any of them
        must be valid, which `validate` checks before a sweep starts."""
        out = []
        for name, space in self.space().items():
            key, whole = SPACE[name]
            values = space if isinstance(space, list) else [space.low, space.high]
            out += [(name, key, int(v) if whole and isinstance(v, float) and v.is_integer() else v) for v in values]
        return out
