"""Speed levers: each a recipe option with an automatic default, decided once per run and recorded in summary.json.

Kept because the benchmark shows they pay on the reference job (see README "Speed"): fp32 where bf16 matmuls are
slow, length-grouped batches, activation checkpointing only when memory needs it, fp32 adapters on a quantized
base where bf16 is slow, a bf16 frozen base where training runs in bf16, padding-free batches, fused AdamW, and
on the CPU a matmul attention path for short sequences (probabilities recomputed in the backward), peftsft's loss
head and fused LoRA layers (with the gated MLP and RMSNorm around them: training/fused_layers.py).
TRL's fused, chunked LM head (no full-vocabulary logits) is always on.
`decide_levers` is the one place the run's levers are decided; everything downstream receives the `Levers`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from peftsft.core.config import Recipe
from peftsft.training.attention import attention_kernel
from peftsft.training.plan import estimate
from peftsft.training.rules import (
    adapter_dtype,
    base_dtype,
    has_frozen_base,
    loss_kernel,
    lora_kernel,
    loss_vocab_chunk,
    optimizer_name,
    padding_free,
    resolve_precision,
    takes_position_ids,
)


@dataclass
class Levers:
    precision: str  # autocast: bf16 | fp16 | fp32
    activation_checkpointing: bool
    checkpointing_reason: str
    adapter_dtype: str | None  # trainable weights on a quantized base; None without one
    sampling: str
    packing: bool
    threads: int
    loss_vocab_chunk: int
    loss_positions: str
    loss_kernel: str = "trl"  # "peftsft": training/loss_head.py in place of TRL's chunked kernel
    lora_kernel: str = "peft"  # "peftsft": training/lora_linear.py for plain LoRA layers
    optimizer: str = "adamw_torch_fused"
    base_dtype: str | None = None  # the frozen base under adapters; None: as loaded
    padding_free: bool = False
    attention: str = "sdpa"  # the attention function training runs with (training.attention.NAME: ours)
    fallbacks: list[str] = field(default_factory=list)  # levers trl_compat could not apply on this TRL, and why

    def describe(self) -> str:
        adapters = f", {self.adapter_dtype} adapters" if self.adapter_dtype else ""
        adapters += f", {self.base_dtype} frozen base" if self.base_dtype else ""
        packing = ", packed" if self.packing else (", padding-free" if self.padding_free else ", padded")
        chunk = (f", loss head on {self.loss_positions} positions in {self.loss_vocab_chunk}-wide vocabulary slices"
                 if self.loss_kernel == "trl" else f", peftsft's CPU loss head on {self.loss_positions} positions")
        return (
            f"{self.precision}{adapters}, {self.sampling} batches{packing}, {self.attention} attention, {self.optimizer}, "
            f"{self.threads} threads{chunk}, {self.lora_kernel} LoRA layers, "
            f"activation checkpointing {'on' if self.activation_checkpointing else 'off'} ({self.checkpointing_reason})"
        )

    def as_dict(self) -> dict:
        head = "TRL's fused chunked log-probs" if self.loss_kernel == "trl" else "peftsft's CPU log-probs (token blocks)"
        return {**asdict(self), "loss_head": f"{head} (no full logits)"}


def decide_levers(recipe: Recipe, device: str, longest_sample: int | None = None, model=None) -> Levers:
    """The levers this run uses on `device`; `longest_sample` (tokens) sizes the memory plan behind "auto";
    `model` (with the strategy applied) tells its attention backend and whether it has adapters on a frozen base."""
    import torch

    from peftsft.training.trl_compat import attention_implementation

    precision = resolve_precision(recipe.training.precision, device)
    loaded = attention_implementation(model) if model is not None else recipe.model.attention.replace("auto", "sdpa")
    attention = attention_kernel(recipe.model.attention, device, loaded)
    checkpointing = recipe.training.activation_checkpointing
    reason = "set in the recipe"
    if checkpointing == "auto":
        plan = estimate(recipe, device, read_data=False, longest_sample=longest_sample)
        checkpointing, reason = plan.checkpointing, plan.checkpointing_reason
    return Levers(
        precision=precision,
        activation_checkpointing=checkpointing,
        checkpointing_reason=reason,
        adapter_dtype=adapter_dtype(recipe, precision),
        sampling=recipe.training.sampling,
        packing=recipe.data.packing,
        threads=torch.get_num_threads(),
        loss_vocab_chunk=loss_vocab_chunk(recipe.training.loss_vocab_chunk, device),
        loss_positions=recipe.training.loss_positions,
        loss_kernel=loss_kernel(recipe.training.loss_kernel, device),
        lora_kernel=lora_kernel(recipe.training.lora_kernel, device),
        optimizer=optimizer_name(recipe.training.optim),
        base_dtype=base_dtype(recipe, precision, model is not None and has_frozen_base(model)),
        padding_free=padding_free(recipe.training.padding_free, attention, recipe.data.packing,
                                  recipe.training.batch_size, model is None or takes_position_ids(model)),
        attention=attention,
    )
