"""Load what `serve` answers with: one base model, every run's adapter on it, each run's own tokenizer and stops.

All runs must share one base (same `[model]` and `[quantization]`): it is loaded once, and each run's adapter is
added to it with peft's multi-adapter API, so N runs cost one base plus N small adapters. The model id `base` is
the base with every adapter switched off, answering with the base's own tokenizer and chat template.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peftsft.artifacts.export.template import stop_tokens
from peftsft.core.errors import UserError
from peftsft.core.rundir import RunDir

BASE = "base"


@dataclass(frozen=True)
class ServedModel:
    """One model id: the adapter to switch on (None: the base alone), its tokenizer, template and stops."""

    id: str
    adapter: str | None  # peft's name for it (run names may hold characters peft's module keys cannot)
    tokenizer: Any
    stop_ids: tuple[int, ...]
    system_prompt: str | None
    source: str  # the run dir, or the base model's source


@dataclass(frozen=True)
class _Run:
    id: str  # the model id: the run dir's folder name
    dir: RunDir
    recipe: Any

    @property
    def path(self) -> Path:
        return self.dir.path


def load_models(run_dirs: list[str | Path], device: str) -> tuple[Any, dict[str, ServedModel]]:
    """(the peft model holding every adapter on one base, {model id: ServedModel}) for the given run dirs."""
    from peftsft.models import load_model, load_tokenizer

    runs = [_read_run(Path(d)) for d in run_dirs]
    _check_ids(runs)
    _check_one_base(runs)
    _check_one_family(runs)
    first = runs[0].recipe
    base, base_tokenizer, _ = load_model(first.model, first.quantization, device)
    model = _add_adapters(base, runs)
    served = {BASE: _served(BASE, None, base_tokenizer, None, first.model.source)}
    for index, run in enumerate(runs):
        with run.dir.reading_adapter():
            tokenizer = load_tokenizer(str(run.dir.adapter_dir), run.recipe.model)
        system = getattr(run.recipe.data, "system_prompt", None)
        served[run.id] = _served(run.id, _adapter_name(index), tokenizer, system, str(run.path))
    return model.eval(), served


def _served(model_id, adapter, tokenizer, system, source) -> ServedModel:
    stops = tuple(token_id for token_id, _ in stop_tokens(tokenizer))
    return ServedModel(model_id, adapter, tokenizer, stops, system, source)


def _adapter_name(index: int) -> str:
    return f"run{index}"


def _read_run(path: Path) -> _Run:
    run = RunDir(path)
    if not RunDir.holds_run(path):
        raise UserError(f"{path}: not a run dir (no {RunDir.RECIPE})", hint="serve takes run dirs made by `peftsft run`")
    recipe = run.recipe()
    if recipe.task not in ("chat", "preference"):
        raise UserError(f"{path} is a {recipe.task} run: it does not answer chat messages",
                        hint="serve chat runs only")
    if run.adapter_kind() == "model":
        raise UserError(f"{path}: the run trained every weight, so there is no adapter to put on a shared base",
                        hint="serve runs of adapter strategies (lora, dora, ia3, ...)")
    run.adapter_config()  # a damaged adapter is refused before the base is loaded
    return _Run(path.resolve().name, run, recipe)


def _check_ids(runs: list[_Run]) -> None:
    ids = [run.id for run in runs]
    if BASE in ids:
        raise UserError(f"a run dir is named {BASE!r}, which is the id of the base model",
                        hint="rename the run dir (its folder name is its model id)")
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise UserError(f"two run dirs have the same name {duplicates[0]!r} (a run's folder name is its model id)",
                        hint="rename one of the run dirs")


def _base_of(recipe) -> dict:
    """What makes two runs' bases the same model in memory (base_id and adapter dtype are only labels/adapters)."""
    return {"model": recipe.model.model_dump(exclude={"base_id"}),
            "quantization": recipe.quantization.model_dump(exclude={"adapter_dtype"})}


def _check_one_base(runs: list[_Run]) -> None:
    first = _base_of(runs[0].recipe)
    for run in runs[1:]:
        if _base_of(run.recipe) != first:
            raise UserError(
                f"{run.path} was trained on another base than {runs[0].path}: "
                f"[model] source {run.recipe.model.source!r} vs {runs[0].recipe.model.source!r}"
                " (or its dtype / [quantization] differs)",
                hint="serve runs of one base together; start one server per base",
            )


def _check_one_family(runs: list[_Run]) -> None:
    """peft holds adapters of one type on one model (LoRA with LoRA, not with prefix tuning)."""
    first = runs[0].dir.adapter_config()["peft_type"]
    for run in runs[1:]:
        kind = run.dir.adapter_config()["peft_type"]
        if kind != first:
            raise UserError(f"{run.path}: its {kind} adapter cannot share a base with {runs[0].path}'s {first} adapter",
                            hint="serve runs of the same adapter family together")


def _add_adapters(base, runs: list[_Run]):
    model = runs[0].dir.load_adapter(base, _adapter_name(0))
    for index, run in enumerate(runs[1:], start=1):
        run.dir.load_adapter(model, _adapter_name(index))
    return model
