"""Every custom autograd Function's backward is its forward's derivative: `torch.autograd.gradcheck` in float64 on
small random shapes, over masks (causal, padding, flattened samples), grouped-query heads, dropout, soft-capping,
temperature and logit scale.

The attention function's checks (every head, query and key of a batch as inputs) use gradcheck's fast mode: the
Jacobian against random vectors rather than entry by entry. Dropout draws a new mask per call, and gradcheck calls the forward many times: each call runs under a forked RNG
seeded alike (`seeded`), so every call draws the same mask and the backward is checked against that one mask.
Two Functions compute in float32 by design whatever their input: the loss head's outputs are float32 buffers, and
RMSNorm takes its statistics in float32 (as transformers' RMSNorm does). Their inputs are float64 too, but the
finite differences step and tolerate float32 rounding (`FP32_RESOLUTION`); a wrong backward is off by far more.
"""

from __future__ import annotations

import pytest
import torch
from torch.autograd import gradcheck

from peftsft.levers.attention.kernel import (
    MaskedSoftmax,
    RecomputedAttention,
    _grouped,
    _mask_terms,
    cpu_training_attention,
)
from peftsft.levers.lora_kernel.fused_layers import GatedLoraDownFunction, RMSNormFunction
from peftsft.levers.lora_kernel.lora_linear import LoraLinearFunction
from peftsft.levers.loss_head.kernel import CpuLogProbFunction

F64 = torch.float64
FP32_RESOLUTION = {"eps": 1e-3, "atol": 1e-3, "rtol": 1e-3}


def rand(*shape: int, grad: bool = True, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, dtype=F64, generator=generator).requires_grad_(grad)


def seeded(fn):
    """fn with the same random draws (dropout masks) on every call, the global RNG left as it was."""

    def run(*args):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(1234)
            return fn(*args)

    return run


# ---------------------------------------------------------------------------------------------- attention

BATCH, KV_HEADS, GROUPS, Q_LEN, DIM = 2, 2, 2, 5, 3  # 4 query heads over 2 key/value heads


def causal(q_len: int, k_len: int) -> torch.Tensor:
    return torch.ones(q_len, k_len, dtype=torch.bool).tril(k_len - q_len)


def padded_mask() -> torch.Tensor:
    """(batch, 1, q, k): row 0 causal, row 1 left-padded by two (its first two queries see no key at all)."""
    keep = causal(Q_LEN, Q_LEN).expand(BATCH, 1, Q_LEN, Q_LEN).clone()
    keep[1, :, :, :2] = False
    return keep


MASKS = {
    "none": lambda: None,
    "causal": lambda: causal(Q_LEN, Q_LEN)[None, None].expand(BATCH, 1, Q_LEN, Q_LEN),
    "padding": padded_mask,
}


@pytest.mark.parametrize("mask", MASKS)
def test_masked_softmax(mask):
    keep = MASKS[mask]()
    bias, empty = _mask_terms(_grouped(keep, KV_HEADS, GROUPS), F64) if keep is not None else (None, None)
    scores = rand(BATCH, KV_HEADS, GROUPS, Q_LEN, Q_LEN)
    assert gradcheck(lambda s: MaskedSoftmax.apply(s, bias, empty, F64), (scores,))


@pytest.mark.parametrize("mask", MASKS)
@pytest.mark.parametrize("groups", [1, GROUPS])  # plain multi-head and grouped-query heads
def test_recomputed_attention(mask, groups):
    keep, k_len = MASKS[mask](), Q_LEN + 1 if mask == "none" else Q_LEN
    bias, empty = _mask_terms(_grouped(keep, KV_HEADS, groups), F64) if keep is not None else (None, None)
    q = rand(BATCH * KV_HEADS, groups * Q_LEN, DIM, seed=1)
    k, v = rand(BATCH * KV_HEADS, k_len, DIM, seed=2), rand(BATCH * KV_HEADS, k_len, DIM, seed=3)
    shape = (BATCH, KV_HEADS, groups, Q_LEN, k_len)
    assert gradcheck(lambda q, k, v: RecomputedAttention.apply(q, k, v, bias, empty, 0.7, shape, F64), (q, k, v))


class Layer(torch.nn.Module):
    """What the attention function reads of a transformers attention layer."""

    is_causal = True


