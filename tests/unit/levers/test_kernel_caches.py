"""oneDNN's kernel caches: bounded for peftsft's processes, so padding-free training does not pile up kernels."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from peftsft.levers.kernel_caches import CAPACITY, KERNEL_BYTES, VARIABLES, memory_bytes
from peftsft.levers.kernel_caches import prepare_process as bound_kernel_caches


def cached_kernel_bytes(environ):
    return memory_bytes("cpu", "bf16", environ)

# bf16 products of 1,600 token counts; prints the RSS growth (MiB) over the last 400, after the caches are full (bounded
# ones fill later on an AMX CPU, where several token counts share a kernel: docs/memory-plan.md)
GROWTH = """
import sys, torch
if sys.argv[1] == "bounded":
    from peftsft.levers import prepare_process
    prepare_process()
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
w = torch.randn(128, 128, dtype=torch.bfloat16)
for t in range(64, 64 + 1200):
    torch.mm(torch.randn(t, 128, dtype=torch.bfloat16), w)
before = rss()
for t in range(64 + 1200, 64 + 1600):
    torch.mm(torch.randn(t, 128, dtype=torch.bfloat16), w)
print(rss() - before)
"""


def test_bounds_both_caches_and_keeps_a_users_setting():
    environ = {}
    bound_kernel_caches(environ)
    assert environ == {name: str(CAPACITY) for name in VARIABLES}
    environ = {"LRU_CACHE_CAPACITY": "2048"}
    bound_kernel_caches(environ)
    assert environ == {"LRU_CACHE_CAPACITY": "2048", "ONEDNN_PRIMITIVE_CACHE_CAPACITY": str(CAPACITY)}
    assert cached_kernel_bytes(environ) == 2048 * KERNEL_BYTES  # the larger capacity in effect
    unreadable = {"LRU_CACHE_CAPACITY": "lots", "ONEDNN_PRIMITIVE_CACHE_CAPACITY": "0"}
    assert cached_kernel_bytes(unreadable) == CAPACITY * KERNEL_BYTES  # a value that is no number: the bound


def test_the_cli_bounds_them_before_a_command_runs(monkeypatch):
    from peftsft.commands import cli

    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    seen = {}
    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    args = parser.parse_args(["doctor"])
    monkeypatch.setattr(parser, "parse_args", lambda argv=None: args)
    monkeypatch.setattr(args, "func", lambda _: seen.update({n: os.environ.get(n) for n in VARIABLES}) or 0)
    assert cli.main([]) == 0
    assert seen == {name: str(CAPACITY) for name in VARIABLES}


@pytest.mark.slow
def test_bounded_caches_stop_growing_with_new_shapes():
    """Measured in fresh processes (the variables are read at the first kernel): past the capacity, new shapes
    evict old kernels instead of adding ~0.5 MiB each (measured: the default caches +100 MiB for every 150 new
    shapes up to ~1,000; bounded ones level off at ~290 MiB)."""
    env = {k: v for k, v in os.environ.items() if k not in VARIABLES}
    growth = {}
    for mode in ("default", "bounded"):
        out = subprocess.run([sys.executable, "-c", GROWTH, mode], env=env, capture_output=True, text=True,
                             check=True, timeout=300)  # fmt: skip
        growth[mode] = float(out.stdout.strip().splitlines()[-1])
    if growth["default"] < 50:
        pytest.skip(f"bf16 products keep no kernel per shape on this CPU (+{growth['default']:.0f} MiB over 400 new "
                    "shapes with the default caches): nothing to bound")  # fmt: skip
    assert growth["bounded"] < 20, growth
