"""Lever mlp_tiling: a long batch's gated MLPs in token tiles — the same loss and gradients, no MLP intermediates
kept per token, on by itself only where checkpointing already is and batches are long."""

from __future__ import annotations

import pytest
import torch

from peftsft.levers import mlp_tiling
from peftsft.levers.lora_kernel import patch as lora_kernel_patch
from tests.unit.levers.saved import saved_bytes

INTERMEDIATE, HIDDEN = 160, 64


def _tiny(dropout: float = 0.0):
    import transformers
    from peft import LoraConfig, get_peft_model

    config = transformers.LlamaConfig(vocab_size=96, hidden_size=HIDDEN, intermediate_size=INTERMEDIATE,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                      max_position_embeddings=256)  # fmt: skip
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config)
    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules="all-linear", init_lora_weights=False)
    return get_peft_model(model, lora).train()


def _step(model, ids, tiled: bool, fused: bool):
    model.zero_grad()
    torch.manual_seed(1)
    with lora_kernel_patch(model, "peftsft" if fused else "peft", []), mlp_tiling.patch(model, tiled):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()  # tiles are recomputed in the backward, under the same patches
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.fixture
def small_tiles(monkeypatch):
    monkeypatch.setattr(mlp_tiling, "TILE_TOKENS", 8)


@pytest.mark.parametrize("fused", [False, True])
def test_tiles_give_the_same_loss_and_gradients(small_tiles, fused):
    model, ids = _tiny(), torch.randint(0, 96, (2, 21))  # 42 tokens: 6 tiles, the last one partial
    plain = _step(model, ids, tiled=False, fused=fused)
    tiled = _step(model, ids, tiled=True, fused=fused)
    torch.testing.assert_close(tiled[0], plain[0], rtol=1e-5, atol=1e-6)
    assert tiled[1].keys() == plain[1].keys()
    for name in plain[1]:
        torch.testing.assert_close(tiled[1][name], plain[1][name], rtol=1e-4, atol=1e-6, msg=name)


def _saved_bytes(model, ids, tiled: bool) -> int:
    return saved_bytes(model, ids, mlp_tiling.patch(model, tiled))


def test_tiles_keep_no_mlp_intermediates_for_the_backward(small_tiles):
    """Untiled, each layer keeps gate, up, act(gate) and the product for every token (fp32); tiled, only each
    tile's input, which is a view of what the layer keeps anyway."""
    model, ids = _tiny(), torch.randint(0, 96, (2, 24))
    saved = _saved_bytes(model, ids, tiled=False) - _saved_bytes(model, ids, tiled=True)
    assert saved >= 2 * 4 * ids.numel() * 4 * INTERMEDIATE  # 2 layers × 4 intermediates × tokens × fp32


def test_short_batches_and_no_grad_run_the_mlp_whole_and_the_classes_are_restored(monkeypatch):
    from transformers.models.llama.modeling_llama import LlamaMLP

    before = LlamaMLP.forward
    model, calls = _tiny(), []
    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", lambda *a, **k: calls.append(1) or a[0](*a[1:]))
    with mlp_tiling.patch(model, True):
        assert LlamaMLP.forward is not before
        model(input_ids=torch.randint(0, 96, (1, 12)), labels=torch.randint(0, 96, (1, 12))).loss.backward()
        with torch.no_grad():
            model(input_ids=torch.randint(0, 96, (2, mlp_tiling.TILE_TOKENS)))
    assert calls == [] and LlamaMLP.forward is before


@pytest.mark.parametrize("overrides, longest, expected", [
    (["training.activation_checkpointing=true", "training.batch_size=1", "data.max_length=8192"], 8192, True),
    (["training.activation_checkpointing=true", "training.batch_size=1", "data.max_length=8192"], 4096, False),
    (["training.activation_checkpointing=false", "training.batch_size=1", "data.max_length=8192"], 8192, False),
    (["training.activation_checkpointing=false", "training.mlp_tiling=true"], 64, True),
    (["training.activation_checkpointing=true", "training.mlp_tiling=false", "data.max_length=8192"], 8192, False),
])  # fmt: skip
def test_auto_tiles_long_checkpointed_batches_only(tiny_recipe, overrides, longest, expected):
    from peftsft.training.recipe import load_recipe
    from tests.conftest import decide

    assert decide(load_recipe(tiny_recipe(), overrides), "cpu", longest).mlp_tiling is expected


def test_the_plan_counts_a_tile_instead_of_every_tokens_intermediates(tiny_recipe):
    from peftsft.training.plan import estimate
    from peftsft.training.recipe import load_recipe

    common = ["training.activation_checkpointing=true", "training.batch_size=1", "data.max_length=16384"]
    whole = estimate(load_recipe(tiny_recipe(), common + ["training.mlp_tiling=false"]), "cpu", longest_sample=16384)
    tiled = estimate(load_recipe(tiny_recipe(), common + ["training.mlp_tiling=true"]), "cpu", longest_sample=16384)
    assert tiled.levers["mlp_tiling"] and not whole.levers["mlp_tiling"]
    tokens, intermediate = 16384, whole.dims.intermediate
    # per token the recomputed layer and its backward (3 × the layer's elements) keep 2 fused MLP tensors less
    per_value = 4 if tiled.precision == "fp32" else 2.4
    expected = (3 * 2 * intermediate * tokens - mlp_tiling.tile_elements(intermediate)) * per_value
    measured = whole.components["activations"] - tiled.components["activations"]
    assert measured == pytest.approx(expected, rel=0.02)
