"""LoRA through peft: low-rank adapters on frozen weights."""

from __future__ import annotations

from typing import Literal

import torch
from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from .base import Strategy


class LoraParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # peft's own names (lora_alpha, lora_dropout) and "rank" are accepted too
    r: int = Field(16, ge=1, le=4096, validation_alias=AliasChoices("r", "rank"))
    alpha: float = Field(32.0, gt=0, validation_alias=AliasChoices("alpha", "lora_alpha"))
    dropout: float = Field(0.05, ge=0.0, lt=1.0, validation_alias=AliasChoices("dropout", "lora_dropout"))
    target_modules: str | list[str] = "all-linear"  # "all-linear" or module names like ["q_proj", "v_proj"]
    bias: Literal["none", "all", "lora_only"] = "none"
    modules_to_save: list[str] | None = None  # extra modules trained in full and saved (e.g. "lm_head")


def lora_config(params: LoraParams) -> LoraConfig:
    return LoraConfig(
        r=params.r,
        lora_alpha=params.alpha,
        lora_dropout=params.dropout,
        target_modules=params.target_modules,
        bias=params.bias,
        modules_to_save=params.modules_to_save,
        task_type="CAUSAL_LM",
    )


def prepare_base(model: torch.nn.Module, quantized: bool) -> torch.nn.Module:
    """Freeze the base; for k-bit bases also let peft cast norms and enable input grads."""
    if quantized:
        return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    for param in model.parameters():
        param.requires_grad_(False)
    return model


def apply_lora(model: torch.nn.Module, params: LoraParams, quantized: bool) -> torch.nn.Module:
    return get_peft_model(prepare_base(model, quantized), lora_config(params))


def merge_peft(model: torch.nn.Module) -> torch.nn.Module:
    return model.merge_and_unload()


LORA = Strategy(
    name="lora",
    description="Low-rank adapters (LoRA) on frozen weights, through peft",
    Config=LoraParams,
    apply=apply_lora,
    merge=merge_peft,
)
