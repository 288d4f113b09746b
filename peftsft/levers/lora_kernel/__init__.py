"""Lever `lora_kernel`: on the CPU, plain LoRA layers, the gated MLPs around them and Llama-style RMSNorms train
through peftsft's autograd functions (lora_linear.py, fused_layers.py); elsewhere, or with `[training] lora_kernel
= "peft"`, through peft's and transformers' own forwards.

Memory term: the fused MLP keeps gate and up only (not act(gate) and the product), the fused RMSNorm no normalized
input, and LoRA dropout one dropped copy per distinct input (activations.py counts them). Patch: peft's LoRA
`Linear.forward` and the listed MLP/RMSNorm classes' forwards send eligible calls to the fused functions while
training (every other call — no grad, not on the CPU, other adapters — runs the original); restored after. The
classes are patched, not the instances: transformers' kernels integration resets instance forwards on `train()`.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import warnings
from collections.abc import Iterator

from peftsft.core.compat import within
from peftsft.levers.lora_kernel.modules import activation_name, fusable_mlp, is_gated_mlp, is_rmsnorm
from peftsft.levers.situation import Situation

# peft's LoRA Linear.forward(self, x, *args, **kwargs) with base_layer / lora_A / lora_B / lora_dropout / scaling /
# active_adapters / lora_variant as lora_linear.eligible_adapter reads them: unchanged from 0.17 to 0.21
PEFT = ((0, 17), (0, 99))


def decide(situation: Situation) -> str:
    setting = situation.recipe.training.lora_kernel
    fused = setting == "auto" and situation.device == "cpu" and situation.trains_language_model
    return "peftsft" if fused else "peft"


def fused_mlp(kernel: str, model, uses_dora: bool) -> bool:
    """Memory-term input: whether the model's gated MLPs train through fused_layers (a plain LoRA down projection,
    a listed class)."""
    if kernel != "peftsft" or uses_dora:
        return False
    mlp = next((m for m in model.modules() if hasattr(m, "down_proj") and hasattr(m, "act_fn")), None)
    return mlp is not None and hasattr(mlp.down_proj, "lora_A") and fusable_mlp(mlp) is not None


def fused_norms(kernel: str, model) -> bool:
    """Memory-term input: whether the model's RMSNorms train through fused_layers."""
    return kernel == "peftsft" and any(is_rmsnorm(m) for m in model.modules())


@contextlib.contextmanager
def patch(model, kernel: str, fallbacks: list[str]) -> Iterator[None]:
    if kernel != "peftsft":
        yield
        return
    with patch_lora_forward(fallbacks), patch_fused_modules(model, fallbacks):
        yield


@contextlib.contextmanager
def patch_lora_forward(fallbacks: list[str]) -> Iterator[None]:
    """peft's LoRA `Linear.forward` sends eligible layers to lora_linear's fused function; outside the peft versions
    it was written for, peft's forward stays and the fallback is recorded."""
    from peft.tuners.lora import layer as lora_layer

    from peftsft.levers.lora_kernel.lora_linear import eligible_adapter, fused_forward

    if not within("peft", *PEFT) or not hasattr(lora_layer, "Linear"):
        fallbacks.append(f"peft {importlib.metadata.version('peft')} is outside {PEFT[0]}-{PEFT[1]}: LoRA layers run "
                         "peft's own forward")  # fmt: skip
        warnings.warn(f"peftsft: {fallbacks[-1]}", stacklevel=3)
        yield
        return
    original = lora_layer.Linear.forward

    def forward(self, x, *args, **kwargs):
        name = eligible_adapter(self, x, args, kwargs)
        return original(self, x, *args, **kwargs) if name is None else fused_forward(self, x, name)

    lora_layer.Linear.forward = forward
    try:
        yield
    finally:
        lora_layer.Linear.forward = original


@contextlib.contextmanager
def patch_fused_modules(model, fallbacks: list[str]) -> Iterator[None]:
    """The listed gated MLPs (with a LoRA down projection) and RMSNorms of `model` train through fused_layers; a
    model with gated MLPs none of which is listed records the fallback."""
    if model is None:
        yield
        return
    originals, gated, fused_any = {}, False, False
    for module in model.modules():
        cls = type(module)
        gated = gated or is_gated_mlp(module)
        if cls in originals or getattr(cls.forward, "peftsft_fused", False):
            continue
        if fusable_mlp(module):
            originals[cls], fused_any = cls.forward, True
            cls.forward = _fused_mlp_forward(cls.forward)
        elif is_rmsnorm(module):
            originals[cls] = cls.forward
            cls.forward = _fused_norm_forward(cls.forward)
    if gated and not fused_any:
        fallbacks.append(f"transformers {importlib.metadata.version('transformers')}: no gated MLP of "
                         f"{type(model).__name__} is a listed class with its own forward and a SiLU/tanh-GELU activation; they keep "
                         "every activation")  # fmt: skip
    try:
        yield
    finally:
        for cls, forward in originals.items():
            cls.forward = forward


def _fused_mlp_forward(original):
    from peft.tuners.lora import layer as lora_layer

    from peftsft.levers.lora_kernel.fused_layers import gated_down
    from peftsft.levers.lora_kernel.lora_linear import eligible_adapter

    def forward(self, x):
        act, down = activation_name(self.act_fn), self.down_proj
        name = eligible_adapter(down, x, (), {}) if act and isinstance(down, lora_layer.Linear) else None
        if name is None:
            return original(self, x)
        return gated_down(down, self.gate_proj(x), self.up_proj(x), name, act)

    forward.peftsft_fused = True
    return forward


def _fused_norm_forward(original):
    import torch

    from peftsft.levers.lora_kernel.fused_layers import RMSNormFunction

    def forward(self, hidden_states):
        x = hidden_states
        if not (x.requires_grad or self.weight.requires_grad) or not torch.is_grad_enabled() or x.device.type != "cpu":
            return original(self, x)
        return RMSNormFunction.apply(x, self.weight, self.variance_epsilon)

    forward.peftsft_fused = True
    return forward
