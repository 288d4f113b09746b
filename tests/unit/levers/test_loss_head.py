"""peftsft's CPU loss head against TRL's ChunkedLogProbFunction: the same outputs and gradients, swapped in and out."""

from __future__ import annotations

import pytest
import torch
import trl.trainer.utils as trl_utils

import peftsft.levers.loss_head.kernel as loss_head
from peftsft.levers.loss_head import LossHead, patch
from peftsft.levers.loss_head.kernel import CpuLogProbFunction

OUTPUTS = ("entropy", "log_sum_sq_probs", "mean_logits", "is_top1")


def _inputs(dtype=torch.float32, bias=False, weight_grad=False, n=37, hidden=24, vocab=1000):
    g = torch.Generator().manual_seed(0)
    h = torch.randn(n, hidden, generator=g).requires_grad_()
    w = (torch.randn(vocab, hidden, generator=g) * 0.6).to(dtype).requires_grad_(weight_grad)
    b = torch.randn(vocab, generator=g).requires_grad_() if bias else None
    targets = torch.randint(0, vocab, (n,), generator=g)
    logits = torch.mm(h[:3].detach(), w.detach().float().t()) + (b.detach() if bias else 0)
    targets[:3] = logits.argmax(-1)  # some targets are the argmax (scale, soft-cap and temperature keep it)
    with torch.no_grad():  # row 0's target ties with token 0 (an earlier index): not the first maximum
        w[0] = w[targets[0]]
        if b is not None:
            b[0] = b[targets[0]]
    return h, w, b, targets


def _run(function, h, w, b, targets, temperature=1.0, softcap=None, scale=1.0):
    out = function.apply(h, w, b, targets, temperature, 256, softcap, scale, OUTPUTS)
    logprobs, entropy = out[0], out[1]
    loss = -logprobs.sum() + 0.3 * entropy.sum()  # both gradients TRL's SFT loss and metrics can carry
    wrt = [t for t in (h, w, b) if t is not None and t.requires_grad]
    return out, torch.autograd.grad(loss, wrt)


@pytest.mark.parametrize(("temperature", "softcap", "scale", "bias", "weight_grad"), [
    (1.0, None, 1.0, False, False),  # SmolLM2 / Llama LoRA: a frozen head
    (0.7, 30.0, 0.5, True, True),  # Gemma-style soft-capping, a scaled, biased, trainable head
])  # fmt: skip
def test_fp32_outputs_and_gradients_equal_trls(monkeypatch, temperature, softcap, scale, bias, weight_grad):
    from trl.kernels import ChunkedLogProbFunction

    monkeypatch.setattr(loss_head, "ROW_ELEMENTS", 10000)  # 10 tokens a block: 4 blocks, against TRL's 4 slices
    monkeypatch.setattr(loss_head, "VOCAB_SLICE_FP32", 300)  # fp32 logits in 4 slices, the last partial
    h, w, b, targets = _inputs(bias=bias, weight_grad=weight_grad)
    ours, our_grads = _run(CpuLogProbFunction, h, w, b, targets, temperature, softcap, scale)
    trl, trl_grads = _run(ChunkedLogProbFunction, h, w, b, targets, temperature, softcap, scale)
    for mine, theirs in zip(ours[:4], trl[:4], strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5)
    assert torch.equal(ours[4], trl[4]) and ours[4][1:3].all() and not ours[4][0]
    assert len(our_grads) == (3 if bias else 1)
    for mine, theirs in zip(our_grads, trl_grads, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-5)


