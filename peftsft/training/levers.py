"""Speed levers: each a recipe option with an automatic default, decided once per run and recorded in summary.json.

Kept because the benchmark shows they pay on the reference job (see README "Speed"): fp32 where bf16 matmuls are
slow, length-grouped batches, activation checkpointing only when memory needs it, fp32 adapters on a quantized
base where bf16 is slow. TRL's fused, chunked LM head (no full-vocabulary logits) is always on.
`decide_levers` is the one place the run's levers are decided; everything downstream receives the `Levers`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from peftsft.core.config import Recipe
from peftsft.training.plan import estimate
from peftsft.training.rules import adapter_dtype, loss_vocab_chunk, resolve_precision


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
    fallbacks: list[str] = field(default_factory=list)  # levers trl_compat could not apply on this TRL, and why

    def describe(self) -> str:
        adapters = f", {self.adapter_dtype} adapters" if self.adapter_dtype else ""
        packing = ", packed" if self.packing else ""
        chunk = f", loss head on {self.loss_positions} positions in {self.loss_vocab_chunk}-wide vocabulary slices"
        return (
            f"{self.precision}{adapters}, {self.sampling} batches{packing}, {self.threads} threads{chunk}, "
            f"activation checkpointing {'on' if self.activation_checkpointing else 'off'} ({self.checkpointing_reason})"
        )

    def as_dict(self) -> dict:
        return {**asdict(self), "loss_head": "TRL's fused chunked log-probs (no full logits)"}


def decide_levers(recipe: Recipe, device: str, longest_sample: int | None = None) -> Levers:
    """The levers this run uses on `device`; `longest_sample` (tokens) sizes the memory plan behind "auto"."""
    import torch

    precision = resolve_precision(recipe.training.precision, device)
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
    )
