"""Lever `mlp_tiling`: a long batch's gated MLPs run tile by tile of tokens, each tile recomputed in the backward.

Why: at long context the MLP's intermediates (gate, up, their activation and product: four tokens × intermediate
tensors, intermediate ≈ 4 × hidden) are the largest thing a layer holds while it is recomputed and differentiated;
tiled, only one tile's exist at a time (the idea of DeepSpeed's TiledMLP for long-sequence training). The price is
one more forward of the MLP per tile, so "auto" turns it on only where memory is already the constraint: with
activation checkpointing, for batches over TILE_TOKENS tokens.
Memory term: the recomputed layer keeps no MLP intermediates per token (activations.py), one tile's instead.
Patch: the listed gated MLP classes (lora_kernel/modules.py) split their input into tiles under
torch.utils.checkpoint while training; restored after.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from peftsft.levers.lora_kernel.modules import GATED_MLPS, listed, qualified_name
from peftsft.levers.situation import Situation

TILE_TOKENS = 4096


def decide(situation: Situation, checkpointing: bool) -> bool:
    setting = situation.recipe.training.mlp_tiling
    if setting != "auto":
        return bool(setting)
    if not situation.trains_language_model:
        return False
    recipe = situation.recipe
    longest = min(situation.longest_sample or recipe.data.max_length, recipe.data.max_length)
    tokens = recipe.training.batch_size * (recipe.data.max_length if recipe.data.packing else longest)
    return checkpointing and tokens > TILE_TOKENS


def tile_elements(intermediate: int) -> int:
    """Memory term: values one tile holds at once (its intermediates in the forward and the backward)."""
    return 6 * TILE_TOKENS * intermediate


@contextlib.contextmanager
def patch(model, on: bool) -> Iterator[None]:
    if not on or model is None:
        yield
        return
    originals = {}
    for module in model.modules():
        cls = type(module)
        if cls not in originals and _tileable(cls):
            originals[cls] = cls.forward
            cls.forward = _tiled(cls.forward)
    try:
        yield
    finally:
        for cls, forward in originals.items():
            cls.forward = forward


def _tileable(cls: type) -> bool:
    """A listed gated MLP class, running its own forward or the lora_kernel lever's fused one (per token, both)."""
    own_or_fused = listed(cls, GATED_MLPS) or getattr(cls.forward, "peftsft_fused", False)
    return qualified_name(cls) in GATED_MLPS and own_or_fused and not getattr(cls.forward, "peftsft_tiled", False)


def _tiled(original):
    import torch
    from torch.utils.checkpoint import checkpoint

    def forward(self, x):
        tokens = x.shape[:-1].numel()
        if not torch.is_grad_enabled() or tokens <= TILE_TOKENS:
            return original(self, x)
        flat = x.reshape(tokens, x.shape[-1])
        tiles = [checkpoint(original, self, tile, use_reentrant=False) for tile in flat.split(TILE_TOKENS)]
        return torch.cat(tiles).view(*x.shape[:-1], -1)

    forward.peftsft_fused = getattr(original, "peftsft_fused", False)
    forward.peftsft_tiled = True
    return forward