def attention(query, key, value, mask, dropout: float = 0.0, **kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return cpu_training_attention(Layer(), query, key, value, mask, dropout=dropout, scaling=DIM**-0.5,
                                  sdpa=sdpa_attention_forward, **kwargs)[0]  # fmt: skip


def qkv(batch: int, q_len: int) -> tuple[torch.Tensor, ...]:
    return (rand(batch, KV_HEADS * GROUPS, q_len, DIM, seed=4), rand(batch, KV_HEADS, q_len, DIM, seed=5),
            rand(batch, KV_HEADS, q_len, DIM, seed=6))  # fmt: skip


@pytest.mark.parametrize("mask", ["causal", "padding"])
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_training_attention_with_grouped_heads_masks_and_dropout(mask, dropout):
    keep = MASKS[mask]()
    assert gradcheck(seeded(lambda q, k, v: attention(q, k, v, keep, dropout)), qkv(BATCH, Q_LEN), fast_mode=True)


def test_training_attention_on_flattened_samples():
    """A padding-free batch of samples of 3, 4 and 2 tokens: attended sample by sample (position ids restart)."""
    lengths = [3, 4, 2]
    n = sum(lengths)
    keep = torch.zeros(n, n, dtype=torch.bool)
    start = 0
    for length in lengths:
        keep[start : start + length, start : start + length] = causal(length, length)
        start += length
    positions = torch.cat([torch.arange(length) for length in lengths])[None]
    assert gradcheck(lambda q, k, v: attention(q, k, v, keep[None, None], position_ids=positions), qkv(1, n),
                     fast_mode=True)


# ---------------------------------------------------------------------------------------------- LoRA layers

IN, OUT, RANK, TOKENS = 6, 4, 2, (2, 3)


def lora_weights(bias: bool = True) -> tuple[torch.Tensor | None, ...]:
    return rand(OUT, IN, seed=7), rand(OUT, seed=8) if bias else None, rand(RANK, IN, seed=9), rand(OUT, RANK, seed=10)


@pytest.mark.parametrize("p", [0.0, 0.4])
@pytest.mark.parametrize("bias", [True, False])
def test_lora_linear(p, bias):
    x = rand(*TOKENS, IN, seed=11)
    weight, b, lora_a, lora_b = lora_weights(bias)
    inputs = tuple(t for t in (x, weight, b, lora_a, lora_b) if t is not None)

    def layer(x, weight, *rest):
        b, lora_a, lora_b = rest if bias else (None, *rest)
        return LoraLinearFunction.apply(x, weight, b, lora_a, lora_b, 0.5, p)

    assert gradcheck(seeded(layer), inputs)


@pytest.mark.parametrize("act", ["silu", "gelu_tanh"])
@pytest.mark.parametrize("p", [0.0, 0.4])
def test_gated_lora_down(act, p):
    gate, up = rand(*TOKENS, IN, seed=12), rand(*TOKENS, IN, seed=13)
    weight, b, lora_a, lora_b = lora_weights()

    def down(gate, up, weight, b, lora_a, lora_b):
        return GatedLoraDownFunction.apply(gate, up, weight, b, lora_a, lora_b, 2.0, p, act)

    assert gradcheck(seeded(down), (gate, up, weight, b, lora_a, lora_b))


def test_gated_lora_down_with_a_frozen_base_and_input():
    """The usual training case: only the adapter (and what feeds the MLP) trains."""
    gate, up = rand(*TOKENS, IN, seed=12), rand(*TOKENS, IN, seed=13, grad=False)
    weight, b, lora_a, lora_b = (t.detach() for t in lora_weights())
    lora_a.requires_grad_(True)
    assert gradcheck(lambda gate, a: GatedLoraDownFunction.apply(gate, up, weight, b, a, lora_b, 2.0, 0.0, "silu"),
                     (gate, lora_a))  # fmt: skip


@pytest.mark.parametrize("trains_weight", [True, False])
def test_rms_norm(trains_weight):
    """Statistics in float32 by design (see the module docstring): checked at float32's resolution."""
    x, weight = rand(*TOKENS, IN, seed=14), rand(IN, seed=15, grad=trains_weight)
    inputs = (x, weight) if trains_weight else (x,)
    assert gradcheck(lambda x, w=weight: RMSNormFunction.apply(x, w, 1e-6), inputs, **FP32_RESOLUTION)


# ---------------------------------------------------------------------------------------------- loss head

TOKENS_N, HIDDEN, VOCAB = 5, 4, 7
TARGETS = torch.tensor([0, 3, 6, 3, 1])


@pytest.mark.parametrize(
    "temperature, softcap, scale",
    [(1.0, None, 1.0), (0.7, None, 1.0), (1.0, 2.0, 1.0), (0.7, 2.0, 1.5)],
)
@pytest.mark.parametrize("trainable_head", [False, True])  # False: the hidden gradient computed in the forward
def test_loss_head_log_probs_and_entropy(temperature, softcap, scale, trainable_head):
    """Outputs are float32 buffers by design (see the module docstring): checked at float32's resolution."""
    hidden = rand(TOKENS_N, HIDDEN, seed=16)
    weight = rand(VOCAB, HIDDEN, seed=17, grad=trainable_head)
    bias = rand(VOCAB, seed=18) if trainable_head else None
    inputs = tuple(t for t in (hidden, weight, bias) if t is not None and t.requires_grad)

    def head(hidden, *trained):
        w, b = trained if trainable_head else (weight, None)
        logprobs, entropy, *_ = CpuLogProbFunction.apply(hidden, w, b, TARGETS, temperature, 4096, softcap, scale)
        return logprobs, entropy

    assert gradcheck(head, inputs, **FP32_RESOLUTION)


def test_loss_head_over_several_token_blocks(monkeypatch):
    """Tokens go through the head in blocks: a backward that mixes up blocks fails here (two tokens a block)."""
    import peftsft.levers.loss_head.kernel as loss_head

    monkeypatch.setattr(loss_head, "ROW_ELEMENTS", 2 * VOCAB)
    hidden, weight = rand(TOKENS_N, HIDDEN, seed=19), rand(VOCAB, HIDDEN, seed=20)

    def head(hidden, weight):
        return CpuLogProbFunction.apply(hidden, weight, None, TARGETS, 0.9, 4096, 3.0, 1.0)[:2]

    assert gradcheck(head, (hidden, weight), **FP32_RESOLUTION)
    assert gradcheck(lambda h: head(h, weight.detach())[0], (hidden,), **FP32_RESOLUTION)
