"""The LoRA family through peft: lora, dora, rslora, LoRA+, PiSSA/OLoRA initialisation, LoftQ on 4-bit bases."""

from __future__ import annotations

import copy
import re
import tempfile
from pathlib import Path
from typing import Any, Literal

import torch
from peft import LoraConfig, get_peft_model_state_dict
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, create_model, field_validator

from peftsft.core.errors import UserError
from peftsft.strategies.base import Strategy, StrategyContext, save_pretrained
from peftsft.strategies.peft_common import merge_peft, prepare_base, wrap

__all__ = ["LORA", "LORA_FAMILY", "LoraParams", "lora_config", "prepare_base"]

INITS = ("default", "gaussian", "orthogonal", "pissa", "olora")


class LoraParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # peft's own names (lora_alpha, lora_dropout) and "rank" are accepted too
    r: int = Field(16, ge=1, le=4096, validation_alias=AliasChoices("r", "rank"))
    alpha: float = Field(32.0, gt=0, validation_alias=AliasChoices("alpha", "lora_alpha"))
    dropout: float = Field(0.05, ge=0.0, lt=1.0, validation_alias=AliasChoices("dropout", "lora_dropout"))
    target_modules: str | list[str] = "all-linear"  # "all-linear" or module names like ["q_proj", "v_proj"]
    bias: Literal["none", "all", "lora_only"] = "none"
    modules_to_save: list[str] | None = None  # extra modules trained in full and saved (e.g. "lm_head")
    use_dora: bool = False  # DoRA: LoRA on the weight's direction plus a trained magnitude vector
    use_rslora: bool = False  # scale by alpha/sqrt(r) instead of alpha/r: stable updates at high rank
    # how A and B start: default (A random, B zero) | gaussian | orthogonal | pissa | pissa_niter_<n> (fast SVD) | olora
    init: str = "default"
    # LoRA+: B matrices learn this many times faster than A (the paper suggests 16); None: plain LoRA learning rates
    loraplus_lr_ratio: float | None = Field(None, ge=1.0)
    loraplus_lr_embedding: float = Field(1e-6, gt=0)  # LoRA+ learning rate of LoRA on embedding layers

    @field_validator("init")
    @classmethod
    def _known_init(cls, value: str) -> str:
        if value in INITS or re.fullmatch(r"pissa_niter_\d+", value):
            return value
        raise ValueError(f"unknown init {value!r}; one of {', '.join(INITS)} or pissa_niter_<n>")


def params_with(name: str, **defaults: Any) -> type[LoraParams]:
    """LoraParams with other defaults: each named variant is LoRA with a preset (dora: use_dora = true...)."""
    fields = {}
    for key, value in defaults.items():
        info = copy.copy(LoraParams.model_fields[key])
        info.default = value
        fields[key] = (LoraParams.model_fields[key].annotation, info)
    return create_model(f"{name.capitalize()}Params", __base__=LoraParams, **fields)


def lora_config(params: LoraParams) -> LoraConfig:
    return LoraConfig(
        r=params.r,
        lora_alpha=params.alpha,
        lora_dropout=params.dropout,
        target_modules=params.target_modules,
        bias=params.bias,
        modules_to_save=params.modules_to_save,
        use_dora=params.use_dora,
        use_rslora=params.use_rslora,
        init_lora_weights=True if params.init == "default" else params.init,
        task_type="CAUSAL_LM",
    )


def rewrites_base(params: LoraParams) -> bool:
    """PiSSA and OLoRA move the adapter's starting point out of the base weights (W = W_res + BA)."""
    return params.init.startswith(("pissa", "olora"))


# ---------------------------------------------------------------------------------------------- apply / save


