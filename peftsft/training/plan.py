"""`peftsft plan RECIPE`: peak training memory estimated from the model's config, before any weight is loaded.

The levers decide on a meta-device skeleton of the model exactly as they would on the real one, and the memory plan
sums their terms (peftsft/levers/memory.py); this module only finds the inputs: the device and the longest sample.
"""

from __future__ import annotations

from peftsft.core.config import Recipe
from peftsft.levers import MemoryPlan, decide_levers, memory_plan, skeleton
from peftsft.training import general_check


def estimate(
    recipe: Recipe, device: str | None = None, read_data: bool = True, longest_sample: int | None = None,
    available_bytes: int | None = None,
) -> MemoryPlan:
    """The recipe's peak training memory on `device` (default: the recipe's, resolved on this machine).

    `longest_sample` (tokens), when the caller knows it, saves reading the data; `available_bytes` plans for a
    device with that much memory (e.g. a 24 GB GPU this machine lacks) instead of measuring this one's."""
    from peftsft.models import pick_device

    device = device or pick_device(recipe.training.device)
    notes: list[str] = []
    model, _ = skeleton(recipe, device, notes)
    if longest_sample is None and read_data and not recipe.data.packing:
        longest_sample = longest_training_sample(recipe)
    levers = decide_levers(recipe, device, model, longest_sample, available_bytes)
    plan = memory_plan(recipe, device, model, levers, longest_sample, available_bytes)
    plan.notes[:0] = notes
    if recipe.task == "chat" and recipe.eval.general_check:
        plan.components["general_check"] = general_check.memory_bytes(plan.dims)
    return plan


def longest_training_sample(recipe: Recipe) -> int:
    """Tokens in the longest training sample (evaluation keeps no activations)."""
    from peftsft.data import build_datasets
    from peftsft.data.build import apply_template
    from peftsft.models import load_tokenizer, materialize, resolve_source

    tokenizer = load_tokenizer(materialize(resolve_source(recipe.model.source)), recipe.model)
    apply_template(tokenizer, recipe.data)
    train_only = recipe.data.model_copy(update={"eval_path": None, "eval_fraction": 0.0})
    if recipe.task == "preference":  # the longest prompt + answer of any pair (or KTO answer)
        from peftsft.data.preference_build import build_preference_datasets

        _, _, stats = build_preference_datasets(tokenizer, train_only, recipe.training.seed, recipe.preference.paired)
        return stats.max_tokens
    _, _, stats = build_datasets(tokenizer, train_only, recipe.training.seed)
    return stats.max_tokens
