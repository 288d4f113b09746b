"""`load_recipe`: the schema's checks (core) plus those that need the building blocks — the strategy's own
parameters, model sources, data files, chat templates, installed packages — every problem reported at once."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from peftsft.core.config import QuantizationSection, Recipe
from peftsft.core.errors import UserError
from peftsft.core.recipe_io import parse_recipe, strategy_section
from peftsft.data.sources import source_problem
from peftsft.data.templates import BUILTINS, dropped_tools_problem
from peftsft.models import resolve_source
from peftsft.strategies.registry import strategy_problems
from peftsft.training.launch import launch_problems
from peftsft.training.trackers import tracker_problems


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read, override and validate a recipe; raise one UserError listing every problem."""
    raw, recipe, problems = parse_recipe(path, overrides)
    strategy = strategy_section(raw)
    if strategy is not None:
        problems += strategy_problems(strategy, recipe)
    if recipe is not None:
        problems += block_problems(recipe)
    if recipe is not None and not problems:  # the sweep's variations, once the recipe itself is sound
        problems += sweep_problems(path, overrides or [], recipe)
    if problems:
        raise UserError(
            f"{path}: the recipe has {len(problems)} problem(s)",
            problems=problems,
            hint="see the commented recipes in recipes/ for every key and its default",
        )
    return recipe


def block_problems(recipe: Recipe) -> list[str]:
    """Checks that need the files on disk, the installed packages or the launch (no model is loaded)."""
    problems = quantization_problems(recipe.quantization) + launch_problems(recipe)
    problems += tracker_problems(recipe.training.report_to)
    try:
        resolve_source(recipe.model.source)
    except UserError as exc:
        problems.append(f"{exc.message} ({'; '.join(exc.problems)}) — {exc.hint}")
    for i, spec in enumerate(recipe.data.datasets):
        if problem := source_problem(spec.path):
            problems.append(f"[data] datasets.{i}.path: {problem}")
    for where, path in (("[data] eval_path", recipe.data.eval_path), ("[data] replay_path", recipe.data.replay_path),
                        ("[eval] general_path", recipe.eval.general_path)):
        if path and (problem := source_problem(path)):
            problems.append(f"{where}: {problem}")
    template = recipe.data.template
    if template != "auto" and template not in BUILTINS and not Path(template).is_file():
        problems.append(
            f"[data] template: {template!r} is neither auto, a built-in ({', '.join(BUILTINS)}) nor a Jinja file"
        )
    elif problem := dropped_tools_problem(recipe.data):
        problems.append(problem)
    return problems


def sweep_problems(path: str | Path, overrides: list[str], recipe: Recipe) -> list[str]:
    """Every end of each [sweep] range, and each listed value, must make a valid recipe (schema and strategy)."""
    import json

    problems = []
    for name, key, value in recipe.sweep.extremes():
        raw, varied, found = parse_recipe(path, [*overrides, f"{key}={json.dumps(value)}"])
        strategy = strategy_section(raw)
        found += strategy_problems(strategy, varied) if strategy is not None else []
        problems += [f"[sweep] {name} = {value!r} gives a recipe that fails: {problem}" for problem in found]
    return problems


def quantization_problems(quant: QuantizationSection) -> list[str]:
    if quant.bits is not None and importlib.util.find_spec("bitsandbytes") is None:
        return [
            f"[quantization] bits = {quant.bits} needs bitsandbytes, which is not installed — "
            "pip install bitsandbytes, or remove [quantization] to train on the unquantized base"
        ]
    return []
