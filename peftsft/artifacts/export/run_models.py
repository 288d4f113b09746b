"""A finished run dir → its recipe, tokenizer, and the models export needs (all float32, on the CPU).

Quantized runs are exported from their base *as it was trained*: the quantized weights dequantized to float32,
never merged into 4-bit, so the merged model is the model whose adapter was trained.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from peftsft.core.config import Recipe
from peftsft.core.errors import UserError
from peftsft.core.rundir import RunDir
from peftsft.core.rundir.adapter import damaged_files_are_user_errors, load_adapter
from peftsft.models import materialize, quantization_config, resolve_source, use_bnb_cpu_path
from peftsft.strategies import get_strategy
from peftsft.strategies.registry import merge_model


@dataclass(frozen=True)
class TrainedRun:
    """A finished run as export sees it: its RunDir and its recipe, read once."""

    dir: RunDir
    recipe: Recipe

    @property
    def path(self) -> Path:
        return self.dir.path

    @property
    def adapter_dir(self) -> Path:
        return self.dir.adapter_dir

    @property
    def name(self) -> str:
        return self.recipe.run.name

    @property
    def quantized(self) -> bool:
        return self.recipe.quantization.bits is not None

    @property
    def is_peft(self) -> bool:
        return self.dir.adapter_kind() == "peft"


def open_run(run_dir: str | Path) -> TrainedRun:
    """Check the run dir has what export needs; the resolved recipe is read as saved (data files may be gone)."""
    run = RunDir(run_dir)
    if not run.recipe_file.is_file():
        raise UserError(f"not a run directory: {run.path} (no {RunDir.RECIPE})", hint="pass runs/<name> of a run")
    recipe = run.recipe()
    if run.adapter_kind() == "peft":
        run.adapter_config()  # a damaged adapter is refused before any model is loaded
    return TrainedRun(run, recipe)


def require_mergeable(run: TrainedRun) -> None:
    strategy = get_strategy(run.recipe.strategy.name)
    if not strategy.can_merge:
        reason = strategy.cannot_merge_reason or "it adds no weights that fold into the base"
        raise UserError(
            f"strategy {strategy.name!r} cannot be merged into the base model: {reason}",
            hint=f"export the adapter instead: python -m peftsft export {run.path} --format adapter --out DIR",
        )


def load_training_tokenizer(run: TrainedRun):
    """The tokenizer saved with the adapter, carrying the exact chat template used in training."""
    from transformers import AutoTokenizer

    with run.dir.reading_adapter():
        tokenizer = AutoTokenizer.from_pretrained(run.adapter_dir, trust_remote_code=run.recipe.model.trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def base_location(run: TrainedRun) -> str:
    return materialize(resolve_source(run.recipe.model.source), run.recipe.model.revision)


def base_gguf_file(run: TrainedRun) -> str | None:
    """The .gguf the base came from, if it did (its tokenizer metadata is reused for GGUF exports)."""
    source = resolve_source(run.recipe.model.source)
    return source.location if source.kind == "gguf" else None


def tuned_config(run: TrainedRun):
    """The architecture config of the trained model (the base's, or the whole model's saved in adapter/)."""
    from transformers import AutoConfig

    location = base_location(run) if run.is_peft else run.adapter_dir
    return AutoConfig.from_pretrained(location, trust_remote_code=run.recipe.model.trust_remote_code)


def load_base(run: TrainedRun, dequantize: bool = False) -> torch.nn.Module:
    """The base in float32; a quantized run's base is loaded quantized (computing in float32) unless dequantized."""
    from transformers import AutoModelForCausalLM

    kwargs = {"dtype": torch.float32, "trust_remote_code": run.recipe.model.trust_remote_code}
    if run.quantized:
        quant = run.recipe.quantization.model_copy(update={"compute_dtype": "float32"})
        kwargs |= {"quantization_config": quantization_config(quant), "device_map": {"": "cpu"}}
    model = AutoModelForCausalLM.from_pretrained(base_location(run), revision=run.recipe.model.revision, **kwargs)
    use_bnb_cpu_path(model, "reference")  # the layout it was trained in (bitsandbytes would pack it on eval)
    if run.quantized and dequantize:
        model = model.dequantize(dtype=torch.float32)
    return model.eval()


def load_tuned(run: TrainedRun, base: torch.nn.Module | None = None, adapter_dir: Path | None = None):
    """Base + adapter, unmerged: the model as trained (and the reference every export is checked against).

    Strategies that train every weight save a whole model in adapter/; that model is loaded as it is.
    `adapter_dir`: another copy of the adapter (an export being verified)."""
    from transformers import AutoModelForCausalLM

    adapter_dir = adapter_dir or run.adapter_dir
    if not run.is_peft:
        with damaged_files_are_user_errors(adapter_dir):
            return AutoModelForCausalLM.from_pretrained(adapter_dir, dtype=torch.float32).eval()
    base = base if base is not None else load_base(run)
    return load_adapter(base, adapter_dir).eval()


def merged_model(run: TrainedRun) -> torch.nn.Module:
    """The adapter folded into a float32 (dequantized, for quantized runs) copy of the base."""
    require_mergeable(run)
    if not run.is_peft:
        return load_tuned(run)  # a whole model already (full / freeze): nothing to fold in
    tuned = load_tuned(run, load_base(run, dequantize=True))
    return merge_model(run.recipe.strategy.name, tuned).eval()
