"""What the peft-backed strategies share: freeze the base, wrap it, merge it back."""

from __future__ import annotations

import types
from typing import Any, Callable

import torch
from peft import PeftConfig, PeftType, get_peft_model, prepare_model_for_kbit_training
from pydantic import BaseModel

from peftsft.core.errors import UserError
from peftsft.strategies.base import Strategy, StrategyContext


def prepare_base(model: torch.nn.Module, quantized: bool) -> torch.nn.Module:
    """Freeze the base; for k-bit bases also let peft cast norms and enable input grads."""
    if quantized:
        return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    for param in model.parameters():
        param.requires_grad_(False)
    return model


def wrap(model: torch.nn.Module, config: PeftConfig, context: StrategyContext) -> torch.nn.Module:
    """The frozen base wrapped by peft for the context's task (SEQ_CLS also trains and saves a classification head);
    peft's complaints about the model (no such target module...) become UserErrors."""
    config.task_type = context.task_type
    try:
        peft_model = get_peft_model(prepare_base(model, context.quantized), config)
    except (ValueError, TypeError, KeyError, NotImplementedError) as exc:
        method = config.peft_type.value.lower()
        raise UserError(
            f"[strategy] peft cannot apply {method} to this model: {exc}",
            hint="check the strategy's target_modules (module names of this architecture) and sizes",
        ) from None
    if config.peft_type == PeftType.ADAPTION_PROMPT:
        _forward_through_model(peft_model.base_model)
    return peft_model


def _call_model(self, *args, **kwargs):
    return self.model(*args, **kwargs)


def _forward_through_model(adaption_model: torch.nn.Module) -> None:
    """peft's adaption-prompt wrapper keeps the model's `forward` as it was when wrapped; TRL patches the forward
    later (its fused LM head), so call the model each time instead of the stale bound method."""
    adaption_model.forward = types.MethodType(_call_model, adaption_model)


def merge_peft(model: torch.nn.Module) -> torch.nn.Module:
    return model.merge_and_unload()


def flattened_batch_problems(name: str, recipe: Any) -> list[str]:
    """For peft's prompt-learning methods: they put virtual tokens before each row and drop the position ids that
    keep the samples of a packed row or a padding-free batch apart — those samples would see each other."""
    flat = [what for what, on in (("packed rows ([data] packing = false)", recipe.data.packing),
                                  ("padding-free batches ([training] padding_free = \"auto\")",
                                   recipe.training.padding_free is True)) if on]  # fmt: skip
    return [f"[strategy] {name} cannot train on {what}: peft ignores the position ids that keep their samples "
            "apart" for what in flat]


def peft_strategy(
    name: str,
    description: str,
    Config: type[BaseModel],
    config_class: type[PeftConfig],
    to_kwargs: Callable[[BaseModel, torch.nn.Module], dict[str, Any]] | None = None,
    **fields: Any,
) -> Strategy:
    """A Strategy whose Config fields are the peft config class's own (or mapped by `to_kwargs`)."""

    def apply(model: torch.nn.Module, params: BaseModel, context: StrategyContext) -> torch.nn.Module:
        kwargs = to_kwargs(params, model) if to_kwargs else params.model_dump()
        return wrap(model, config_class(task_type=context.task_type, **kwargs), context)

    fields.setdefault("merge", merge_peft if fields.get("can_merge", True) else None)
    return Strategy(name=name, description=description, Config=Config, apply=apply, **fields)
