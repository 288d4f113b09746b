"""Facts about this machine that several places ask: the CPU's feature flags and the memory still available."""

from __future__ import annotations

from pathlib import Path


def cpu_features() -> set[str]:
    """The CPU's feature flags as Linux reports them (empty where /proc/cpuinfo is unreadable)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_has_fast_bf16(capability: str | None = None) -> bool:
    """Native bf16 in the CPU (AVX-512-BF16 or AMX) and torch running its AVX-512 kernels: with
    ATEN_CPU_CAPABILITY=avx2 (or a build without them) torch takes its slow bf16 path on the same CPU."""
    if capability is None:
        import torch

        capability = torch.backends.cpu.get_cpu_capability()
    return bool({"avx512_bf16", "amx_bf16"} & cpu_features()) and capability.startswith("AVX512")


def memory_available(device: str) -> int | None:
    """Bytes a run can still allocate: free memory of the current CUDA device, or the RAM Linux calls available."""
    import torch

    if device == "cuda":
        return int(torch.cuda.mem_get_info()[0]) if torch.cuda.is_available() else None
    try:
        for line in open("/proc/meminfo", encoding="ascii"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None
