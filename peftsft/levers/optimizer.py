"""Lever `optimizer`: AdamW's fused kernel unless the recipe names another.

Why: one kernel for every update instead of a loop over an adapter's hundreds of small tensors (transformers'
own default since torch 2.8; torch >= 2.4 has it on CPU and CUDA).
"""

from __future__ import annotations

from peftsft.levers.situation import Situation

FUSED = "adamw_torch_fused"


def decide(situation: Situation) -> str:
    setting = situation.recipe.training.optim
    return FUSED if setting == "auto" else setting


def state_bytes(optimizer: str, trainable_values: int, trainable_bytes: int, notes: list[str]) -> int:
    """Memory term: Adam-style optimizers keep two states per trainable value (in its dtype), 8-bit ones a byte
    each, Lion one, SGD and factored Adafactor none counted."""
    name = optimizer.lower()
    if "8bit" in name:
        return 2 * trainable_values
    if "sgd" in name or "adafactor" in name:
        notes.append(f"optimizer {optimizer}: states counted as 0 (SGD without momentum / factored Adafactor)")
        return 0
    if "lion" in name:
        return trainable_bytes
    if "adam" not in name:
        notes.append(f"optimizer {optimizer}: assumed to keep two states per trainable value, like AdamW")
    return 2 * trainable_bytes


def trainer_arguments(optimizer: str) -> dict:
    return {"optim": optimizer}
