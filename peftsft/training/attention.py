"""CPU training attention: short sequences through two matmuls and a softmax, long ones through PyTorch's SDPA.

Why our own: PyTorch's CPU flash-attention kernel (what SDPA runs on the CPU) spends ~8× its forward time in its
backward at chat-row lengths; at ≤ 320 keys the plain product — scores by one batched matmul, an fp32 softmax,
one more matmul, all differentiated by autograd — trains faster (measured fwd+bwd, 4 rows × 9 heads × 64 dims,
bf16: 1.6 vs 4.8 ms at 64 tokens, 16 vs 22 ms at 256; 72 vs 41 ms at 512, where SDPA wins). Both paths see the
same boolean mask transformers builds for SDPA, so samples and padding are kept apart exactly as with SDPA; under
no_grad (generation, evaluation) it is SDPA unchanged. Registered with transformers' AttentionInterface.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from peftsft.training import trl_compat

NAME = "peftsft_cpu"
SHORT_KEYS = 320  # up to this many keys the matmul path; SDPA above (the measured crossover, bf16 and fp32)


def cpu_training_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, *,
                           sdpa: tuple, **kwargs):  # fmt: skip
    """transformers' attention signature: (batch, heads, q, dim) in, ((batch, q, heads, dim), None) out; `sdpa` is
    transformers' (repeat_kv, sdpa_attention_forward), bound by trl_compat.register_attention."""
    repeat_kv, sdpa_attention_forward = sdpa
    short = key.shape[2] <= SHORT_KEYS and query.shape[2] > 1
    if not (short and torch.is_grad_enabled() and query.device.type == "cpu") or kwargs.get("position_bias") \
            is not None or kwargs.get("softcap") is not None:  # fmt: skip
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)  # fmt: skip
    groups = getattr(module, "num_key_value_groups", 1)
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    scores = torch.matmul(query, key.transpose(2, 3)) * scale
    if attention_mask is None:  # SDPA's is_causal case: a causal mask over the keys, aligned at the end
        q_len, k_len = query.shape[2], key.shape[2]
        keep = torch.ones(q_len, k_len, dtype=torch.bool, device=query.device).tril(k_len - q_len)
        attention_mask = keep if getattr(module, "is_causal", True) and is_causal is not False else None
    empty = None  # query rows that may attend to no key (left padding): SDPA gives them zeros, and so do we
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
            empty = ~attention_mask.any(dim=-1, keepdim=True)
        else:
            scores = scores + attention_mask[..., : key.shape[2]]
    probs = SoftmaxAs.apply(scores, query.dtype)
    if empty is not None and bool(empty.any()):
        probs = probs.masked_fill(empty, 0.0)
    probs = torch.nn.functional.dropout(probs, p=dropout, training=module.training)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), None


class SoftmaxAs(torch.autograd.Function):
    """softmax(x) computed in fp32 and returned in `dtype`, keeping only that output for the backward: autograd's
    own softmax(dtype=float32) followed by a cast would also keep the fp32 probabilities (batch × heads × q × k
    floats per layer, ~0.3 GiB for SmolLM2 at 4 × 260 tokens). In fp32 the two are identical."""

    @staticmethod
    def forward(ctx, scores: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(dtype)
        ctx.save_for_backward(probs)
        ctx.scores_dtype = scores.dtype
        return probs

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (probs,) = ctx.saved_tensors
        probs, grad = probs.float(), grad.float()
        return (probs * (grad - (grad * probs).sum(dim=-1, keepdim=True))).to(ctx.scores_dtype), None


def register() -> str:
    """Make NAME known to transformers (attention function and SDPA's mask format) through trl_compat; idempotent."""
    trl_compat.register_attention(NAME, cpu_training_attention)
    return NAME


def attention_kernel(setting: str, device: str, current: str) -> str:
    """The attention training runs with. "auto" on the CPU: NAME over SDPA (sdpa/auto models only); otherwise the
    model's own (`current`), so a recipe's explicit "sdpa"/"eager" and CUDA's kernels stay as they are."""
    if setting == "auto" and device == "cpu" and current == "sdpa":
        return NAME
    return current


@contextlib.contextmanager
def applied(model, name: str) -> Iterator[None]:
    """`model` (a peft wrapper or a transformers model) attends with `name` inside the block, as before after it."""
    pretrained = next((m for m in model.modules() if hasattr(m, "set_attn_implementation")), None)
    before = getattr(getattr(pretrained, "config", None), "_attn_implementation", None)
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
