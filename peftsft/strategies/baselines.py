"""Baselines without adapters: `full` trains every weight, `freeze` only the last layers and/or matching parameters.

Both save the whole model (safetensors) in place of an adapter; "merging" them is the identity.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from peftsft.core.errors import UserError
from peftsft.strategies.base import Strategy, StrategyContext, save_pretrained


class FullParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FreezeParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    layers: int = Field(2, ge=0)  # train the last N decoder layers (0: none, then `patterns` alone)
    # regular expressions searched in parameter names, e.g. ["lm_head", "norm\\.weight$", "embed_tokens"]
    patterns: list[str] = Field(default_factory=list)

    @field_validator("patterns")
    @classmethod
    def _compiles(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"bad regular expression {pattern!r}: {exc}") from None
        return patterns

    @model_validator(mode="after")
    def _trains_something(self) -> FreezeParams:
        if self.layers == 0 and not self.patterns:
            raise ValueError("nothing would train: set layers >= 1 and/or patterns")
        return self


def apply_full(model: torch.nn.Module, params: FullParams, context: StrategyContext) -> torch.nn.Module:
    for param in model.parameters():
        param.requires_grad_(True)
    return model


def apply_freeze(model: torch.nn.Module, params: FreezeParams, context: StrategyContext) -> torch.nn.Module:
    for param in model.parameters():
        param.requires_grad_(False)
    for block in last_layers(model, params.layers):
        block.requires_grad_(True)
    # duplicates kept so that a pattern can name a tied weight by either name (lm_head.weight / embed_tokens.weight)
    for name, param in model.named_parameters(remove_duplicate=False):
        if any(re.search(pattern, name) for pattern in params.patterns):
            param.requires_grad_(True)
    if not any(p.requires_grad for p in model.parameters()):
        raise UserError(
            f"[strategy] freeze: no parameter name matches {params.patterns}",
            hint="names look like " + ", ".join(name for name, _ in list(model.named_parameters())[-3:]),
        )
    return model


def last_layers(model: torch.nn.Module, n: int) -> list[torch.nn.Module]:
    """The last n decoder blocks: the longest ModuleList in the model is the stack of layers."""
    if n == 0:
        return []
    stacks = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList)]
    blocks = max(stacks, key=len, default=[])
    if n > len(blocks):
        raise UserError(f"[strategy] freeze: layers = {n} but the model has {len(blocks)} decoder layers")
    return list(blocks)[len(blocks) - n :]


def save_model(model: torch.nn.Module, directory: Path) -> None:
    """The whole model; with its KV cache switched back on (training turns it off) so that it generates fast."""
    model.config.use_cache = True
    save_pretrained(model, directory)


def already_merged(model: torch.nn.Module) -> torch.nn.Module:
    return model


FULL = Strategy(
    name="full",
    description="Full fine-tuning: every weight trains (baseline; the run saves the whole model)",
    Config=FullParams,
    apply=apply_full,
    merge=already_merged,
    kbit=False,
    save=save_model,
)
FREEZE = Strategy(
    name="freeze",
    description="Freeze tuning: only the last N layers and/or parameters matching patterns train",
    Config=FreezeParams,
    apply=apply_freeze,
    merge=already_merged,
    kbit=False,
    save=save_model,
)
BASELINES = (FULL, FREEZE)
