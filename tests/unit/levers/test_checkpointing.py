"""Lever activation_checkpointing: "auto" asks the memory plan, sized by the longest sample, against the memory
available."""

from __future__ import annotations

from peftsft.training.recipe import load_recipe
from tests.conftest import decide as decide_levers


def test_auto_checkpointing_is_sized_by_the_longest_sample_not_max_length(tiny_recipe, monkeypatch):
    """With memory for the longest sample's batches but not for max_length's, "auto" leaves checkpointing off; a
    packed run fills every row to max_length, so there the longest sample changes nothing."""
    import peftsft.levers.checkpointing as plan_module
    from peftsft.training.plan import estimate

    recipe = load_recipe(tiny_recipe(), ["data.max_length=512"])  # activation_checkpointing = "auto" by default
    short, full = (estimate(recipe, "cpu", read_data=False, longest_sample=n).training_peak_bytes for n in (48, 512))
    assert short < full
    between = int((short + full) / 2 / plan_module.THRESHOLD)  # short fits under 80%, full does not

    def decided(longest: int | None, *overrides: str, available: int = between) -> bool:
        monkeypatch.setattr(plan_module, "memory_available", lambda device: available)
        levers = decide_levers(load_recipe(tiny_recipe(), ["data.max_length=512", *overrides]), "cpu", longest)
        assert levers.checkpointing_reason.startswith("auto: ")
        return levers.activation_checkpointing

    assert not decided(48)  # the longest sample fits
    assert decided(None)  # no sample length known: max_length's batches, which do not
    assert decided(512) and decided(4096)
    fits_full = int(full / plan_module.THRESHOLD) + 1
    assert not decided(4096, available=fits_full)  # a longer sample than max_length is cut to it
    assert decided(48, "data.packing=true")  # packed rows are max_length long whatever the samples are
    assert not decided(48, "data.packing=true", available=2 * full) and decided(48, available=short // 2)
