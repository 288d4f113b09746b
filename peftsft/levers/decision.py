"""`Levers`: the values a run decided for every speed lever, recorded in summary.json's `levers`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from peftsft.levers.batching import Batching
from peftsft.levers.loss_head import LossHead


@dataclass
class Levers:
    precision: str  # autocast: bf16 | fp16 | fp32
    attention: str  # the attention function training runs with (attention.NAME: peftsft's CPU kernel)
    batching: Batching
    optimizer: str
    lora_kernel: str  # "peftsft": lora_kernel's fused functions; "peft": peft's own layers
    loss_head: LossHead | None  # None where no LM head trains
    adapter_dtype: str | None  # trainable weights on a quantized base; None without one
    base_dtype: str | None  # the frozen base under adapters; None: as loaded
    threads: int
    activation_checkpointing: bool = False
    checkpointing_reason: str = "set in the recipe"
    mlp_tiling: bool = False  # gated MLPs run in token tiles, each recomputed in the backward
    fallbacks: list[str] = field(default_factory=list)  # patches that could not apply on these versions, and why

    def describe(self) -> str:
        dtypes = f", {self.adapter_dtype} adapters" if self.adapter_dtype else ""
        dtypes += f", {self.base_dtype} frozen base" if self.base_dtype else ""
        head = f", {self.loss_head.describe()}" if self.loss_head else ""
        return (
            f"{self.precision}{dtypes}, {self.batching.describe()}, {self.attention} attention, {self.optimizer}, "
            f"{self.threads} threads{head}, {self.lora_kernel} LoRA layers, activation checkpointing "
            f"{'on' if self.activation_checkpointing else 'off'} ({self.checkpointing_reason})"
            + (", MLP in token tiles" if self.mlp_tiling else "")
        )

    def as_dict(self) -> dict:
        """summary.json's `levers`: flat keys, as runs have recorded them."""
        record = asdict(self)
        record.update(record.pop("batching"))
        head = record.pop("loss_head")
        if head is not None:
            record.update(loss_kernel=head["kernel"], loss_vocab_chunk=head["vocab_chunk"],
                          loss_positions=head["positions"])  # fmt: skip
            source = "TRL's fused chunked log-probs" if head["kernel"] == "trl" else "peftsft's CPU log-probs (token blocks)"
            record["loss_head"] = f"{source} (no full logits)"
        return record
