"""A meta-device skeleton of a recipe's model with its strategy applied: shapes and dtypes, no memory, no weights.

The memory plan counts on it (levers/memory.py), and `peftsft plan` decides the levers on it, as a run decides them
on the real model.
"""

from __future__ import annotations

import warnings

from peftsft.core.config import Recipe
from peftsft.core.errors import UserError


def skeleton(recipe: Recipe, device: str, notes: list[str], model=None):
    """(the model on the `meta` device with the recipe's strategy applied, the strategy's parameters); `model` is
    returned as it is when it is such a skeleton already."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from peftsft.models import materialize, resolve_dtype, resolve_source
    from peftsft.strategies import StrategyContext, get_strategy
    from peftsft.strategies.registry import validate_params

    strategy = get_strategy(recipe.strategy.name)
    params = validate_params(strategy, recipe.strategy.params)
    if model is not None and next(model.parameters()).device.type == "meta":
        return model, params
    location = materialize(resolve_source(recipe.model.source))  # a GGUF is converted once and cached
    remote = recipe.model.trust_remote_code
    try:
        config = AutoConfig.from_pretrained(location, trust_remote_code=remote, revision=recipe.model.revision)
    except OSError as exc:
        raise UserError(f"[model] source: no config.json for {recipe.model.source!r}: {str(exc).splitlines()[0]}",
                        hint="the plan reads the model's config only; give a local model dir, a .gguf or a cached "
                        "Hub id") from None
    if device == "cuda" and not torch.cuda.is_available():
        notes.append("no CUDA device here: planned for one with bf16 support (Ampere or newer)")
        dtype = torch.bfloat16 if recipe.model.dtype == "auto" else getattr(torch, recipe.model.dtype)
    else:
        dtype = resolve_dtype(recipe.model.dtype, device)
    with torch.device("meta"):
        base = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=remote)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # peft asks a deprecated transformers property
            return strategy.apply(base, params, StrategyContext()), params
    except RuntimeError:
        if not hasattr(params, "init"):
            raise
    # PiSSA/OLoRA decompose real weights to start from; the adapter's shapes are LoRA's all the same
    with torch.device("meta"):
        base = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return strategy.apply(base, params.model_copy(update={"init": "default"}), StrategyContext()), params
