"""The preference run's model: a new adapter on the base, or an SFT run's adapter continued; and its reference.

DPO and KTO score the policy against a frozen reference, the model as this run starts, without a second copy of the
base: when the run starts from a fresh adapter that leaves the base unchanged, the reference is the base with the
adapter disabled; otherwise (an SFT adapter continued, or an adapter whose start changes the base, such as PiSSA)
it is a frozen copy of the starting adapter beside the trained one (TRL's "ref" adapter), both on one base.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from peftsft.core.config import Recipe
from peftsft.core.errors import UserError
from peftsft.core.rundir import RunDir
from peftsft.core.rundir.adapter import load_adapter
from peftsft.strategies import StrategyContext, get_strategy
from peftsft.strategies.peft_common import prepare_base
from peftsft.strategies.registry import validate_params

REFERENCE_ADAPTER = "ref"  # the name TRL 1.16's DPO and KTO trainers give the frozen copy (and look up by)
BASE, ADAPTER_COPY, NONE = "base (adapter disabled)", "frozen copy of the starting adapter", "none"


@dataclass
class Adapted:
    model: object
    strategy: object
    continued: str | None  # the adapter dir continued, or None for a new adapter


def adapt(recipe: Recipe, model, quantized: bool) -> Adapted:
    """The recipe's strategy applied to the base, or the SFT adapter named by `[model] adapter`, loaded trainable."""
    strategy = get_strategy(recipe.strategy.name)
    if recipe.model.adapter is None:
        params = validate_params(strategy, recipe.strategy.params)
        return Adapted(strategy.apply(model, params, StrategyContext(quantized=quantized)), strategy, None)
    folder = sft_adapter_dir(recipe)
    return Adapted(load_adapter(prepare_base(model, quantized), folder, trainable=True), strategy, str(folder))


def sft_adapter_dir(recipe: Recipe) -> Path:
    """The adapter folder `[model] adapter` names: a run dir's adapter/ (its base and strategy checked against this
    recipe's) or an adapter folder itself."""
    path, key = Path(recipe.model.adapter), f"[model] adapter = {recipe.model.adapter!r}"
    if RunDir.holds_run(path):
        run = RunDir(path)
        sft = run.recipe()
        if run.adapter_kind() == "model":
            raise UserError(f"{key}: that run trained every weight, so it has no adapter to continue",
                            hint="continue a run of an adapter strategy (lora, dora, ...), or start from its merged "
                            "model as [model] source")
        for what, theirs, ours in (("[model] source", sft.model.source, recipe.model.source),
                                   ("[strategy] name", sft.strategy.name, recipe.strategy.name),
                                   ("[quantization] bits", sft.quantization.bits, recipe.quantization.bits)):
            if theirs != ours:
                raise UserError(f"{key}: that run has {what} = {theirs!r}, this recipe {ours!r}",
                                hint=f"set {what} = {theirs!r}: the adapter continues on the base it was trained on")
        run.adapter_config()  # a damaged adapter is refused before training starts
        return run.adapter_dir
    if (path / "adapter_config.json").is_file():
        return path
    raise UserError(f"{key}: neither a run dir (no {RunDir.RECIPE}) nor an adapter folder (no adapter_config.json)",
                    hint="name the SFT run's folder, e.g. runs/pip-chat")


def reference_kind(recipe: Recipe, model, continued: bool) -> str:
    """Which reference the method scores against (see the module's docstring)."""
    if recipe.preference.method not in ("dpo", "kto"):
        return NONE
    if not hasattr(model, "peft_config"):  # full/freeze: no adapter to switch off (validation asks for precompute)
        return "the model before training (reference log-probabilities precomputed)"
    return ADAPTER_COPY if continued or not starts_as_base(model) else BASE


def starts_as_base(model) -> bool:
    """Whether the fresh adapter leaves the base's outputs unchanged: every LoRA B is zero (LoRA, DoRA, rsLoRA start
    so); anything else (PiSSA, OLoRA, LoftQ, other peft methods) is assumed to change them."""
    b_weights = [p for name, p in model.named_parameters() if ".lora_B." in name]
    return bool(b_weights) and all(not p.detach().any() for p in b_weights)


def settle_reference(model, kind: str) -> None:
    """After the trainer is built: the frozen copy kept (frozen) or dropped, as `kind` says."""
    adapters = getattr(model, "peft_config", {})
    if REFERENCE_ADAPTER not in adapters:
        if kind == ADAPTER_COPY:  # TRL did not make its copy (a peft too old for it): the reference would be wrong
            raise UserError("the trainer made no frozen copy of the adapter to score the reference with",
                            hint="pip install 'peft>=0.20' (or set [preference] precompute_reference = true)")
        return
    if kind == BASE:
        model.delete_adapter(REFERENCE_ADAPTER)
        return
    for name, param in model.named_parameters():
        if f".{REFERENCE_ADAPTER}." in name:
            param.requires_grad_(False)


def drop_reference(model) -> None:
    """The frozen copy removed before the adapter is saved: the run's adapter is the trained one alone."""
    if REFERENCE_ADAPTER in getattr(model, "peft_config", {}):
        model.delete_adapter(REFERENCE_ADAPTER)
