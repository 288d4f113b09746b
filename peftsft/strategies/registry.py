"""Strategy registry: built-ins plus third-party plugins from the `peftsft.strategies` entry-point group."""

from __future__ import annotations

import difflib
from importlib.metadata import entry_points
from typing import Any

from pydantic import BaseModel, ValidationError

from ..errors import UserError
from .base import Strategy
from .lora import LORA

ENTRY_POINT_GROUP = "peftsft.strategies"
_REGISTRY: dict[str, Strategy] = {}
_plugins_loaded = False


def register(strategy: Strategy) -> Strategy:
    _REGISTRY[strategy.name.lower()] = strategy
    return strategy


register(LORA)


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
    return f"[strategy] {key}: {err['msg']} (got {err.get('input')!r})"


def strategy_problems(section: Any, recipe: Any | None) -> list[str]:
    """Everything wrong with a [strategy] section; combinations are checked once the recipe is valid."""
    try:
        strategy = get_strategy(section.name)
    except UserError as exc:
        return [f"{exc.message} — {exc.hint}"]
    problems = _param_problems(strategy, section.params)
    if not problems and recipe is not None:
        problems = strategy.problems(strategy.Config.model_validate(section.params), recipe)
    return problems
