"""oneDNN's kernel caches, bounded for the process before its first bf16 product on the CPU.

Why: PyTorch's CPU bf16 matmuls run through oneDNN, whose primitive cache and ideep's LRU cache each keep up to
1,024 compiled kernels by default, keyed by shape (~0.5–0.75 MiB each, alike for 512² and 4096² weights).
Padding-free batches give every product a new token count each step, so the caches filled up through an epoch
with kernels no later step reuses: the reference job (Zen 4, bf16; ~41 new kernels a step, 4 per sample's
attention and ~25 for the rest) held 1.54–1.58 GiB of training footprint against 1.17–1.19 GiB with both caches
at 128 entries, at the same speed (44.5 / 50.7 s against 45.4 / 56.0 s per epoch, alternating runs). 256 keeps a
whole step's kernels for batches of up to ~50 samples: a step needing more than the capacity would rebuild its
kernels in every layer (LRU order). Both variables are read once, when oneDNN builds its first kernel; a value
the user set is kept.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

CAPACITY = 256
VARIABLES = ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")  # oneDNN's own cache; ideep's, in PyTorch
# what one cached shape holds in both caches together: 0.65 MiB per kernel for 100–140-row products of 512² to 4096²
# weights, 1.1 MiB at 256 entries of 64–664-row products of a 128² weight; the reference job 1.17–1.19 GiB at 128
# entries against 1.31–1.39 at 256 (~1.1–1.7 MiB per entry)
KERNEL_BYTES = 2**20


def bound_kernel_caches(environ: MutableMapping[str, str] = os.environ) -> None:
    """Cap both caches at CAPACITY kernels unless `environ` sets them already."""
    for name in VARIABLES:
        environ.setdefault(name, str(CAPACITY))


def cached_kernel_bytes(environ: MutableMapping[str, str] = os.environ) -> int:
    """Memory the caches hold once full: the larger of the two capacities in effect (as bounded, or as the user set
    them), times KERNEL_BYTES."""
    capacities = []
    for name in VARIABLES:
        try:
            capacities.append(max(0, int(environ.get(name, CAPACITY))))
        except ValueError:  # not a number: the estimate counts the bound instead of failing the plan
            capacities.append(CAPACITY)
    return max(capacities) * KERNEL_BYTES
