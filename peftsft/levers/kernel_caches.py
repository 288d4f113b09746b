"""Lever `kernel_caches`: oneDNN's kernel caches bounded for the process before its first bf16 product on the CPU.

Why: PyTorch's CPU bf16 matmuls run through oneDNN, whose primitive cache and ideep's LRU cache each keep up to
1,024 compiled kernels by default, keyed by shape. Padding-free batches give every product a new token count each
step, so the caches fill through an epoch with kernels no later step reuses. CAPACITY keeps a whole step's kernels
for batches of up to ~50 samples (a smaller cache than a step needs would rebuild kernels in every layer).
Rule: bound both unless the user set them. Memory term: the larger capacity in effect × KERNEL_BYTES where products
run in bf16 on the CPU. Patch: process-wide — both variables are read once, when oneDNN builds its first kernel,
so the command line applies it before any command runs (`prepare_process`), not around training.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

CAPACITY = 256
VARIABLES = ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")  # oneDNN's own cache; ideep's, in PyTorch
KERNEL_BYTES = 2**20  # what one cached shape holds in both caches together, a measured round figure (docs/memory-plan.md)


def prepare_process(environ: MutableMapping[str, str] = os.environ) -> None:
    """Cap both caches at CAPACITY kernels unless `environ` sets them already."""
    for name in VARIABLES:
        environ.setdefault(name, str(CAPACITY))


def memory_bytes(device: str, precision: str, environ: MutableMapping[str, str] = os.environ) -> int:
    """Memory term: what the caches hold once full where bf16 products run on the CPU (else nothing): the larger of
    the two capacities in effect (as bounded, or as the user set them), times KERNEL_BYTES."""
    if device != "cpu" or precision != "bf16":
        return 0
    capacities = []
    for name in VARIABLES:
        try:
            capacities.append(max(0, int(environ.get(name, CAPACITY))))
        except ValueError:  # not a number: the estimate counts the bound instead of failing the plan
            capacities.append(CAPACITY)
    return max(capacities) * KERNEL_BYTES
