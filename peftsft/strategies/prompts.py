"""Prompt-based adapters through peft: prefix tuning, prompt tuning, LLaMA-Adapter (adaption prompt).

They add learned tokens or attention prompts at run time and leave every base weight as it is: nothing to merge.
"""

from __future__ import annotations

from typing import Any, Literal

from peft import AdaptionPromptConfig, PrefixTuningConfig, PromptTuningConfig
from pydantic import BaseModel, ConfigDict, Field, model_validator

from peftsft.strategies.peft_common import flattened_batch_problems, peft_strategy

SERVE_ADAPTER = "serve the base with the adapter (export --format adapter), or train a mergeable strategy such as lora"


class PrefixParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    num_virtual_tokens: int = Field(20, ge=1)  # learned key/value vectors per layer, attended to by every token
    prefix_projection: bool = False  # learn them through an MLP (more stable on big models, more parameters)
    encoder_hidden_size: int | None = Field(None, ge=1)  # the MLP's width; None: the model's hidden size


class PromptParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    num_virtual_tokens: int = Field(20, ge=1)  # learned embeddings put before every input
    init: Literal["random", "sample_vocab", "text"] = "random"  # text: start from the embeddings of init_text
    init_text: str | None = None  # e.g. "You are Pip, a friendly assistant." (with init = "text")

    @model_validator(mode="after")
    def _text_with_init(self) -> PromptParams:
        if (self.init == "text") != (self.init_text is not None):
            raise ValueError('init = "text" and init_text go together')
        return self


class LlamaAdapterParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    adapter_len: int = Field(10, ge=1)  # learned prompt tokens per adapted layer
    adapter_layers: int | None = Field(None, ge=1)  # the top N decoder layers get one; None: every layer


def prefix_kwargs(params: PrefixParams, model) -> dict[str, Any]:
    return {
        "num_virtual_tokens": params.num_virtual_tokens,
        "prefix_projection": params.prefix_projection,
        "encoder_hidden_size": params.encoder_hidden_size or model.config.get_text_config().hidden_size,
    }


def prompt_kwargs(params: PromptParams, model) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"num_virtual_tokens": params.num_virtual_tokens, "prompt_tuning_init": params.init.upper()}
    if params.init == "text":  # peft tokenizes the text with the base model's own tokenizer
        kwargs |= {"prompt_tuning_init_text": params.init_text, "tokenizer_name_or_path": model.name_or_path}
    return kwargs


def llama_adapter_kwargs(params: LlamaAdapterParams, model) -> dict[str, Any]:
    layers = params.adapter_layers or model.config.get_text_config().num_hidden_layers
    return {"adapter_len": params.adapter_len, "adapter_layers": layers}


def no_flattened_batches(name: str):
    """Prefix and prompt tuning: neither packed rows nor padding-free batches (peft_common.flattened_batch_problems)."""

    def problems(params: BaseModel, recipe: Any) -> list[str]:
        return flattened_batch_problems(name, recipe)

    return problems


PREFIX = peft_strategy(
    "prefix",
    "Prefix tuning: learned key/value vectors prepended in every attention layer (peft)",
    PrefixParams,
    PrefixTuningConfig,
    to_kwargs=prefix_kwargs,
    problems=no_flattened_batches("prefix"),
    can_merge=False,
    cannot_merge_reason="prefix tuning's learned key/value vectors are extra attention inputs, not changes to any "
    f"weight, so there is nothing to fold into the base; {SERVE_ADAPTER}",
)
PROMPT = peft_strategy(
    "prompt",
    "Prompt tuning: learned virtual token embeddings put before every input (peft)",
    PromptParams,
    PromptTuningConfig,
    to_kwargs=prompt_kwargs,
    problems=no_flattened_batches("prompt"),
    can_merge=False,
    cannot_merge_reason="prompt tuning's virtual tokens are extra inputs, not changes to any weight, so there is "
    f"nothing to fold into the base; {SERVE_ADAPTER}",
)
LLAMA_ADAPTER = peft_strategy(
    "llama_adapter",
    "LLaMA-Adapter: gated attention to learned prompts in the top layers (peft adaption prompt)",
    LlamaAdapterParams,
    AdaptionPromptConfig,
    to_kwargs=llama_adapter_kwargs,
    kbit=False,  # TRL casts adapters on k-bit bases to bf16, which peft's adapted attention does not cast back
    can_merge=False,
    cannot_merge_reason="LLaMA-Adapter adds a gated attention over learned prompts in each adapted layer, which no "
    f"base weight can express; {SERVE_ADAPTER}",
)
PROMPTS = (PREFIX, PROMPT, LLAMA_ADAPTER)
