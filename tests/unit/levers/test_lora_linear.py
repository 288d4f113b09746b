"""peftsft's fused LoRA linear against peft's own forward: the same outputs and gradients, used only where eligible."""

from __future__ import annotations

import contextlib

import pytest
import torch

from peftsft.levers.lora_kernel import patch_lora_forward as lora_forward
from peftsft.levers.lora_kernel.lora_linear import LoraLinearFunction


def _lora_model(dropout: float = 0.0, bias: bool = True, use_dora: bool = False, dtype=torch.float32):
    """Two stacked linear layers (one with a bias) under a LoRA r4 whose B is not zero, so the adapter counts."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Linear(64, 96, bias=bias), torch.nn.SiLU(), torch.nn.Linear(96, 64))
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules=["0", "2"], init_lora_weights=False,
                        use_dora=use_dora)  # fmt: skip
    model = get_peft_model(base.to(dtype), config)
    for name, param in model.named_parameters():
        if "lora_" in name:
            param.data = param.data.float()
    return model


def _grads(model, x: torch.Tensor, fused: bool, autocast: bool = False, seed: int = 1):
    """Output, and gradients of every trainable weight and of the input, with peft's or the fused forward."""
    model.zero_grad()
    x = x.detach().clone().requires_grad_()
    torch.manual_seed(seed)  # dropout draws the same mask on both paths
    with lora_forward([]) if fused else contextlib.nullcontext(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = model(x)
        (out.float() ** 2).mean().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.detach(), {**grads, "input": x.grad.clone()}


def _count_fused(monkeypatch) -> list:
    calls = []
    original = LoraLinearFunction.apply
    monkeypatch.setattr(LoraLinearFunction, "apply", lambda *a: calls.append(1) or original(*a))
    return calls


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_fp32_outputs_and_gradients_equal_pefts(monkeypatch, dropout):
    """fp32: output, LoRA A/B, a trainable bias and the input's gradient within 1e-5; dropout draws peft's mask."""
    model = _lora_model(dropout)
    model.base_model.model[0].base_layer.bias.requires_grad_(True)
    x = torch.randn(3, 5, 64)
    calls = _count_fused(monkeypatch)
    out_peft, grads_peft = _grads(model, x, fused=False)
    assert calls == []
    out_ours, grads_ours = _grads(model, x, fused=True)
    assert len(calls) == 2  # both layers took the fused path
    torch.testing.assert_close(out_ours, out_peft, rtol=1e-5, atol=1e-6)
    assert grads_ours.keys() == grads_peft.keys() and len(grads_ours) == 6  # 2 × (A, B), a bias, the input
    for name, grad in grads_peft.items():
        torch.testing.assert_close(grads_ours[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_under_bf16_autocast_it_is_as_close_to_fp32_as_peft():
    """bf16 base and autocast (the AVX-512-BF16 path): our gradients miss the fp32 ones by no more than peft's do."""
    x = torch.randn(4, 9, 64)
    model = _lora_model()
    reference_out, reference = _grads(model, x, fused=False)
    model = _lora_model(dtype=torch.bfloat16)
    out_peft, peft = _grads(model, x.bfloat16(), fused=False, autocast=True)
    out_ours, ours = _grads(model, x.bfloat16(), fused=True, autocast=True)
    assert out_ours.dtype == out_peft.dtype == torch.bfloat16

    def error(grads, name):
        return float((grads[name].float() - reference[name]).norm() / reference[name].norm())

    for name in reference:
        assert grads_dtype_ok(ours[name], peft[name])
        assert error(ours, name) <= 1.5 * error(peft, name) + 1e-3, (name, error(ours, name), error(peft, name))
    out_error = float((out_ours.float() - reference_out).norm() / reference_out.norm())
    assert out_error <= 1.5 * float((out_peft.float() - reference_out).norm() / reference_out.norm()) + 1e-3


def grads_dtype_ok(ours: torch.Tensor, theirs: torch.Tensor) -> bool:
    return ours.dtype == theirs.dtype and ours.shape == theirs.shape


def test_ineligible_layers_and_calls_keep_pefts_forward(monkeypatch):
    """DoRA (a LoRA variant), no autograd (generation, evaluation): peft's own forward runs, and it is restored."""
    from peft.tuners.lora import layer as lora_layer

    original = lora_layer.Linear.forward
    calls = _count_fused(monkeypatch)
    _grads(_lora_model(use_dora=True), torch.randn(2, 3, 64), fused=True)
    model = _lora_model()
    with lora_forward([]), torch.no_grad():
        model(torch.randn(2, 3, 64))
    assert calls == []
    assert lora_layer.Linear.forward is original


def test_auto_is_the_fused_kernel_on_the_cpu_only(tiny_recipe):
    from peftsft.training.recipe import load_recipe
    from tests.conftest import decide as decide_levers

    assert decide_levers(load_recipe(tiny_recipe()), "cpu").lora_kernel == "peftsft"
    assert decide_levers(load_recipe(tiny_recipe()), "cuda").lora_kernel == "peft"
    assert decide_levers(load_recipe(tiny_recipe(), ["training.lora_kernel=peft"]), "cpu").lora_kernel == "peft"
