"""Lever `precision`: the autocast training runs under — bf16 where the hardware multiplies it fast, else fp32.

Why not TRL's default (bf16 everywhere): on CPUs without native bf16 (AVX2 only) a bf16 matmul runs ~100× slower
than fp32; on CUDA without bf16 support fp16 is the fast half precision.
"""

from __future__ import annotations

from peftsft.core.machine import cpu_has_fast_bf16
from peftsft.levers.situation import Situation


def decide(situation: Situation) -> str:
    return resolve(situation.recipe.training.precision, situation.device)


def resolve(requested: str, device: str) -> str:
    """bf16 | fp16 | fp32 for a `[training] precision` setting on `device`; a CUDA plan made on a machine without
    CUDA assumes a GPU with bf16 (Ampere or newer)."""
    import torch

    if requested != "auto":
        return requested
    if device == "cuda":
        if not torch.cuda.is_available():
            return "bf16"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_fast_bf16() else "fp32"


def activation_bytes(precision: str) -> float:
    """Memory term: bytes per kept activation value — fp32, or autocast's half-precision matmul outputs beside its
    fp32 norms (2.4 on average)."""
    return 4 if precision == "fp32" else 2.4


def trainer_arguments(precision: str) -> dict:
    return {"bf16": precision == "bf16", "fp16": precision == "fp16"}
