"""levers/lora_kernel/fused_layers.py through the lora_kernel lever: the same loss and gradients as transformers' own gated
MLP and RMSNorm, fewer bytes kept for the backward, used only where the module's forward is the standard one."""

from __future__ import annotations

import contextlib

import pytest
import torch

from peftsft.levers.lora_kernel import modules
from tests.unit.levers.saved import saved_bytes
from peftsft.levers.lora_kernel import patch_fused_modules as fused_layers, patch_lora_forward as lora_forward
from peftsft.levers.lora_kernel.fused_layers import GatedLoraDownFunction, RMSNormFunction


def _tiny(family: str, dropout: float = 0.0):
    """A 2-layer random `family` causal LM under LoRA r4 on every linear layer, B not zero."""
    import transformers
    from peft import LoraConfig, get_peft_model

    config_class = {"llama": transformers.LlamaConfig, "qwen2": transformers.Qwen2Config,
                    "gemma": transformers.GemmaConfig}[family]  # fmt: skip
    config = config_class(vocab_size=96, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=64)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config)
    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules="all-linear", init_lora_weights=False)
    return get_peft_model(model, lora)


def _loss_and_grads(model, ids, fused: bool, autocast: bool = False, seed: int = 1):
    model.zero_grad()
    fallbacks: list[str] = []
    torch.manual_seed(seed)
    with lora_forward([]), fused_layers(model if fused else None, fallbacks), \
            torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):  # fmt: skip
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads, fallbacks


def _count(monkeypatch, function) -> list:
    calls = []
    original = function.apply
    monkeypatch.setattr(function, "apply", lambda *a: calls.append(1) or original(*a))
    return calls


@pytest.mark.parametrize(("family", "dropout"), [("llama", 0.0), ("qwen2", 0.1), ("gemma", 0.0)])
def test_fp32_loss_and_gradients_equal_transformers(monkeypatch, family, dropout):
    """Llama (SiLU), Qwen2 (with LoRA dropout: the same mask) and Gemma (tanh GELU, its own RMSNorm left alone):
    loss within 1e-6, every LoRA gradient within 1e-4; each layer's MLP and each Llama-style norm fused but the
    first (frozen embeddings: nothing of it needs a gradient)."""
    model = _tiny(family, dropout).train()
    ids = torch.randint(0, 96, (2, 12))
    mlps, norms = _count(monkeypatch, GatedLoraDownFunction), _count(monkeypatch, RMSNormFunction)
    loss_ref, grads_ref, _ = _loss_and_grads(model, ids, fused=False)
    assert mlps == [] and norms == []
    loss, grads, fallbacks = _loss_and_grads(model, ids, fused=True)
    assert len(mlps) == 2 and len(norms) == (0 if family == "gemma" else 4) and fallbacks == []
    torch.testing.assert_close(loss, loss_ref, rtol=1e-6, atol=1e-6)
    assert grads.keys() == grads_ref.keys() and len(grads) == 2 * 7 * 2
    for name, grad in grads_ref.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_bf16_autocast_as_close_to_fp32_as_transformers_own_modules():
    """Under bf16 autocast both paths round, at different places (a gradient summed from cancelling terms can move
    by several % either way, more on some CPU kinds' bf16 kernels than others): ours must miss the fp32 loss and
    gradients by no more than transformers' own modules do."""
    model = _tiny("llama").train()
    ids = torch.randint(0, 96, (2, 12))
    loss_fp32, grads_fp32, _ = _loss_and_grads(model, ids, fused=False)
    loss_ref, grads_ref, _ = _loss_and_grads(model, ids, fused=False, autocast=True)
    loss, grads, _ = _loss_and_grads(model, ids, fused=True, autocast=True)
    assert abs(loss - loss_fp32) <= 1.5 * abs(loss_ref - loss_fp32) + 1e-3

    def error(grad, name):
        return float((grad.float() - grads_fp32[name]).norm() / grads_fp32[name].norm())

    assert grads.keys() == grads_ref.keys() == grads_fp32.keys()
    for name, grad in grads_ref.items():
        assert grads[name].dtype == grad.dtype
        assert error(grads[name], name) <= 1.5 * error(grad, name) + 1e-3, (name, error(grads[name], name),
                                                                           error(grad, name))  # fmt: skip


def test_trainable_norm_weight_and_bf16_input_match_autograd():
    """The norm alone, against transformers' formula: bf16 input, fp32 weight (the promotion a bf16 frozen base
    under autocast gives), a weight that trains."""
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    norm = LlamaRMSNorm(64, eps=1e-5)
    norm.weight.data = torch.randn(64)
    x = torch.randn(3, 7, 64).to(torch.bfloat16)
    results = []
    for fused in (False, True):
        norm.zero_grad()
        xi = x.clone().requires_grad_()
        out = RMSNormFunction.apply(xi, norm.weight, norm.variance_epsilon) if fused else norm(xi)
        (out.float().sin()).sum().backward()
        results.append((out.detach(), xi.grad, norm.weight.grad.clone()))
    for ours, ref in zip(results[1], results[0]):
        assert ours.dtype == ref.dtype
        torch.testing.assert_close(ours, ref, rtol=1e-2, atol=1e-2)


