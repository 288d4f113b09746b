"""Lever precision: bf16 autocast only where the CPU multiplies bf16 natively (and torch runs its AVX-512 kernels)."""

from __future__ import annotations

import pytest

from peftsft.core import machine as rules
from peftsft.levers.precision import resolve


@pytest.mark.parametrize("flags, capability, expected", [
    ({"avx2", "avx512_bf16"}, "AVX512", "bf16"), ({"avx2", "amx_bf16"}, "AVX512", "bf16"),
    ({"avx2", "fma"}, "AVX2", "fp32"), (set(), "DEFAULT", "fp32"),
    ({"avx2", "avx512_bf16"}, "AVX2", "fp32"),  # the CPU has it, torch told to run AVX2 kernels (ATEN_CPU_CAPABILITY)
])  # fmt: skip
def test_precision_auto_is_bf16_only_on_cpus_with_native_bf16(monkeypatch, flags, capability, expected):
    import torch

    monkeypatch.setattr(rules, "cpu_features", lambda: flags)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    assert resolve("auto", "cpu") == expected
    assert resolve("fp32", "cpu") == "fp32"  # an explicit setting wins


def test_a_cuda_plan_without_cuda_assumes_bf16(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve("auto", "cuda") == "bf16"
    assert resolve("fp16", "cuda") == "fp16"
