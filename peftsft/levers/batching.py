"""Lever `batching`: how rows become batches — length-grouped sampling, packing, or padding-free batches.

Padding-free (`[training] padding_free = "auto"`): on where attention skips the other samples' tokens (flash
attention's per-sample lengths, flex attention's block mask, peftsft's CPU attention sample by sample); off for
sdpa/eager, where transformers keeps flattened samples apart with a dense block-diagonal mask, so attention would
cost (Σ lengths)² instead of batch × longest²; off for one sample a batch (nothing to flatten) and where the model
drops position ids (peft's prompt-learning adapters). Packing is padding-free already.
"""

from __future__ import annotations

from dataclasses import dataclass

from peftsft.data.packing import PACKING_STRATEGY
from peftsft.levers.attention import NAME as ATTENTION_BY_SAMPLE
from peftsft.levers.situation import Situation

# attention backends whose cost on a flattened batch grows with each sample's length, not the batch's total
VARLEN_ATTENTION = ("flash_attention_2", "flash_attention_3", "flex_attention", ATTENTION_BY_SAMPLE)



@dataclass(frozen=True)
class Batching:
    sampling: str  # group_by_length | random | sequential
    packing: bool
    padding_free: bool

    def describe(self) -> str:
        kind = "packed" if self.packing else ("padding-free" if self.padding_free else "padded")
        return f"{self.sampling} batches, {kind}"


def decide(situation: Situation, attention: str) -> Batching:
    recipe = situation.recipe
    if situation.preference_method is not None:
        return Batching(preference_sampling(situation.preference_method, recipe.training.sampling), False, False)
    packing = recipe.data.packing if situation.trains_language_model else False
    free = situation.trains_language_model and padding_free(
        recipe.training.padding_free, attention, packing, recipe.training.batch_size,
        takes_position_ids(situation.model),
    )
    return Batching(recipe.training.sampling, packing, free)


def preference_sampling(method: str, setting: str) -> str:
    """Preference rows are never packed nor flattened (TRL pads each pair's answers side by side). KTO reads its rows
    in order (its KL term pairs each answer with its batch neighbours' prompts; the data build spread them with the
    seed); TRL's preference rows have no single `input_ids` column to group by length, so grouping becomes random."""
    if method == "kto":
        return "sequential"
    return "random" if setting == "group_by_length" else setting


def padding_free(setting: bool | str, attention: str, packing: bool, batch_size: int, position_ids: bool) -> bool:
    if packing:
        return False
    if setting != "auto":
        return bool(setting)
    return attention in VARLEN_ATTENTION and batch_size > 1 and position_ids


def takes_position_ids(model) -> bool:
    """Whether `model` passes position ids on to its layers, which is what keeps a flattened batch's samples apart:
    peft's prompt-learning adapters (prompt, prefix, p-tuning) drop them."""
    return not getattr(getattr(model, "active_peft_config", None), "is_prompt_learning", False)


def trainer_arguments(batching: Batching) -> dict:
    return {"train_sampling_strategy": batching.sampling}


def sft_arguments(batching: Batching, max_length: int) -> dict:
    """SFTConfig's batching keys. Our rows are truncated to max_length already (data/build.py); TRL refuses
    padding-free with a max_length. Padding-free rows have no padding to leave out of the token count, and their
    pad token (often the end-of-turn one) is real text."""
    return {
        "packing": batching.packing,
        "packing_strategy": PACKING_STRATEGY,
        "padding_free": batching.padding_free,
        "max_length": None if batching.padding_free else max_length,
        "include_num_input_tokens_seen": "all" if batching.padding_free else "non_padding",
    }
