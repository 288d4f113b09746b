"""Strategy registry: built-ins plus third-party plugins from the `peftsft.strategies` entry-point group."""

from __future__ import annotations

import difflib
from importlib.metadata import entry_points
from typing import Any

import torch
from pydantic import BaseModel, ValidationError

from peftsft.core.errors import UserError
from peftsft.strategies.adapters import ADAPTERS
from peftsft.strategies.base import Strategy
from peftsft.strategies.baselines import BASELINES
from peftsft.strategies.generic import PEFT
from peftsft.strategies.lora import LORA_FAMILY
from peftsft.strategies.prompts import PROMPTS

ENTRY_POINT_GROUP = "peftsft.strategies"
_REGISTRY: dict[str, Strategy] = {}
_plugins_loaded = False


def register(strategy: Strategy) -> Strategy:
    _REGISTRY[strategy.name.lower()] = strategy
    return strategy


for _builtin in (*LORA_FAMILY, *ADAPTERS, *PROMPTS, *BASELINES, PEFT):
    register(_builtin)


def _load_plugins() -> None:
    """Each entry point names a Strategy object (or a zero-argument callable returning one)."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        obj = ep.load()
        register(obj() if callable(obj) and not isinstance(obj, Strategy) else obj)


def list_strategies() -> list[Strategy]:
    _load_plugins()
    return [_REGISTRY[name] for name in sorted(_REGISTRY)]


def get_strategy(name: str) -> Strategy:
    _load_plugins()
    try:
        return _REGISTRY[name.lower()]
    except KeyError:
        close = difflib.get_close_matches(name.lower(), list(_REGISTRY), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise UserError(
            f"[strategy] name: unknown strategy {name!r}",
            hint=f"{hint}`python -m peftsft strategies` lists them all",
        ) from None


def validate_params(strategy: Strategy, params: dict[str, Any]) -> BaseModel:
    """The strategy's own parameters, validated; raises UserError listing every problem."""
    problems = _param_problems(strategy, params)
    if problems:
        raise UserError(f"[strategy] {strategy.name}: invalid parameters", problems=problems)
    return strategy.Config.model_validate(params)


def _param_problems(strategy: Strategy, params: dict[str, Any]) -> list[str]:
    try:
        strategy.Config.model_validate(params)
        return []
    except ValidationError as exc:
        return [_describe(strategy, err) for err in exc.errors()]


def _describe(strategy: Strategy, err: dict[str, Any]) -> str:
    key = ".".join(str(p) for p in err["loc"])
    if err["type"] == "extra_forbidden":
        fields = list(strategy.Config.model_fields)
        close = difflib.get_close_matches(str(err["loc"][-1]), fields, n=1, cutoff=0.6)
        tail = f" — did you mean {close[0]!r}?" if close else f" (valid: {', '.join(fields)})"
        return f"[strategy] {key}: unknown parameter for {strategy.name!r}{tail}"
    if not key:  # a check across parameters
        return f"[strategy] {strategy.name}: {err['msg'].removeprefix('Value error, ')}"
    return f"[strategy] {key}: {err['msg']} (got {err.get('input')!r})"


def strategy_problems(section: Any, recipe: Any | None) -> list[str]:
    """Everything wrong with a [strategy] section; combinations are checked once the recipe is valid."""
    try:
        strategy = get_strategy(section.name)
    except UserError as exc:
        return [f"{exc.message} — {exc.hint}"]
    problems = _param_problems(strategy, section.params)
    if problems or recipe is None:
        return problems
    if recipe.quantization.bits is not None and not strategy.kbit:
        return [_kbit_problem(strategy, recipe.quantization.bits)]
    return strategy.problems(strategy.Config.model_validate(section.params), recipe)


def _kbit_problem(strategy: Strategy, bits: int) -> str:
    capable = ", ".join(s.name for s in list_strategies() if s.kbit)
    return (
        f"[strategy] {strategy.name!r} cannot train on a {bits}-bit quantized base ([quantization] bits = {bits}): "
        "it needs float base weights (it trains or rewrites them, or peft has no bitsandbytes layers for it) — "
        f"remove [quantization], or use one of: {capable}"
    )


# ---------------------------------------------------------------------------------------------- after training


def strategy_optimizer(recipe: Any, model: torch.nn.Module, args: Any) -> torch.optim.Optimizer | None:
    """The optimizer a strategy builds itself (LoRA+), honouring [training] optim; None: the trainer's default."""
    strategy = get_strategy(recipe.strategy.name)
    if strategy.make_optimizer is None:
        return None
    from transformers import Trainer

    optimizer_cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
    params = validate_params(strategy, recipe.strategy.params)
    return strategy.make_optimizer(model, params, optimizer_cls, {**kwargs, "weight_decay": args.weight_decay})


def merge_model(strategy_name: str, model: torch.nn.Module) -> torch.nn.Module:
    """Fold the trained adapter into plain weights; UserError (why, and what to do) if the strategy cannot."""
    strategy = get_strategy(strategy_name)
    if not strategy.can_merge:
        raise UserError(
            f"strategy {strategy.name!r} cannot be merged into the base model: "
            f"{strategy.cannot_merge_reason or 'it adds nothing that folds into the base weights'}",
            hint="export the adapter instead (export --format adapter) and load it on the base model",
        )
    merge = strategy.merge or (lambda m: m.merge_and_unload())
    return merge(model)
