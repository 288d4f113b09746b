"""Load something to talk to: a run dir (base + adapter, as trained) or a plain model (dir, .gguf, hub id).

A **run dir** holds `recipe.resolved.toml` and `adapter/`. The base is loaded exactly as in training
(the recipe's `[model]` and `[quantization]`: a 4-bit run is served on its 4-bit base), the adapter is
put on top, and the tokenizer comes from `adapter/`, so the chat template is the one used in training.
`adapter/` may also hold a whole model (`config.json`, from strategies that train every weight).

Anything else is a **model source** as a recipe's `[model] source` names it (a merged dir, a .gguf, ...).
Its base, for side-by-side comparison, is `base=` when given, else the `[model] source` of a
`recipe.resolved.toml` found beside the weights (merge/export copy it there), else unknown.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peftsft.core.config import ModelSection, QuantizationSection, Recipe
from peftsft.core.errors import UserError
from peftsft.core.rundir import RunDir


@dataclass
class Loaded:
    """A model ready for inference, its tokenizer, and how to reach its base model."""

    model: Any
    tokenizer: Any
    source: str  # what was asked for
    kind: str  # "run" | "model"
    device: str
    recipe: Recipe | None = None  # the training recipe, when known
    base_source: str | None = None  # the base model's source, when known
    quantized: bool = False
    _base: Any = field(default=None, repr=False)

    @property
    def has_base(self) -> bool:
        return self.kind == "run" or self.base_source is not None

    @property
    def system_prompt(self) -> str | None:
        """The recipe's system prompt, if its [data] section has one (else the template's own default)."""
        return getattr(self.recipe.data, "system_prompt", None) if self.recipe else None

    @contextmanager
    def base(self) -> Iterator[Any]:
        """The base model for the duration of the block: the adapter switched off, or the base loaded once."""
        if not self.has_base:
            raise UserError(
                f"{self.source}: the base model is unknown, so there is nothing to compare with",
                hint="pass --base MODEL_SOURCE (or use a run dir, or a merged dir with recipe.resolved.toml)",
            )
        if hasattr(self.model, "disable_adapter"):
            with self.model.disable_adapter():
                yield self.model
            return
        if self._base is None:
            self._base = _load_plain(self.base_source, self.device, self.recipe).model
        yield self._base

    def use(self, side: str):
        """A context giving the "base" or the "tuned" model."""
        return self.base() if side == "base" else nullcontext(self.model)


def load(source: str | Path, device: str = "auto", base: str | None = None) -> Loaded:
    """Load a run dir or a model source for inference (eval mode); see the module docstring."""
    from peftsft.models import pick_device

    is_run = RunDir.holds_run(source)
    if base is not None and is_run:
        raise UserError(f"{source}: a run dir's base is the model it was trained on; --base is for model dirs",
                        hint="drop --base (the run's recipe names its base)")
    device = pick_device(device)
    loaded = load_run(RunDir(source), device) if is_run else _load_model_source(str(source), device)
    if base is not None:
        loaded.base_source, loaded._base = base, None
    return loaded


def load_run(run: RunDir, device: str) -> Loaded:
    """Base model as the recipe loads it + the trained adapter; tokenizer (and template) from adapter/."""
    from peftsft.models import load_model, load_tokenizer

    recipe = run.recipe()
    if recipe.task == "classification":  # an encoder with a classification head: nothing to chat with
        raise UserError(f"{run.path} is a classification run: it labels text, it does not answer",
                        hint=f"python -m peftsft predict {run.path} --file TEXTS.txt (or eval {run.path})")
    if run.adapter_kind() == "model":
        model_cfg = recipe.model.model_copy(update={"source": str(run.adapter_dir)})
        with run.reading_adapter():
            model, _, _ = load_model(model_cfg, QuantizationSection(), device)
    else:
        run.adapter_config()  # a damaged adapter is refused before the base is loaded
        base, _, _ = load_model(recipe.model, recipe.quantization, device)
        model = run.load_adapter(base)
    with run.reading_adapter():
        tokenizer = load_tokenizer(str(run.adapter_dir), recipe.model)
    return Loaded(
        model.eval(), tokenizer, str(run.path), "run", device, recipe,
        base_source=recipe.model.source, quantized=recipe.quantization.bits is not None,
    )


def _load_model_source(source: str, device: str) -> Loaded:
    recipe = RunDir.recipe_beside(source)
    loaded = _load_plain(source, device, recipe)
    loaded.base_source = recipe.model.source if recipe else None
    return loaded


def _load_plain(source: str, device: str, recipe: Recipe | None) -> Loaded:
    """A model source with its own tokenizer; the recipe (when known) lends dtype and remote-code trust."""
    from peftsft.models import load_model

    if Path(source).is_dir() and not (Path(source) / "config.json").is_file():
        raise UserError(f"{source}: neither a run dir ({RunDir.RECIPE}) nor a model dir (config.json)",
                        hint="point at a run dir made by `peftsft run`, a merged/exported model dir, or a .gguf")
    model_cfg = recipe.model.model_copy(update={"source": source}) if recipe else ModelSection(source=source)
    model, tokenizer, _ = load_model(model_cfg, QuantizationSection(), device)
    return Loaded(model.eval(), tokenizer, source, "model", device, recipe)
