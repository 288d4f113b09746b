"""Lever `loss_head`: how the LM head scores tokens — never as whole-vocabulary logits for the batch.

Rule: on the CPU peftsft's kernel (kernel.py: token blocks over the whole vocabulary), on CUDA TRL's fused chunked
head (its Triton kernel); `[training] loss_kernel` overrides. TRL's head works in vocabulary slices of
`loss_vocab_chunk` (auto: TRL's 32,768 on CUDA, 4,096 elsewhere, where its torch code keeps ~9 fp32 copies of a
tile) and scores `loss_positions`: "supervised" only (off CUDA TRL scores every position, to keep shapes static
for XLA: wasted work on prompts) or "all".
Memory term: the logit tiles or blocks alive at the head's peak, the hidden state's gradient, a trainable head's
fp32 weight-gradient accumulator. Patch: TRL reads its slice width, its "use Triton" test and its kernel class as
module attributes of trl.trainer.utils on every call (no argument exists): set while training, restored after.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

from peftsft.core.compat import require
from peftsft.levers.situation import Situation

TRL = ((1, 16), (1, 99))  # trl.trainer.utils' _CHUNKED_LOGPROB_CHUNK_SIZE, _use_triton, _ChunkedLogProbFunction
TRL_VOCAB_CHUNK, CPU_VOCAB_CHUNK = 32768, 4096
# TRL's fused head scores logits in [LOSS_TILE_TOKENS x vocabulary slice] tiles; its torch code (no Triton: the
# CPU) holds ~9 fp32 tiles at its peak (logits, scaled, log-probabilities, probabilities, one-hot, gradient,
# temporaries), its Triton kernels work in place in one
LOSS_TILE_TOKENS, TILES_TORCH, TILES_TRITON = 4096, 9, 1
# peftsft's kernel: its backward holds ~4 token blocks (logits turned into log-probabilities in place,
# probabilities, the gradient, a temporary); fp32 logits are shifted in place, one block fewer
BLOCKS_PEFTSFT = 4


@dataclass(frozen=True)
class LossHead:
    kernel: str  # "peftsft" | "trl"
    vocab_chunk: int  # TRL's vocabulary slice
    positions: str  # "supervised" | "all"

    def describe(self) -> str:
        if self.kernel == "trl":
            return f"loss head on {self.positions} positions in {self.vocab_chunk}-wide vocabulary slices"
        return f"peftsft's CPU loss head on {self.positions} positions"


def decide(situation: Situation) -> LossHead | None:
    """None where no LM head trains (classification) or where the trainer scores whole logits itself (TRL's ORPO and
    CPO trainers, behind orpo and simpo); DPO and KTO score through TRL's fused head, as SFT does."""
    if not situation.trains_language_model or situation.preference_method in ("orpo", "simpo"):
        return None
    t, device = situation.recipe.training, situation.device
    kernel = "peftsft" if t.loss_kernel == "auto" and device == "cpu" else "trl"
    chunk = int(t.loss_vocab_chunk) if t.loss_vocab_chunk != "auto" else (
        TRL_VOCAB_CHUNK if device == "cuda" else CPU_VOCAB_CHUNK)  # fmt: skip
    return LossHead(kernel, chunk, t.loss_positions)


def memory_bytes(head: LossHead, tokens: int, hidden: int, vocab: int, device: str, precision: str,
                 head_weight_grad_bytes: int) -> int:  # fmt: skip
    """Memory term: what the head holds at its peak for `tokens` scored positions."""
    from peftsft.levers.loss_head.kernel import block_rows

    if head.kernel == "peftsft":
        block = min(tokens, block_rows(vocab)) * vocab
        blocks = BLOCKS_PEFTSFT - (precision == "fp32")
        return int(blocks * block * 4 + tokens * hidden * 4 + head_weight_grad_bytes)
    tile = min(tokens, LOSS_TILE_TOKENS) * min(vocab, head.vocab_chunk)
    if device == "cuda":
        held = TILES_TRITON * tile * (2 if precision in ("bf16", "fp16") else 4)
    else:
        held = TILES_TORCH * tile * 4
    return int(held + tokens * hidden * 4 + head_weight_grad_bytes)


@contextlib.contextmanager
def patch(head: LossHead | None, fallbacks: list[str]) -> Iterator[None]:
    """TRL's head on `head`'s slice, positions and kernel while the block runs; a missing attribute is a named
    fallback (recorded in summary.json's levers), never a silent no-op."""
    if head is None:
        yield
        return
    require("trl", *TRL, "the loss head lever")
    import trl.trainer.utils as trl_utils

    wanted = {"_CHUNKED_LOGPROB_CHUNK_SIZE": head.vocab_chunk}
    if head.positions == "supervised":
        wanted["_use_triton"] = lambda device: True  # the kernel module keeps its own _use_triton
    if head.kernel == "peftsft":
        from peftsft.levers.loss_head.kernel import CpuLogProbFunction

        wanted["_ChunkedLogProbFunction"] = CpuLogProbFunction
    saved = {}
    for name, value in wanted.items():
        if not hasattr(trl_utils, name):
            fallbacks.append(f"trl.trainer.utils.{name} is missing in this TRL: that lever falls back to TRL's default")
            warnings.warn(f"peftsft: {fallbacks[-1]}", stacklevel=2)
            continue
        saved[name] = getattr(trl_utils, name)
        setattr(trl_utils, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(trl_utils, name, value)
