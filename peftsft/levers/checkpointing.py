"""Lever `activation_checkpointing`: on only where the run would otherwise fill most of the memory available.

Why our own rule: TRL turns checkpointing on for every run, at ~25% of the speed, even where memory is plentiful;
transformers has no memory-driven switch. "auto" asks the memory plan (memory.py) for the run's peak without it and
turns it on above THRESHOLD of the memory available (a GPU's free memory, or the RAM Linux calls available; unknown:
off). Memory term: with it, each layer keeps only its input and one layer is recomputed at a time (activations.py).
"""

from __future__ import annotations

from dataclasses import replace

from peftsft.core.machine import memory_available
from peftsft.core.units import gib
from peftsft.levers.decision import Levers
from peftsft.levers.situation import Situation

# the share of the available memory a run may fill without checkpointing; the rest is headroom for fragmentation,
# the runtime and the estimate's error
THRESHOLD = 0.8


def decide(situation: Situation, levers: Levers) -> Levers:
    """`levers` with activation checkpointing decided (a recipe's true/false stands; "auto" as above)."""
    setting = situation.recipe.training.activation_checkpointing
    if setting != "auto":
        return replace(levers, activation_checkpointing=bool(setting), checkpointing_reason="set in the recipe")
    if not situation.trains_language_model:
        return replace(levers, activation_checkpointing=False, checkpointing_reason="auto: off (no memory plan for "
                       f"{situation.task} runs)")  # fmt: skip
    from peftsft.levers.memory import plan

    without = plan(situation, replace(levers, activation_checkpointing=False))
    on, reason = rule(without.peak_bytes, available(situation))
    if on:
        reason += f"; with it ~{gib(plan(situation, replace(levers, activation_checkpointing=True)).peak_bytes)}"
    return replace(levers, activation_checkpointing=on, checkpointing_reason=reason)


def available(situation: Situation) -> int | None:
    if situation.available_bytes is not None:
        return situation.available_bytes
    return memory_available(situation.device)


def rule(needed: int, available_bytes: int | None) -> tuple[bool, str]:
    """(on, why) for a run that needs `needed` bytes without checkpointing."""
    share = f"{THRESHOLD:.0%}"
    if available_bytes is None:
        return False, f"auto: off, ~{gib(needed)} needed; available memory unknown"
    used = f"{needed / available_bytes:.0%} of {gib(available_bytes)} available"
    if needed <= THRESHOLD * available_bytes:
        return False, f"auto: off, ~{gib(needed)} needed without it, {used} (on above {share})"
    return True, f"auto: on, without it ~{gib(needed)} needed, {used} (over {share})"


def trainer_arguments(levers: Levers) -> dict:
    return {"activation_checkpointing": levers.activation_checkpointing}