def _saved_bytes(model, ids, fused: bool) -> int:
    patches = contextlib.ExitStack()
    patches.enter_context(lora_forward([]))
    patches.enter_context(fused_layers(model if fused else None, []))
    return saved_bytes(model, ids, patches)


def test_keeps_two_intermediates_per_mlp_less():
    """Per layer act(gate) and the product (2 × tokens × intermediate, fp32); a norm with a frozen weight keeps
    what autograd keeps (its input and 1/rms)."""
    model = _tiny("llama").train()
    ids = torch.randint(0, 96, (2, 12))
    tokens = ids.numel()
    saved = _saved_bytes(model, ids, fused=False) - _saved_bytes(model, ids, fused=True)
    assert saved == 4 * tokens * 2 * (2 * 160)


def test_only_in_grad_mode_and_restored_after(monkeypatch):
    from transformers.models.llama.modeling_llama import LlamaMLP, LlamaRMSNorm

    before = (LlamaMLP.forward, LlamaRMSNorm.forward)
    model = _tiny("llama").eval()
    mlps = _count(monkeypatch, GatedLoraDownFunction)
    with lora_forward([]), fused_layers(model, []):
        assert (LlamaMLP.forward, LlamaRMSNorm.forward) != before
        with torch.no_grad():
            model(input_ids=torch.randint(0, 96, (1, 5)))
    assert mlps == [] and (LlamaMLP.forward, LlamaRMSNorm.forward) == before
    with fused_layers(None, []):
        assert (LlamaMLP.forward, LlamaRMSNorm.forward) == before


def test_survives_train_mode_switch(monkeypatch):
    """transformers' `train()` re-kernelizes its hub-kernel layers (RMSNorm among them), dropping instance forwards:
    the fused layers still run after it, as they do inside the Trainer."""
    model = _tiny("llama").eval()
    model.base_model.model.set_use_kernels(True)  # as from_pretrained does where `kernels` is installed
    norms = _count(monkeypatch, RMSNormFunction)
    with lora_forward([]), fused_layers(model, []):
        model.train()
        model(input_ids=torch.randint(0, 96, (1, 5)), labels=torch.randint(0, 96, (1, 5))).loss.backward()
    assert len(norms) == 4


def test_non_standard_mlp_forward_is_left_alone_and_recorded(monkeypatch):
    """A gated MLP whose forward differs from transformers' standard one (here: an extra scale) keeps its own."""
    from transformers.models.llama import modeling_llama

    def scaled(self, x):
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x)) * 0.5

    monkeypatch.setattr(modeling_llama.LlamaMLP, "forward", scaled)
    model = _tiny("llama").train()
    mlps = _count(monkeypatch, GatedLoraDownFunction)
    _, _, fallbacks = _loss_and_grads(model, torch.randint(0, 96, (2, 8)), fused=True)
    assert mlps == [] and len(fallbacks) == 1 and "listed class with its own forward" in fallbacks[0]


# transformers' standard gated MLP forward and Llama-style RMSNorm forward, statement by statement
MLP_FORWARD = ("down_proj = self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))", "return down_proj")
RMSNORM_FORWARD = (
    "input_dtype = hidden_states.dtype",
    "hidden_states = hidden_states.to(torch.float32)",
    "variance = hidden_states.pow(2).mean(-1, keepdim=True)",
    "hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)",
    "return self.weight * hidden_states.to(input_dtype)",
)


def _statements(cls) -> tuple[str, ...]:
    import inspect

    lines = inspect.getsource(cls.forward).splitlines()
    start = next(i for i, line in enumerate(lines) if line.rstrip().endswith(":")) + 1
    return tuple(line.strip() for line in lines[start:] if line.strip() and not line.strip().startswith("#"))


@pytest.mark.parametrize("name", sorted(modules.GATED_MLPS | modules.RMSNORMS))
def test_every_listed_class_computes_what_the_fused_function_does(name):
    """The guard for a transformers upgrade: a listed class whose forward changed fails here (this test reads the
    source; the lever itself selects by name, never by source text)."""
    import importlib

    module, _, class_name = name.rpartition(".")
    cls = getattr(importlib.import_module(module), class_name)
    expected = MLP_FORWARD if name in modules.GATED_MLPS else RMSNORM_FORWARD
    assert _statements(cls) == expected
