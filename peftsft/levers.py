"""Speed levers: each a recipe option with an automatic default, resolved once per run and recorded in summary.json.

Kept because the benchmark shows they pay on the reference job (see README "Speed"): fp32 where bf16 matmuls are
slow, length-grouped batches, activation checkpointing only when memory needs it, fp32 adapters on a quantized
base where bf16 is slow. TRL's fused, chunked LM head (no full-vocabulary logits) is always on.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .config import Recipe


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


def resolve_levers(recipe: Recipe, device: str, longest_sample: int | None = None) -> Levers:
    """The levers this run uses on `device`; `longest_sample` (tokens) sizes the memory plan behind "auto"."""
    import torch

    from .plan import estimate
    from .train import resolve_precision

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


def adapter_dtype(recipe: Recipe, precision: str) -> str | None:
    """The trainable weights' dtype on a quantized base (None without one): bf16 only where training runs in bf16."""
    if recipe.quantization.bits is None:
        return None
    if recipe.quantization.adapter_dtype != "auto":
        return recipe.quantization.adapter_dtype
    return "bfloat16" if precision == "bf16" else "float32"


# TRL's own slice; its CUDA kernel scores a slice in place, the torch code it runs elsewhere keeps ~9 copies
TRL_VOCAB_CHUNK, CPU_VOCAB_CHUNK = 32768, 4096


def loss_vocab_chunk(setting: int | str, device: str) -> int:
    if setting != "auto":
        return int(setting)
    return TRL_VOCAB_CHUNK if device == "cuda" else CPU_VOCAB_CHUNK


def set_loss_head(levers: Levers) -> None:
    """Point TRL's fused LM head at the lever's vocabulary slice and scored positions.

    Why module attributes: TRL offers no argument for either. It reads `_CHUNKED_LOGPROB_CHUNK_SIZE` on every call;
    on CPU its 32768-wide fp32 tiles are the largest single allocation of a LoRA step (~0.6 GiB at 800 tokens), and
    4096-wide ones are also faster (measured). It scores only the supervised positions where `_use_triton` says so
    (CUDA), and every position elsewhere, to keep shapes static for XLA; on CPU that only wastes the head's work on
    prompts (~15% of a SmolLM2 step at the default recipe's 42% supervised tokens, measured). The kernel module keeps
    its own `_use_triton`, so the kernels themselves are unaffected."""
    import trl.trainer.utils as trl_utils

    if hasattr(trl_utils, "_CHUNKED_LOGPROB_CHUNK_SIZE"):
        trl_utils._CHUNKED_LOGPROB_CHUNK_SIZE = levers.loss_vocab_chunk
    if hasattr(trl_utils, "_use_triton"):
        from trl.kernels.chunked_logprob import _use_triton

        compact = levers.loss_positions == "supervised"
        trl_utils._use_triton = (lambda device: True) if compact else _use_triton


def set_adapter_dtype(model, levers: Levers) -> None:
    """Undo TRL's bf16 cast of the trainable weights on a quantized base where the levers say float32.

    Why: TRL casts them unconditionally (QLoRA paper); on CPUs without bf16 matmuls that makes every adapter
    matmul ~100x slower, while fp32 adapters learn at least as exactly."""
    import torch

    if levers.adapter_dtype != "float32":
        return
    for param in model.parameters():
        if param.requires_grad and param.dtype == torch.bfloat16:
            param.data = param.data.float()
