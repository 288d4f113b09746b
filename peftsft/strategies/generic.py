"""`peft`: any peft method by name, its parameters checked against that method's own peft config class.

    [strategy]
    name = "peft"
    method = "boft"          # any peft method (PeftType), case-insensitive
    boft_block_size = 4      # ... and that config class's own fields
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from functools import cache
from typing import Any

import torch
from peft import PeftConfig, PeftType, PromptLearningConfig
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING
from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from peftsft.core.errors import UserError
from peftsft.strategies.base import Strategy, StrategyContext
from peftsft.strategies.peft_common import flattened_batch_problems, merge_peft, wrap

# fields peftsft sets itself (or that describe a saved adapter, not a training choice)
RESERVED = {"peft_type", "task_type", "base_model_name_or_path", "revision", "inference_mode", "auto_mapping",
            "peft_version"}
ALIASES = {"prefix": "prefix_tuning", "prompt": "prompt_tuning", "llama_adapter": "adaption_prompt"}
# methods whose training needs more than (input_ids, labels) rows and a plain training loop
UNSUPPORTED = {
    PeftType.POLY: "it routes every sample by a task id, which SFT rows do not have",
    PeftType.MULTITASK_PROMPT_TUNING: "it needs a task id with every sample, which SFT rows do not have",
    PeftType.XLORA: "it mixes already-trained LoRA adapters and needs its own model loading",
    PeftType.CPT: "it needs per-token type masks from its own data collator",
    PeftType.ADALORA: "it reallocates ranks by a call in every training step (update_and_allocate) that the SFT "
    "trainer does not make — use strategy 'lora' (or 'dora')",
}
# peft has bitsandbytes layers for these; prompt-learning methods never touch the base weights
KBIT = {PeftType.LORA, PeftType.ADALORA, PeftType.IA3, PeftType.HIRA, PeftType.PVERA, PeftType.RANDLORA,
        PeftType.ROAD, PeftType.LN_TUNING}
REWRITING_INITS = ("pissa", "olora", "corda", "loftq", "eva", "lora_ga")  # dedicated strategies handle the first three
NOT_MERGEABLE = {PeftType.ADAPTION_PROMPT}  # and every prompt-learning method


class PeftParams(BaseModel):
    """`method` plus that method's own fields; checked (types included) against its peft config class."""

    model_config = ConfigDict(extra="allow")
    method: str

    @model_validator(mode="after")
    def _check_against_peft(self) -> PeftParams:
        peft_type = method_type(self.method)
        fields = self.fields()
        valid = sorted(settable_fields(peft_type))
        unknown = [_with_suggestion(key, valid) for key in sorted(set(fields) - set(valid))]
        if unknown:
            raise PydanticCustomError(
                "peft_field",
                "unknown parameter(s) for peft method {method}: {unknown} (valid: {valid})",
                {"method": repr(self.method), "unknown": ", ".join(unknown), "valid": ", ".join(valid)},
            )
        build_config(peft_type, fields)
        return self

    def fields(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


def _with_suggestion(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    return f"{key} (did you mean {close[0]!r}?)" if close else key


def method_type(method: str) -> PeftType:
    name = ALIASES.get(method.lower(), method.lower()).upper()
    known = {t.value: t for t in PEFT_TYPE_TO_CONFIG_MAPPING}
    if name not in known:
        close = difflib.get_close_matches(name, list(known), n=1)
        tail = f"did you mean {close[0].lower()!r}?" if close else "one of " + ", ".join(sorted(k.lower() for k in known))
        raise PydanticCustomError("peft_method", "unknown peft method {method}: {tail}", {"method": repr(method), "tail": tail})
    if known[name] in UNSUPPORTED:
        raise PydanticCustomError(
            "peft_method", "peft method {method} cannot train in peftsft: {why}",
            {"method": repr(method), "why": UNSUPPORTED[known[name]]},
        )
    return known[name]


@cache
def settable_fields(peft_type: PeftType) -> frozenset[str]:
    return frozenset(f.name for f in dataclasses.fields(PEFT_TYPE_TO_CONFIG_MAPPING[peft_type]) if f.name not in RESERVED)


def build_config(peft_type: PeftType, fields: dict[str, Any]) -> PeftConfig:
    """The peft config, each value validated against the field's type hint, then peft's own checks."""
    config_class = PEFT_TYPE_TO_CONFIG_MAPPING[peft_type]
    hints = typing.get_type_hints(config_class)
    values = {}
    for key, value in fields.items():
        try:
            values[key] = TypeAdapter(hints[key]).validate_python(value)
        except ValidationError as exc:
            message = exc.errors()[0]["msg"]
            raise PydanticCustomError("peft_field", "{key}: {msg} (got {value})",
                                      {"key": key, "msg": message, "value": repr(value)}) from None
    try:
        return config_class(task_type="CAUSAL_LM", **values)
    except (ValueError, TypeError) as exc:
        raise PydanticCustomError("peft_config", "peft rejects these {method} parameters: {error}",
                                  {"method": peft_type.value.lower(), "error": str(exc)}) from None


def apply_generic(model: torch.nn.Module, params: PeftParams, context: StrategyContext) -> torch.nn.Module:
    return wrap(model, build_config(method_type(params.method), params.fields()), context)


def merge_generic(model: torch.nn.Module) -> torch.nn.Module:
    config = model.active_peft_config
    if config.is_prompt_learning or config.peft_type in NOT_MERGEABLE:
        raise UserError(
            f"peft method {config.peft_type.value.lower()!r} cannot be merged: it adds prompts or attention "
            "at run time, not changes to the base weights",
            hint="serve the base with the adapter (export --format adapter), or train a mergeable method",
        )
    try:
        return merge_peft(model)
    except (NotImplementedError, AttributeError, ValueError) as exc:
        raise UserError(f"peft cannot merge {config.peft_type.value.lower()}: {exc}",
                        hint="serve the base with the adapter (export --format adapter)") from None


def generic_problems(params: PeftParams, recipe: Any) -> list[str]:
    peft_type = method_type(params.method)
    init = str(params.fields().get("init_lora_weights", "")).lower()
    if peft_type == PeftType.LORA and init.startswith(REWRITING_INITS):
        return [f"[strategy] init_lora_weights = {init!r} changes the base weights or needs extra inputs, so the "
                "adapter would not fit the original base: use strategy 'pissa', 'olora' or 'loftq' instead"]
    prompt_based = issubclass(PEFT_TYPE_TO_CONFIG_MAPPING[peft_type], PromptLearningConfig)
    if recipe.quantization.bits is not None and not (prompt_based or peft_type in KBIT):
        capable = sorted(t.value.lower() for t in KBIT)
        return [f"[strategy] peft method {params.method!r} has no layers for a {recipe.quantization.bits}-bit "
                f"quantized base: remove [quantization], or use one of {', '.join(capable)} or a prompt method"]
    if prompt_based:
        return flattened_batch_problems(f"peft method {params.method!r}", recipe)
    return []


PEFT = Strategy(
    name="peft",
    description='Any peft method by name (method = "boft", "hra", ...), checked against its peft config class',
    Config=PeftParams,
    apply=apply_generic,
    merge=merge_generic,
    problems=generic_problems,
    cannot_merge_reason="",
)