def test_under_bf16_autocast_within_bf16_rounding_of_trls():
    """A bf16 frozen head under autocast: the same logits (bf16 GEMM), the hidden gradient rounded once to bf16."""
    from trl.kernels import ChunkedLogProbFunction

    h, w, b, targets = _inputs(dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours, (our_grad,) = _run(CpuLogProbFunction, h, w, b, targets)
        trl, (trl_grad,) = _run(ChunkedLogProbFunction, h, w, b, targets)
    torch.testing.assert_close(ours[0], trl[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours[1], trl[1], rtol=1e-5, atol=1e-5)
    assert our_grad.dtype == h.dtype
    torch.testing.assert_close(our_grad, trl_grad, rtol=1e-2, atol=2e-3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("positive_row", [False, True])
def test_sft_loss_gradient_equals_trls(monkeypatch, dtype, positive_row):
    """TRL's SFT loss: only the log-probs carry a gradient (entropy and top-1 are metrics; the in-place path), and
    unscored rows weigh 0; a row with a positive weight too."""
    from trl.kernels import ChunkedLogProbFunction

    monkeypatch.setattr(loss_head, "ROW_ELEMENTS", 10000)  # 10 tokens a block: 4 blocks, the last partial
    monkeypatch.setattr(loss_head, "VOCAB_SLICE_FP32", 300)  # fp32 logits in 4 slices, the last partial
    h, w, b, targets = _inputs(dtype=dtype)
    weights = torch.full((len(targets),), -1.0 / len(targets))
    weights[5:9] = 0.0
    if positive_row:
        weights[3] = 0.5
    results = []
    for function in (CpuLogProbFunction, ChunkedLogProbFunction):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            out = function.apply(h, w, b, targets, 1.0, 256, None, 1.0, ("entropy", "is_top1"))
            (grad,) = torch.autograd.grad((out[0] * weights).sum(), [h])
        results.append((out, grad))
    (ours, our_grad), (trl, trl_grad) = results
    torch.testing.assert_close(ours[0], trl[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours[1], trl[1], rtol=1e-5, atol=1e-5)
    assert torch.equal(ours[4], trl[4])
    if dtype == torch.float32:
        torch.testing.assert_close(our_grad, trl_grad, rtol=1e-4, atol=1e-6)
    else:
        torch.testing.assert_close(our_grad, trl_grad, rtol=1e-2, atol=1e-4)
    assert our_grad[5:9].abs().max() == 0  # the unscored rows


def _counting(monkeypatch, name):
    """Count the calls of a loss_head function (the same function, still called)."""
    calls = []
    original = getattr(loss_head, name)

    def counted(*args):
        calls.append(1)
        return original(*args)

    monkeypatch.setattr(loss_head, name, counted)
    return calls


@pytest.mark.parametrize(("temperature", "softcap", "scale"), [(1.0, None, 1.0), (0.7, 30.0, 0.5)])
def test_sft_loss_takes_the_hidden_gradient_from_the_forward(monkeypatch, temperature, softcap, scale):
    """A frozen head and only the log-probs carrying a gradient (LoRA under TRL's SFT loss): the forward computes
    (p − onehot) · W through the transform's derivatives, and the backward runs no logits GEMM; TRL's gradient."""
    from trl.kernels import ChunkedLogProbFunction

    monkeypatch.setattr(loss_head, "ROW_ELEMENTS", 10000)  # 10 tokens a block: 4 blocks
    monkeypatch.setattr(loss_head, "VOCAB_SLICE_FP32", 300)  # fp32 logits in 4 slices, the last partial
    logits_calls = _counting(monkeypatch, "_block_logits")
    h, w, b, targets = _inputs()
    weights = torch.linspace(-1.0, 0.5, len(targets))
    grads = []
    for function in (CpuLogProbFunction, ChunkedLogProbFunction):
        out = function.apply(h, w, b, targets, temperature, 256, softcap, scale, OUTPUTS)
        grads.append(torch.autograd.grad((out[0] * weights).sum(), [h])[0])
    assert len(logits_calls) == 4  # the forward's blocks only
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)


def test_an_entropy_gradient_or_a_trainable_head_recomputes_and_no_grad_computes_nothing_eagerly(monkeypatch):
    monkeypatch.setattr(loss_head, "ROW_ELEMENTS", 10000)  # 10 tokens a block: 4 blocks, the last partial
    monkeypatch.setattr(loss_head, "VOCAB_SLICE_FP32", 300)  # fp32 logits in 4 slices, the last partial
    logits_calls = _counting(monkeypatch, "_block_logits")
    chain_calls = _counting(monkeypatch, "_chain")
    h, w, b, targets = _inputs()
    _run(CpuLogProbFunction, h, w, b, targets)  # the entropy carries a gradient too: the backward recomputes
    assert (len(logits_calls), len(chain_calls)) == (8, 8)  # (the forward cannot know: its eager work is unused)
    h, w, b, targets = _inputs(weight_grad=True)
    out = CpuLogProbFunction.apply(h, w, b, targets, 1.0, 256, None, 1.0, OUTPUTS)
    torch.autograd.grad(out[0].sum(), [h, w])
    assert (len(logits_calls), len(chain_calls)) == (16, 12)  # a trainable head: nothing eager
    with torch.no_grad():  # evaluation: the outputs only
        CpuLogProbFunction.apply(h, w.detach(), b, targets, 1.0, 256)
    assert (len(logits_calls), len(chain_calls)) == (20, 12)


@pytest.mark.slow
def test_the_lever_swaps_trls_kernel_in_and_back(tiny_recipe):
    from peftsft.training.recipe import load_recipe
    from tests.conftest import decide

    assert decide(load_recipe(tiny_recipe()), "cpu").loss_head.kernel == "peftsft"
    assert decide(load_recipe(tiny_recipe()), "cuda").loss_head.kernel == "trl"
    assert decide(load_recipe(tiny_recipe(), ["training.loss_kernel=trl"]), "cpu").loss_head.kernel == "trl"
    original = trl_utils._ChunkedLogProbFunction
    with patch(LossHead("peftsft", 4096, "supervised"), []):
        assert trl_utils._ChunkedLogProbFunction is CpuLogProbFunction
    assert trl_utils._ChunkedLogProbFunction is original
    with patch(LossHead("trl", 4096, "supervised"), []):
        assert trl_utils._ChunkedLogProbFunction is original


def test_the_lever_sets_trls_slice_and_positions_and_restores_them():
    chunk, use_triton = trl_utils._CHUNKED_LOGPROB_CHUNK_SIZE, trl_utils._use_triton
    fallbacks: list[str] = []
    with patch(LossHead("trl", 1024, "supervised"), fallbacks):
        assert trl_utils._CHUNKED_LOGPROB_CHUNK_SIZE == 1024
        assert trl_utils._use_triton("cpu") is True  # compact scoring: supervised positions only, on any device
    assert (trl_utils._CHUNKED_LOGPROB_CHUNK_SIZE, trl_utils._use_triton) == (chunk, use_triton)
    assert fallbacks == []


def test_the_lever_restores_trl_even_when_training_fails():
    chunk = trl_utils._CHUNKED_LOGPROB_CHUNK_SIZE
    with pytest.raises(RuntimeError), patch(LossHead("trl", 512, "all"), []):
        raise RuntimeError("training broke")
    assert trl_utils._CHUNKED_LOGPROB_CHUNK_SIZE == chunk


def test_a_renamed_trl_attribute_is_a_named_fallback_not_silence(monkeypatch):
    monkeypatch.delattr(trl_utils, "_CHUNKED_LOGPROB_CHUNK_SIZE")
    fallbacks: list[str] = []
    with pytest.warns(UserWarning, match="_CHUNKED_LOGPROB_CHUNK_SIZE"):
        with patch(LossHead("trl", 1024, "all"), fallbacks):
            assert not hasattr(trl_utils, "_CHUNKED_LOGPROB_CHUNK_SIZE")
    assert len(fallbacks) == 1 and "_CHUNKED_LOGPROB_CHUNK_SIZE" in fallbacks[0]
