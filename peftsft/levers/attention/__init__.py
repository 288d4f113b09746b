"""Lever `attention`: on the CPU, training attends through peftsft's kernel (kernel.py), sample by sample.

Rule: `[model] attention = "auto"` on the CPU swaps SDPA for NAME while training (the model keeps SDPA for
generation and evaluation, where the kernel defers to SDPA anyway); an explicit backend, or CUDA's kernels, stay as
they are. Memory term: none of its own — like SDPA it keeps no attention probabilities (the plan's activation
formula assumes neither does). Patch: registered with transformers' AttentionInterface, set on the model while
training, restored after.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from peftsft.core.compat import attention_implementation, require
from peftsft.levers.situation import Situation

NAME = "peftsft_cpu"
# the kernel calls torch's softmax backward kernel (torch._softmax_backward_data) and transformers' SDPA function
TORCH, TRANSFORMERS = ((2, 4), (2, 99)), ((5, 0), (5, 99))


def decide(situation: Situation) -> str:
    """The attention training runs with: NAME where "auto" meets SDPA on the CPU, else the model's own."""
    current = attention_implementation(situation.model)
    if situation.recipe.model.attention == "auto" and situation.device == "cpu" and current == "sdpa" \
            and situation.trains_language_model:  # fmt: skip
        return NAME
    return current


def register() -> str:
    """Make NAME known to transformers (attention function and SDPA's mask format); idempotent."""
    import functools

    require("torch", *TORCH, "peftsft's CPU attention")
    require("transformers", *TRANSFORMERS, "peftsft's CPU attention")
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    from peftsft.levers.attention.kernel import cpu_training_attention

    AttentionInterface.register(NAME, functools.partial(cpu_training_attention, sdpa=sdpa_attention_forward))
    AttentionMaskInterface.register(NAME, sdpa_mask)
    return NAME


@contextlib.contextmanager
def patch(model, name: str | None) -> Iterator[None]:
    """`model` (a peft wrapper or a transformers model) attends with `name` inside the block, as before after it."""
    pretrained = next((m for m in model.modules() if hasattr(m, "set_attn_implementation")), None) \
        if model is not None and name else None  # fmt: skip
    before = attention_implementation(pretrained) if pretrained is not None else None
    if pretrained is None or name == before:
        yield
        return
    if name == NAME:
        register()
    pretrained.set_attn_implementation(name)
    try:
        yield
    finally:
        pretrained.set_attn_implementation(before)
