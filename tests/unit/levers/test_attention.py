"""peftsft's CPU training attention: the same losses and gradients as SDPA, chosen by "auto" only where it should."""

from __future__ import annotations

import pytest
import torch

from peftsft.levers.attention import NAME, patch as applied
from peftsft.levers.attention.kernel import SHORT_KEYS


def _batch(lengths: list[int], vocab: int, pad_left: bool) -> dict:
    """Rows of different lengths padded to the longest, labels on the real tokens only."""
    torch.manual_seed(1)
    longest = max(lengths)
    ids = torch.randint(5, vocab, (len(lengths), longest))
    mask = torch.zeros(len(lengths), longest, dtype=torch.long)
    for row, n in enumerate(lengths):
        real = slice(longest - n, longest) if pad_left else slice(0, n)
        mask[row, real] = 1
    labels = ids.masked_fill(mask == 0, -100)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _loss_and_grads(model, batch: dict) -> tuple[float, list[torch.Tensor]]:
    model.zero_grad()
    loss = model(**batch).loss
    loss.backward()
    return loss.item(), [p.grad.clone() for p in model.parameters() if p.grad is not None]


@pytest.mark.parametrize("pad_left", [False, True])
@pytest.mark.parametrize("lengths", [[40, 40, 40], [7, 40, 23], [SHORT_KEYS + 9, 50]])  # no padding; padded; SDPA
def test_training_loss_and_gradients_equal_sdpa(tiny_model_dir, lengths, pad_left):
    """fp32, a GQA model (4 heads over 2 KV heads): every gradient within 1e-5 of SDPA's, padding and causality kept."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa")
    model.train()
    batch = _batch(lengths, model.config.vocab_size, pad_left)
    loss_sdpa, grads_sdpa = _loss_and_grads(model, batch)
    with applied(model, NAME):
        assert model.config._attn_implementation == NAME
        loss_ours, grads_ours = _loss_and_grads(model, batch)
    assert model.config._attn_implementation == "sdpa"  # restored
    assert loss_ours == pytest.approx(loss_sdpa, rel=1e-5)
    for ours, sdpa in zip(grads_ours, grads_sdpa, strict=True):
        torch.testing.assert_close(ours, sdpa, rtol=1e-4, atol=1e-5)


def test_under_bf16_autocast_it_is_as_close_to_fp32_as_sdpa(tiny_model_dir):
    """bf16 autocast (the AVX-512-BF16 path): our loss and gradients miss the fp32 ones by no more than SDPA's do
    under the same autocast (bf16 softmax with fp32 accumulation, GQA, padding)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa")
    model.train()
    batch = _batch([7, 40, 23], model.config.vocab_size, pad_left=True)
    loss_fp32, grads_fp32 = _loss_and_grads(model, batch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss_sdpa, grads_sdpa = _loss_and_grads(model, batch)
        with applied(model, NAME):
            loss_ours, grads_ours = _loss_and_grads(model, batch)

    def error(grads):
        return max(float((g - ref).norm() / ref.norm()) for g, ref in zip(grads, grads_fp32, strict=True))

    assert loss_ours != loss_fp32  # autocast did compute in bf16
    assert abs(loss_ours - loss_fp32) <= 2 * abs(loss_sdpa - loss_fp32) + 1e-3 * abs(loss_fp32)
    assert error(grads_ours) <= 1.5 * error(grads_sdpa) + 1e-3, (error(grads_ours), error(grads_sdpa))


def test_the_matmul_path_runs_for_short_training_batches_only(tiny_model_dir, monkeypatch):
    """Short keys under autograd: the matmul path; generation (no_grad) and long keys: SDPA itself."""
    import transformers.integrations.sdpa_attention as sdpa_module
    from transformers import AutoModelForCausalLM

    calls = []
    original = sdpa_module.sdpa_attention_forward
    monkeypatch.setattr(sdpa_module, "sdpa_attention_forward", lambda *a, **k: calls.append(1) or original(*a, **k))
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa")
    layers = model.config.num_hidden_layers
    with applied(model, NAME):
        model(**_batch([30, 20], model.config.vocab_size, False))
        assert calls == []
        model(**_batch([SHORT_KEYS + 1], model.config.vocab_size, False))
        assert len(calls) == layers
        with torch.no_grad():
            model(**_batch([30], model.config.vocab_size, False))
        assert len(calls) == 2 * layers


def test_auto_picks_it_on_the_cpu_over_sdpa_only(tiny_recipe):
    from types import SimpleNamespace

    from peftsft.levers import Situation
    from peftsft.levers.attention import decide
    from peftsft.training.recipe import load_recipe

    def attention_kernel(setting: str, device: str, current: str) -> str:
        model = SimpleNamespace(config=SimpleNamespace(_attn_implementation=current))
        return decide(Situation(load_recipe(tiny_recipe(), [f"model.attention={setting}"]), device, model))

    assert attention_kernel("auto", "cpu", "sdpa") == NAME
    assert attention_kernel("sdpa", "cpu", "sdpa") == "sdpa"  # the recipe said sdpa: exactly that
    assert attention_kernel("eager", "cpu", "eager") == "eager"
    assert attention_kernel("auto", "cuda", "sdpa") == "sdpa"
    assert attention_kernel("auto", "cpu", "flash_attention_2") == "flash_attention_2"


@pytest.mark.slow
def test_a_run_records_the_attention_it_trained_with(tiny_recipe):
    from tests.conftest import decide as decide_levers
    from peftsft.training.recipe import load_recipe

    assert decide_levers(load_recipe(tiny_recipe())).attention == NAME
    assert decide_levers(load_recipe(tiny_recipe(), ["model.attention=sdpa"])).attention == "sdpa"
    assert NAME in decide_levers(load_recipe(tiny_recipe())).describe()


@pytest.mark.parametrize("mask", ["causal", "additive", "none"])
@pytest.mark.parametrize("autocast", [False, True])
def test_recomputed_probabilities_give_autograds_gradients(mask, autocast):
    """RecomputedAttention against autograd through the same probabilities (kept): equal outputs and q/k/v
    gradients (fp32 1e-5; bf16 autocast within its rounding), gradients in the inputs' dtypes."""
    from peftsft.levers.attention.kernel import RecomputedAttention, _mask_terms, _probabilities

    torch.manual_seed(0)
    shape = (2, 3, 2, 9, 9)  # batch, kv heads, groups, q, k
    q, k, v = (torch.randn(6, n, 16, requires_grad=True) for n in (18, 9, 9))
    bias = empty = None
    if mask == "causal":
        bias, empty = _mask_terms(torch.ones(9, 9, dtype=torch.bool).tril(), torch.bfloat16 if autocast else q.dtype)
    elif mask == "additive":
        bias = torch.randn(2, 1, 1, 9, 9)
    results = []
    for recompute in (False, True):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            if recompute:
                out = RecomputedAttention.apply(q, k, v, bias, empty, 0.25, shape, q.dtype)
            else:
                out = torch.bmm(_probabilities(q, k, bias, empty, 0.25, shape, q.dtype).view(6, 18, 9), v)
        grads = torch.autograd.grad((out.float() * torch.linspace(-1, 1, 16)).sum(), (q, k, v))
        results.append((out.detach(), *grads))
    tolerance = {"rtol": 2e-2, "atol": 2e-2} if autocast else {"rtol": 1e-5, "atol": 1e-6}
    for ours, ref in zip(results[1], results[0]):
        assert ours.dtype == ref.dtype
        torch.testing.assert_close(ours, ref, **tolerance)


def test_training_keeps_no_probabilities(tiny_model_dir):
    """No (query × key)-sized tensor is kept for the backward: the probabilities are computed again in it."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa").train()
    batch = _batch([30, 30], model.config.vocab_size, False)
    kept = []
    with applied(model, NAME), torch.autograd.graph.saved_tensors_hooks(lambda t: kept.append(t.shape) or t,
                                                                        lambda t: t):  # fmt: skip
        model(**batch).loss.backward()
    assert kept and not [shape for shape in kept if len(shape) >= 2 and tuple(shape[-2:]) == (30, 30)
                         and shape.numel() > 30 * 30]  # fmt: skip


def _flattened(lengths: list[int], vocab: int) -> dict:
    """A padding-free batch: the samples as one row, position ids restarting at each, no label across samples."""
    torch.manual_seed(2)
    ids = torch.randint(5, vocab, (1, sum(lengths)))
    positions = torch.cat([torch.arange(n) for n in lengths])[None]
    labels = ids.clone()
    labels[0, positions[0] == 0] = -100
    return {"input_ids": ids, "position_ids": positions, "labels": labels, "use_cache": False}  # no cache: packed


def test_a_flattened_batch_attends_sample_by_sample_as_sdpa_does(tiny_model_dir, monkeypatch):
    """Padding-free batches: each sample's block of the mask on its own (one of them long enough for SDPA), the
    same loss and gradients as SDPA over the whole block-diagonal mask."""
    from transformers import AutoModelForCausalLM

    from peftsft.levers.attention import kernel as attention

    lengths = [40, SHORT_KEYS + 9, 7, 23]
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa")
    model.train()
    batch = _flattened(lengths, model.config.vocab_size)
    loss_sdpa, grads_sdpa = _loss_and_grads(model, batch)
    found = []
    original = attention._samples
    monkeypatch.setattr(attention, "_samples", lambda *a: found.append(original(*a)) or found[-1])
    with applied(model, NAME):
        loss_ours, grads_ours = _loss_and_grads(model, batch)
    starts = [0, 40, 40 + SHORT_KEYS + 9, 40 + SHORT_KEYS + 16]
    assert found[0] == list(zip(starts, starts[1:] + [sum(lengths)]))
    assert loss_ours == pytest.approx(loss_sdpa, rel=1e-5)
    for ours, sdpa in zip(grads_ours, grads_sdpa, strict=True):
        torch.testing.assert_close(ours, sdpa, rtol=1e-4, atol=1e-5)


def test_each_forward_derives_its_mask_once_not_per_layer(tiny_model_dir, monkeypatch):
    """The samples of a flattened batch and each sample's mask bias are derived from the forward's mask once and
    shared by every layer, forward and backward (2 layers here: counted calls, as many as samples)."""
    from transformers import AutoModelForCausalLM

    from peftsft.levers.attention import kernel as attention

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa").train()
    assert model.config.num_hidden_layers == 2
    calls = {"_samples": 0, "_mask_terms": 0}

    def counted(name, original):
        return lambda *args: calls.update({name: calls[name] + 1}) or original(*args)

    for name in calls:
        monkeypatch.setattr(attention, name, counted(name, getattr(attention, name)))
    with applied(model, NAME):
        for forward in (1, 2):  # a new mask each forward: derived again
            _loss_and_grads(model, _flattened([40, 7, 23], model.config.vocab_size))
            assert calls == {"_samples": forward, "_mask_terms": 3 * forward}


def test_derived_values_follow_the_mask_view_and_its_writes():
    from peftsft.levers.attention.kernel import _derived

    mask = torch.ones(1, 1, 6, 6, dtype=torch.bool).tril()
    made = []

    def make(tag):
        return lambda: made.append(tag) or len(made)

    assert _derived(mask, ("k",), make("whole")) == _derived(mask, ("k",), make("again")) == 1
    assert _derived(mask[..., 2:4, 2:4], ("k",), make("view")) == 2  # another view: its own entry
    assert _derived(mask[..., 2:4, 2:4], ("k",), make("same view")) == 2
    assert _derived(mask, ("other key",), make("other")) == 3
    mask[0, 0, 0, 5] = True  # written to: everything derived from it is stale
    assert _derived(mask, ("k",), make("after write")) == 4
    assert _derived(None, ("k",), make("no mask")) == _derived(None, ("k",), make("no mask")) - 1 == 5


def test_the_same_mask_with_other_position_ids_is_checked_again():
    """The samples are derived per mask and position ids: position ids that disagree with a mask seen before still
    stop training."""
    from peftsft.core.errors import UserError
    from peftsft.levers.attention.kernel import cpu_training_attention

    keep = torch.zeros(10, 10, dtype=torch.bool)
    for s, e in [(0, 3), (3, 8), (8, 10)]:
        keep[s:e, s:e] = torch.ones(e - s, e - s).tril().bool()
    module = torch.nn.Module().train()
    q, k, v = torch.randn(1, 4, 10, 8), torch.randn(1, 2, 10, 8), torch.randn(1, 2, 10, 8)
    fits = torch.tensor([[0, 1, 2, 0, 1, 2, 3, 4, 0, 1]])
    cpu_training_attention(module, q, k, v, keep[None, None], sdpa=None, position_ids=fits)
    other = torch.tensor([[0, 1, 2, 3, 4] * 2])
    with pytest.raises(UserError, match="see each other"):
        cpu_training_attention(module, q, k, v, keep[None, None], sdpa=None, position_ids=other)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_masked_keys_get_exactly_zero_probability(dtype):
    """However large a masked key's score, its probability is 0 and the allowed keys' sum to 1; a row that may
    attend to no key is zeros (SDPA's output for it)."""
    from peftsft.levers.attention.kernel import _mask_terms, _probabilities

    keep = torch.ones(4, 4, dtype=torch.bool).tril()
    keep[0] = False  # the first query sees no key (left padding)
    bias, empty = _mask_terms(keep[None, None, None], dtype)
    q = torch.full((1, 4, 2), 30.0, dtype=dtype)
    k = torch.tensor([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0], [40.0, 40.0]], dtype=dtype)[None]  # the last: huge scores
    probs = _probabilities(q, k, bias, empty, 1.0, (1, 1, 1, 4, 4), dtype)[0, 0, 0]
    assert probs.dtype == dtype
    assert probs[~keep].eq(0).all() and probs[0].eq(0).all()
    torch.testing.assert_close(probs[1:].float().sum(-1), torch.ones(3), rtol=0, atol=1e-2)
    assert probs[2, 2] > 0.99 and probs[3, 3] > 0.99  # the largest allowed score wins


def test_only_masks_that_keep_their_blocks_apart_are_split():
    from peftsft.levers.attention.kernel import _samples

    def block_causal(lengths):
        n = sum(lengths)
        keep = torch.zeros(n, n, dtype=torch.bool)
        start = 0
        for length in lengths:
            keep[start : start + length, start : start + length] = torch.ones(length, length).tril().bool()
            start += length
        return keep[None, None]

    mask = block_causal([3, 5, 2])
    assert _samples(mask, 10, 10) == [(0, 3), (3, 8), (8, 10)]
    leaky = mask.clone()
    leaky[0, 0, 6, 1] = True  # a query of the second sample sees a key of the first
    assert _samples(leaky, 10, 10) is None
    assert _samples(block_causal([10]), 10, 10) is None  # one sample: nothing to split
    assert _samples(mask.expand(2, 1, 10, 10), 10, 10) is None  # a padded batch of rows
    assert _samples(torch.zeros(1, 1, 10, 10), 10, 10) is None  # an additive mask


def test_restarting_position_ids_need_a_mask_that_keeps_their_samples_apart():
    """While training, the position ids say where samples start; a mask that would let them see each other (a
    model that builds no per-sample mask) stops training with a clear error instead of leaking across samples."""
    from peftsft.core.errors import UserError
    from peftsft.levers.attention.kernel import _samples

    positions = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3, 4]])
    block = torch.zeros(10, 10, dtype=torch.bool)
    for s, e in [(0, 3), (3, 5), (5, 10)]:
        block[s:e, s:e] = torch.ones(e - s, e - s).tril().bool()
    assert _samples(block[None, None], 10, 10, positions) == [(0, 3), (3, 5), (5, 10)]
    causal = torch.ones(10, 10).tril().bool()[None, None]
    assert _samples(causal, 10, 10) is None  # one sample by the mask alone
    for leaky in (causal, None):
        with pytest.raises(UserError, match="see each other"):
            _samples(leaky, 10, 10, positions, "LlamaAttention")
    assert _samples(causal, 10, 10, torch.arange(10)[None]) is None  # one sample
