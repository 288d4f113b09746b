"""The strategy interface: what every adapter method (built-in or plugin) provides."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from pydantic import BaseModel


def _no_problems(params: BaseModel, recipe: Any) -> list[str]:
    return []


def save_pretrained(model: torch.nn.Module, directory: Path) -> None:
    """The default save: a peft adapter (or, for a plain model, the whole model) as safetensors."""
    model.save_pretrained(directory, safe_serialization=True)


@dataclass(frozen=True)
class StrategyContext:
    """What a strategy is told about the model it adapts: passed to `apply`, never read from global state."""

    quantized: bool = False  # the base is 4/8-bit (bitsandbytes): freeze it the k-bit way
    task_type: str = "CAUSAL_LM"  # peft's task: CAUSAL_LM for chat, SEQ_CLS trains and saves a classification head


@dataclass(frozen=True)
class Strategy:
    """A named way of making a model trainable.

    `apply(model, params, context) -> model` returns the model ready to train (`params` is a validated
    instance of `Config`, `context` a StrategyContext); `merge(model) -> model` folds the adapter into plain weights when `can_merge`
    (None: peft's `merge_and_unload`), else `cannot_merge_reason` says why and what to do instead.
    `problems(params, recipe)` lists combinations this strategy cannot train (checked at validate time);
    `kbit` says whether it trains on a 4/8-bit quantized base at all (checked for every strategy).
    `save(model, directory)` writes what training produced; `make_optimizer(model, params, optimizer_cls,
    optimizer_kwargs)` may build the optimizer itself (LoRA+), returning None to keep the trainer's default.
    """

    name: str
    description: str
    Config: type[BaseModel]
    apply: Callable[[torch.nn.Module, BaseModel, StrategyContext], torch.nn.Module]
    can_merge: bool = True
    merge: Callable[[torch.nn.Module], torch.nn.Module] | None = None
    problems: Callable[[BaseModel, Any], list[str]] = _no_problems
    cannot_merge_reason: str = ""
    kbit: bool = True
    save: Callable[[torch.nn.Module, Path], None] = save_pretrained
    make_optimizer: Callable[[torch.nn.Module, BaseModel, type, dict], torch.optim.Optimizer | None] | None = None


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; 4-bit packed weights are counted as their unpacked size."""
    if hasattr(model, "get_nb_trainable_parameters"):  # peft knows how bitsandbytes packs its weights
        return model.get_nb_trainable_parameters()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def trainable_summary(model: torch.nn.Module) -> dict[str, Any]:
    trainable, total = count_parameters(model)
    return {
        "trainable_params": int(trainable),
        "total_params": int(total),
        "trainable_percent": round(100.0 * trainable / max(total, 1), 4),
    }
