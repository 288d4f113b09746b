"""Per-machine rules behind the speed levers: pure functions of the recipe and the device, no decisions stored."""

from __future__ import annotations

from pathlib import Path

from peftsft.core.config import Recipe

# TRL's own slice; its CUDA kernel scores a slice in place, the torch code it runs elsewhere keeps ~9 copies
TRL_VOCAB_CHUNK, CPU_VOCAB_CHUNK = 32768, 4096


def resolve_precision(requested: str, device: str) -> str:
    """bf16 autocast when it pays: CUDA with bf16, or a CPU with native bf16 matmuls."""
    import torch

    if requested != "auto":
        return requested
    if device == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_fast_bf16() else "fp32"


def cpu_features() -> set[str]:
    """The CPU's feature flags as Linux reports them (empty where /proc/cpuinfo is unreadable)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_has_fast_bf16() -> bool:
    return bool({"avx512_bf16", "amx_bf16"} & cpu_features())


def adapter_dtype(recipe: Recipe, precision: str) -> str | None:
    """The trainable weights' dtype on a quantized base (None without one): bf16 only where training runs in bf16."""
    if recipe.quantization.bits is None:
        return None
    if recipe.quantization.adapter_dtype != "auto":
        return recipe.quantization.adapter_dtype
    return "bfloat16" if precision == "bf16" else "float32"


def loss_vocab_chunk(setting: int | str, device: str) -> int:
    if setting != "auto":
        return int(setting)
    return TRL_VOCAB_CHUNK if device == "cuda" else CPU_VOCAB_CHUNK
