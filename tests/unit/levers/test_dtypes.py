"""Levers base_dtype and adapter_dtype: a bf16 frozen base under bf16 autocast, float32 adapters and states."""

from __future__ import annotations

import pytest

from peftsft.training.recipe import load_recipe
from tests.conftest import decide as decide_levers


@pytest.mark.slow
def test_bf16_base_keeps_adapters_and_optimizer_states_fp32(tiny_recipe):
    import torch

    from peftsft.data import build_datasets
    from peftsft.models import load_model
    from peftsft.strategies import StrategyContext, get_strategy
    from peftsft.strategies.registry import validate_params
    from tests.conftest import sft_trainer

    recipe = load_recipe(tiny_recipe(), ["training.precision=bf16", "training.max_steps=1"])
    model, tokenizer, _ = load_model(recipe.model, recipe.quantization, "cpu")
    train_ds, _, stats = build_datasets(tokenizer, recipe.data, recipe.training.seed)
    strategy = get_strategy("lora")
    model = strategy.apply(model, validate_params(strategy, recipe.strategy.params), StrategyContext())
    levers = decide_levers(recipe, "cpu", stats.max_tokens, model)
    assert levers.base_dtype == "bfloat16"  # auto, where training runs in bf16
    trainer = sft_trainer(recipe, model, tokenizer, train_ds, levers=levers)
    trainer.train()
    dtypes = {p.dtype for p in model.parameters() if p.requires_grad}
    frozen = {p.dtype for p in model.parameters() if not p.requires_grad}
    states = {v.dtype for s in trainer.optimizer.state.values() for k, v in s.items() if k != "step"}
    assert dtypes == {torch.float32} and frozen == {torch.bfloat16} and states == {torch.float32}
    # fp32 training and full fine-tuning leave the base as loaded
    assert decide_levers(load_recipe(tiny_recipe(), ["training.precision=fp32"]), "cpu", 64, model).base_dtype is None
    everything_trains = torch.nn.Linear(2, 2)  # full fine-tuning: no frozen base
    assert decide_levers(load_recipe(tiny_recipe(), ["training.precision=bf16"]), "cpu", 64, everything_trains).base_dtype is None


def test_adapter_input_casts_skipped_only_under_autocast_with_a_bf16_base(tiny_recipe, tiny_model_dir):
    """peft's fp32 round trip of each adapter's input is skipped while training in bf16 on a bf16 base (autocast
    casts it back anyway), kept elsewhere, and restored afterwards."""
    from peft import LoraConfig, get_peft_model
    from peft.tuners.tuners_utils import BaseTunerLayer
    from transformers import AutoModelForCausalLM

    from peftsft.levers import applied as levers_applied

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), LoraConfig(r=2, target_modules="all-linear"))
    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]

    def casting() -> set[bool]:
        return {getattr(m, "cast_input_dtype_enabled", True) for m in layers}

    bf16 = decide_levers(load_recipe(tiny_recipe(), ["training.precision=bf16"]), "cpu", 64, model)
    fp32 = decide_levers(load_recipe(tiny_recipe(), ["training.precision=fp32"]), "cpu", 64, model)
    with levers_applied(bf16, model):
        assert casting() == {False}
    with levers_applied(fp32, model):
        assert casting() == {True}
    assert layers and casting() == {True}