def apply_lora(model: torch.nn.Module, params: LoraParams, context: StrategyContext) -> torch.nn.Module:
    peft_model = wrap(model, lora_config(params), context)
    if rewrites_base(params):  # kept to convert the trained adapter into one for the original base (save_lora)
        initial = get_peft_model_state_dict(peft_model)
        peft_model.peftsft_initial_adapter = {k: v.detach().clone() for k, v in initial.items()}
    return peft_model


def save_lora(model: torch.nn.Module, directory: Path) -> None:
    """A PiSSA/OLoRA adapter is saved as plain LoRA (rank 2r: trained minus initial) that fits the original base."""
    initial = getattr(model, "peftsft_initial_adapter", None)
    if initial is None:
        return save_pretrained(model, directory)
    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory() as tmp:
        start = Path(tmp) / "initial"
        start.mkdir()
        save_file(initial, start / "adapter_model.safetensors")
        model.save_pretrained(directory, safe_serialization=True, path_initial_model_for_weight_conversion=str(start))


def loraplus_optimizer(model, params: LoraParams, optimizer_cls: type, optimizer_kwargs: dict):
    """LoRA+ parameter groups (B at lr × ratio) through peft; None (the trainer's default) without a ratio."""
    if params.loraplus_lr_ratio is None:
        return None
    from peft.optimizers import create_loraplus_optimizer

    kwargs = dict(optimizer_kwargs)
    lr, weight_decay = kwargs.pop("lr"), kwargs.pop("weight_decay", 0.0)
    return create_loraplus_optimizer(
        model, optimizer_cls, lr=lr, loraplus_lr_ratio=params.loraplus_lr_ratio,
        loraplus_lr_embedding=params.loraplus_lr_embedding, loraplus_weight_decay=weight_decay, **kwargs,
    )


# ---------------------------------------------------------------------------------------------- checks


def lora_problems(params: LoraParams, recipe: Any) -> list[str]:
    problems = []
    if rewrites_base(params) and recipe.quantization.bits is not None:
        problems.append(
            f"[strategy] init = {params.init!r} rewrites the base weights, which must be in float: it cannot start "
            "from a quantized base — remove [quantization], or use strategy 'loftq' for 4-bit bases"
        )
    if rewrites_base(params) and (params.use_dora or params.modules_to_save or params.bias != "none"):
        problems.append(
            f"[strategy] init = {params.init!r}: the adapter is saved as plain LoRA for the original base, which keeps "
            "only the A/B matrices — drop use_dora, modules_to_save and bias, or use init = 'default'"
        )
    return problems


# ---------------------------------------------------------------------------------------------- LoftQ


def apply_loftq(model: torch.nn.Module, params: LoraParams, context: StrategyContext) -> torch.nn.Module:
    """LoRA on the 4-bit base with A, B set so that dequant(Q) + scaling·BA ≈ W (the unquantized weight)."""
    peft_model = wrap(model, lora_config(params), context)
    layers = {name.removeprefix("base_model.model."): m for name, m in peft_model.named_modules() if _is_lora_4bit(m)}
    originals = original_weights(peft_model.get_base_model().name_or_path, [f"{n}.weight" for n in layers])
    for name, module in layers.items():
        loftq_init(module, originals[f"{name}.weight"])
    return peft_model


def _is_lora_4bit(module: torch.nn.Module) -> bool:
    return hasattr(module, "lora_A") and type(module.get_base_layer().weight).__name__ == "Params4bit"


@torch.no_grad()
def loftq_init(module: torch.nn.Module, original: torch.Tensor, adapter: str = "default") -> None:
    """LoftQ on the fly (as peft's replace_lora_weights_loftq, which needs CUDA): the top-r SVD of W - dequant(Q).

    peft's version also assumes scaling = 1; B is divided by the layer's scaling so any alpha works."""
    import bitsandbytes as bnb

    weight = module.get_base_layer().weight
    residual = original.to(weight.device, torch.float32) - bnb.functional.dequantize_4bit(
        weight.data, weight.quant_state
    ).float()
    U, S, Vh = torch.linalg.svd(residual, full_matrices=False)
    r, root = module.r[adapter], S[: module.r[adapter]].sqrt()
    lora_A, lora_B = module.lora_A[adapter].weight, module.lora_B[adapter].weight
    lora_A.data = (root[:, None] * Vh[:r]).to(lora_A.dtype).contiguous()
    lora_B.data = (U[:, :r] * root / module.scaling[adapter]).to(lora_B.dtype).contiguous()


