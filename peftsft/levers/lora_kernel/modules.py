"""Which transformers modules the fused layers may replace: named classes, not read from their source text.

A gated MLP qualifies when its class is listed in GATED_MLPS (their forward is
`down_proj(act_fn(gate_proj(x)) * up_proj(x))`) and its activation is one fused_layers computes; an RMSNorm when
its class is in RMSNORMS (Llama's: the input in fp32, x · rsqrt(mean(x²) + eps), cast back, times the weight).
tests/unit/test_lora_kernel.py checks every listed class against that formula, so a transformers release that
changes one fails there; outside TRANSFORMERS the list is not trusted and nothing is fused (a recorded fallback).
"""

from __future__ import annotations

import functools

from peftsft.core.compat import within

TRANSFORMERS = ((5, 0), (5, 99))
_MODELS = "transformers.models"
GATED_MLPS = frozenset(f"{_MODELS}.{path}" for path in (
    "llama.modeling_llama.LlamaMLP", "mistral.modeling_mistral.MistralMLP", "qwen2.modeling_qwen2.Qwen2MLP",
    "qwen3.modeling_qwen3.Qwen3MLP", "smollm3.modeling_smollm3.SmolLM3MLP", "gemma.modeling_gemma.GemmaMLP",
    "gemma2.modeling_gemma2.Gemma2MLP", "gemma3.modeling_gemma3.Gemma3MLP", "granite.modeling_granite.GraniteMLP",
    "olmo2.modeling_olmo2.Olmo2MLP", "cohere.modeling_cohere.CohereMLP", "mllama.modeling_mllama.MllamaTextMLP",
))  # fmt: skip
RMSNORMS = frozenset(f"{_MODELS}.{path}" for path in (
    "llama.modeling_llama.LlamaRMSNorm", "mistral.modeling_mistral.MistralRMSNorm",
    "qwen2.modeling_qwen2.Qwen2RMSNorm", "qwen3.modeling_qwen3.Qwen3RMSNorm", "smollm3.modeling_smollm3.SmolLM3RMSNorm",
    "granite.modeling_granite.GraniteRMSNorm", "phi3.modeling_phi3.Phi3RMSNorm",
    "mllama.modeling_mllama.MllamaTextRMSNorm",
))  # fmt: skip


def qualified_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


@functools.cache
def trusted() -> bool:
    """The lists describe these transformers releases only."""
    return within("transformers", *TRANSFORMERS)


def activation_name(act) -> str | None:
    """fused_layers' name for a transformers activation module, None for one it does not compute."""
    import torch
    from transformers.activations import GELUTanh, SiLUActivation

    if type(act) in (SiLUActivation, torch.nn.SiLU):
        return "silu"
    tanh_gelu = type(act) is GELUTanh and isinstance(getattr(act, "act", None), functools.partial) \
        and act.act.func is torch.nn.functional.gelu and act.act.keywords == {"approximate": "tanh"}  # fmt: skip
    if tanh_gelu or (type(act) is torch.nn.GELU and act.approximate == "tanh"):
        return "gelu_tanh"
    return None


def listed(cls: type, names: frozenset[str]) -> bool:
    """`cls` is named in `names` and still runs the forward its own module defines for it (not one put there since,
    e.g. by a patch of someone else's)."""
    forward = getattr(cls, "forward", None)
    own = getattr(forward, "__module__", None) == cls.__module__ and \
        getattr(forward, "__qualname__", None) == f"{cls.__qualname__}.forward"  # fmt: skip
    return trusted() and own and qualified_name(cls) in names


def fusable_mlp(module) -> str | None:
    """The activation's name (fused_layers.ACTIVATIONS) when `module` is a listed gated MLP with an activation
    fused_layers computes; None otherwise."""
    if not listed(type(module), GATED_MLPS):
        return None
    return activation_name(module.act_fn)


def is_gated_mlp(module) -> bool:
    """Shaped like a gated MLP (listed or not): what the fallback note looks for."""
    return all(hasattr(module, f"{part}_proj") for part in ("gate", "up", "down"))


def is_rmsnorm(module) -> bool:
    return listed(type(module), RMSNORMS)
