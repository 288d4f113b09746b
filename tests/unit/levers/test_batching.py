"""Lever batching: padding-free batches where attention skips the other samples, packed rows, length grouping."""

from __future__ import annotations

from peftsft.training.recipe import load_recipe
from tests.conftest import decide as decide_levers


def test_padding_free_is_on_only_where_attention_skips_other_samples(tiny_recipe):
    from peftsft.levers.batching import padding_free

    cpu = decide_levers(load_recipe(tiny_recipe()), "cpu")
    assert cpu.attention == "peftsft_cpu" and cpu.batching.padding_free  # sample by sample
    sdpa = decide_levers(load_recipe(tiny_recipe(), ["model.attention=sdpa"]), "cpu")
    assert sdpa.attention == "sdpa" and not sdpa.batching.padding_free  # a dense block mask
    assert padding_free("auto", "flash_attention_2", packing=False, batch_size=4, position_ids=True)  # per-sample lengths
    assert not padding_free("auto", "flash_attention_2", packing=True, batch_size=4, position_ids=True)  # packed rows: padding-free
    assert not padding_free("auto", "peftsft_cpu", packing=False, batch_size=1, position_ids=True)  # nothing to flatten
    assert decide_levers(load_recipe(tiny_recipe(), ["training.padding_free=true"]), "cpu").batching.padding_free
    assert not padding_free("auto", "peftsft_cpu", packing=False, batch_size=4, position_ids=False)  # prompt learning
