"""`peftsft doctor`: versions, devices, the bitsandbytes backend, caches, and known-bad combinations."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

# (package, bad version prefix, why) — combinations users have hit; extend as they are found.
KNOWN_BAD = [
    ("transformers", "4.", "peftsft needs transformers 5 (dtype=, activation checkpointing, GGUF loader)"),
    ("trl", "0.", "peftsft needs TRL 1.x (processing_class=, max_length in SFTConfig)"),
    ("bitsandbytes", "0.4", "bitsandbytes < 0.48 has no CPU backend for 4-bit training"),
    ("torch", "2.0", "torch 2.0 lacks the SDPA masks transformers 5 needs"),
]


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def bitsandbytes_backend() -> str:
    try:
        import bitsandbytes as bnb
        import torch
    except ImportError:
        return "not installed (quantization unavailable)"
    try:
        layer = bnb.nn.Linear4bit(64, 64, compute_dtype=torch.float32)
        layer = layer.to("cuda" if torch.cuda.is_available() else "cpu")
        layer(torch.randn(1, 64, device=layer.weight.device))
        return f"{bnb.__version__}: 4-bit works on {'cuda' if torch.cuda.is_available() else 'cpu'}"
    except Exception as exc:  # a broken backend is exactly what doctor must report, whatever it raises
        return f"{bnb.__version__}: 4-bit FAILS ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})"


def bitsandbytes_cpu_path() -> str:
    """The CPU 4-bit path peftsft runs on, and the CPU feature that decides what bitsandbytes alone would pick."""
    from peftsft.models import bnb_packed_kernel_available
    from peftsft.core.machine import cpu_features

    packed = bnb_packed_kernel_available()
    if packed is None:
        return "none (bitsandbytes not installed)"
    listed = "avx512_bf16" in cpu_features()  # what Linux reports; bitsandbytes asks CPUID itself
    flag = "avx512_bf16 " + ("present" if listed else "absent")
    if packed:
        return (f"reference, pinned (CPU: {flag}; bitsandbytes alone would switch eval-mode layers to its packed "
                "AVX-512-BF16 layout, whose kernel computes in bf16 and has no backward)")
    if listed:  # Linux lists the flag, CPUID does not: an emulator (QEMU) or a VM masking it
        return ("reference (CPU: Linux lists avx512_bf16, but bitsandbytes' own CPUID check finds none, as under an "
                "emulator; bitsandbytes has no packed kernel here)")
    return f"reference (CPU: {flag}; bitsandbytes has no packed kernel here)"


def devices() -> list[str]:
    import torch

    from peftsft.core.machine import cpu_has_fast_bf16

    out = [f"cpu: {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, "
           f"capability {torch.backends.cpu.get_cpu_capability()}, fast bf16 {'yes' if cpu_has_fast_bf16() else 'no'}"]
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        out.append(f"cuda:{i}: {props.name}, {props.total_memory / 2**30:.1f} GiB, bf16 {torch.cuda.is_bf16_supported()}")
    return out


def version_warnings(versions: dict[str, str]) -> list[str]:
    return [f"{pkg} {versions[pkg]}: {why}" for pkg, prefix, why in KNOWN_BAD
            if versions.get(pkg, "").startswith(prefix)]


def cmd_doctor(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from peftsft.models import cache_root
    from peftsft.training.report import versions

    console = Console(soft_wrap=True)
    found = versions()
    table = Table("check", "result", title="peftsft doctor")
    for name, value in found.items():
        table.add_row(name, value)
    for line in devices():
        table.add_row("device", line)
    table.add_row("bitsandbytes backend", bitsandbytes_backend())
    table.add_row("bitsandbytes CPU 4-bit path", bitsandbytes_cpu_path())
    hf_home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    for label, path in (("peftsft cache", cache_root()), ("Hugging Face cache", hf_home)):
        table.add_row(label, f"{path} ({dir_size(path) / 2**20:.1f} MiB)")
    table.add_row("offline (HF_HUB_OFFLINE)", os.environ.get("HF_HUB_OFFLINE", "0"))
    console.print(table)
    problems = version_warnings(found)
    for problem in problems:
        console.print(f"[bold yellow]known bad:[/] {problem}")
    if not problems:
        console.print("[green]no known-bad version combinations[/]")
    return 1 if problems else 0


def add_commands(sub) -> None:
    doctor = sub.add_parser("doctor", help="versions, devices, bitsandbytes backend, caches")
    doctor.set_defaults(func=cmd_doctor)