def original_weights(location: str, names: list[str]) -> dict[str, torch.Tensor]:
    """Unquantized tensors by name, read from the base model's safetensors files (local dir or Hub cache)."""
    from safetensors import safe_open

    found: dict[str, torch.Tensor] = {}
    for file in _safetensors_files(location):
        with safe_open(str(file), "pt") as handle:
            for key in set(handle.keys()) & set(names):
                found[key] = handle.get_tensor(key)
    missing = [n for n in names if n not in found]
    if missing:
        raise UserError(
            f"[strategy] loftq: {len(missing)} weight(s) not found in the base model's safetensors, e.g. {missing[0]}",
            hint="LoftQ reads the unquantized weights from the model files; use a model saved as safetensors",
        )
    return found


def _safetensors_files(location: str) -> list[Path]:
    path = Path(location)
    if not path.is_dir():
        from huggingface_hub import snapshot_download

        path = Path(snapshot_download(location, local_files_only=True, allow_patterns=["*.safetensors"]))
    return sorted(path.glob("*.safetensors"))


def loftq_problems(params: LoraParams, recipe: Any) -> list[str]:
    problems = []
    if recipe.quantization.bits != 4:
        problems.append(
            "[strategy] loftq starts LoRA from the error of 4-bit quantization: set [quantization] bits = 4 "
            "(or use strategy 'lora' on an unquantized base)"
        )
    if params.init != "default" or params.use_dora:
        problems.append("[strategy] loftq sets the starting A/B itself: leave init = 'default' and use_dora = false")
    return problems


# ---------------------------------------------------------------------------------------------- the family


def lora_variant(name: str, description: str, kbit: bool = True, **defaults: Any) -> Strategy:
    return Strategy(
        name=name,
        description=description,
        Config=params_with(name, **defaults) if defaults else LoraParams,
        apply=apply_lora,
        merge=merge_peft,
        problems=lora_problems,
        kbit=kbit,
        save=save_lora,
        make_optimizer=loraplus_optimizer,
    )


LORA = lora_variant("lora", "LoRA: trainable low-rank updates BA beside frozen weights (peft)")
DORA = lora_variant("dora", "DoRA: LoRA on each weight's direction plus a trained magnitude (use_dora)", use_dora=True)
RSLORA = lora_variant("rslora", "rsLoRA: LoRA scaled by alpha/sqrt(r), stable at high ranks (use_rslora)", use_rslora=True)
LORAPLUS = lora_variant(
    "loraplus", "LoRA+: LoRA whose B matrices learn loraplus_lr_ratio times faster than A", loraplus_lr_ratio=16.0
)
PISSA = lora_variant(
    "pissa", "PiSSA: LoRA started from each weight's top singular vectors; saved as plain LoRA", kbit=False, init="pissa"
)
OLORA = lora_variant(
    "olora", "OLoRA: LoRA started from a QR decomposition of each weight; saved as plain LoRA", kbit=False, init="olora"
)
LOFTQ = Strategy(
    name="loftq",
    description="LoftQ: LoRA on a 4-bit base, started to cancel the quantization error",
    Config=LoraParams,
    apply=apply_loftq,
    merge=merge_peft,  # into the dequantized 4-bit base: exactly the model that was trained
    problems=loftq_problems,
    kbit=True,
    make_optimizer=loraplus_optimizer,
)
LORA_FAMILY = (LORA, DORA, RSLORA, LORAPLUS, PISSA, OLORA, LOFTQ)
