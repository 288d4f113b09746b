"""Levers `base_dtype` and `adapter_dtype`: the dtypes of the frozen base and of the trainable weights on it.

base_dtype — bf16 where training runs in bf16: under autocast torch caches the bf16 copy of a weight only for
leaves that require grad, so a frozen fp32 base is cast again at every use (forward, recomputation), a copy of the
whole base each step. The trainable adapters and their optimizer states stay float32.
adapter_dtype (quantized bases only) — TRL casts the trainable weights on a quantized base to bf16 unconditionally
(QLoRA paper); where training runs in fp32 (CPUs without fast bf16) that makes every adapter matmul ~100× slower,
so they go back to float32 there.
The plan applies `prepare` and `settle` to its meta-device skeleton: it counts the dtypes the run trains with.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from peftsft.levers.situation import Situation


def decide_adapter_dtype(situation: Situation, precision: str) -> str | None:
    """The trainable weights' dtype on a quantized base (None without one): bf16 only where training runs in bf16."""
    quant = situation.recipe.quantization
    if quant.bits is None:
        return None
    if quant.adapter_dtype != "auto":
        return quant.adapter_dtype
    return "bfloat16" if precision == "bf16" else "float32"


def decide_base_dtype(situation: Situation, precision: str) -> str | None:
    """The frozen base's dtype under adapters (None: left as loaded, e.g. a quantized base or full fine-tuning)."""
    setting = situation.recipe.training.base_dtype
    if situation.recipe.quantization.bits is not None or not has_frozen_base(situation.model):
        return None
    if setting != "auto":
        return setting
    return "bfloat16" if precision == "bf16" and situation.trains_language_model else None


def has_frozen_base(model) -> bool:
    """Adapters on frozen float weights (LoRA family and other peft adapters), as opposed to full fine-tuning."""
    params = [p for p in model.parameters() if p.is_floating_point()]
    return any(p.requires_grad for p in params) and any(not p.requires_grad for p in params)


def prepare(model, base_dtype: str | None) -> None:
    """Before the trainer: the frozen floating weights to `base_dtype`, the trainable ones and buffers untouched."""
    import torch

    if base_dtype is None:
        return
    target = getattr(torch, base_dtype)
    for param in model.parameters():
        if not param.requires_grad and param.is_floating_point() and param.dtype != target:
            param.data = param.data.to(target)  # buffers (rotary frequencies) stay fp32 by design


def settle(model, adapter_dtype: str | None) -> None:
    """After the trainer is built: the trainable weights on a quantized base in `adapter_dtype` (TRL's bf16 cast
    undone where float32); DoRA's magnitude vector stays float32, as TRL leaves it."""
    import torch

    if adapter_dtype is None:
        return
    target = getattr(torch, adapter_dtype)
    for name, param in model.named_parameters():
        if param.requires_grad and param.is_floating_point() and param.dtype != target \
                and "lora_magnitude_vector" not in name:  # fmt: skip
            param.data = param.data.to(target)


@contextlib.contextmanager
def patch(model, base_dtype: str | None, precision: str) -> Iterator[None]:
    """With a half-precision frozen base under autocast, peft's LoRA layers skip casting their input to the
    adapter's fp32 (peft.helpers.disable_input_dtype_casting, public): autocast casts it straight back to bf16 for
    the adapter's matmul, so the round trip changes no value and costs a copy of every adapted layer's input."""
    if base_dtype is None or precision == "fp32" or model is None:
        yield
        return
    from peft.helpers import disable_input_dtype_casting

    with disable_input_dtype_casting(model):
        yield
