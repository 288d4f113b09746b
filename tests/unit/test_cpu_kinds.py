"""CPU kinds (AVX2 only, AVX-512-BF16/AMX): precision "auto", doctor's bitsandbytes path, and a quiet CLI."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from rich.console import Console

from peftsft.core.quiet import NOISY_LOGS, NOISY_WARNINGS, _drop_known_noise
from peftsft.core import machine as rules
from peftsft.training.recipe import load_recipe

REPO = Path(__file__).resolve().parents[2]
# bf16 autocast against fp32, same seed and batches, 4 steps of the tiny Llama at lr 1e-2: the loss at every step
# within 1e-3 (relative; measured ≤ 1.1e-5 on an AVX-512-BF16 CPU)
BF16_LOSS_RTOL = 1e-3
LIBRARY_NOISE = ("Warning", "warnings.warn", "Failed to load", "deprecated", "kernels-community")


@pytest.mark.slow
def test_bf16_autocast_training_tracks_fp32_loss(tiny_recipe):
    from peftsft.artifacts.tasks import run

    losses = {}
    for precision in ("fp32", "bf16"):
        recipe = load_recipe(tiny_recipe(), [f'training.precision="{precision}"', "training.max_steps=4",
                                             f'run.name="{precision}"'])
        summary = run(recipe, Console(quiet=True))
        records = [json.loads(line) for line in (Path(summary["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
        losses[precision] = [r["loss"] for r in records if "loss" in r]
    assert len(losses["fp32"]) == len(losses["bf16"]) == 4
    for step, (fp32, bf16) in enumerate(zip(losses["fp32"], losses["bf16"]), 1):
        assert abs(bf16 - fp32) / fp32 < BF16_LOSS_RTOL, (step, losses)
    assert losses["bf16"] != losses["fp32"]  # autocast did compute in bf16


def test_doctor_names_the_bitsandbytes_cpu_path_and_the_cpu_feature(monkeypatch):
    import peftsft.models as models
    from peftsft.commands.doctor import bitsandbytes_cpu_path

    monkeypatch.setattr(rules, "cpu_features", lambda: {"avx2", "avx512_bf16"})
    monkeypatch.setattr(models, "bnb_packed_kernel_available", lambda: True)
    line = bitsandbytes_cpu_path()
    assert line.startswith("reference, pinned") and "avx512_bf16 present" in line and "packed" in line
    monkeypatch.setattr(rules, "cpu_features", lambda: {"avx2"})
    monkeypatch.setattr(models, "bnb_packed_kernel_available", lambda: False)
    line = bitsandbytes_cpu_path()
    assert line.startswith("reference (") and "avx512_bf16 absent" in line and "no packed kernel" in line
    monkeypatch.setattr(rules, "cpu_features", lambda: {"avx2", "avx512_bf16"})  # QEMU's Haswell model on this host
    line = bitsandbytes_cpu_path()
    assert line.startswith("reference (") and "CPUID check finds none" in line and "no packed kernel" in line


def test_known_library_noise_is_dropped_and_everything_else_kept(caplog):
    logger_name, noise, _ = NOISY_LOGS[0]
    category = NOISY_WARNINGS[0][0]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _drop_known_noise()
        with caplog.at_level(logging.WARNING):
            logging.getLogger(logger_name).warning(noise + ": No module named 'kernels'")
            logging.getLogger(logger_name).warning("some other bitsandbytes warning")
        warnings.warn("`is_gradient_checkpointing` is deprecated and will be removed in v6.", category)
        warnings.warn("a future change that may matter", FutureWarning)
    assert [r.getMessage() for r in caplog.records] == ["some other bitsandbytes warning"]
    assert [str(w.message) for w in caught] == ["a future change that may matter"]


def _cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "peftsft", *args], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=600)


@pytest.mark.slow
def test_validate_prints_no_library_warning():
    proc = _cli("validate", "recipes/llama-chat-lora.toml")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "" and proc.stdout.startswith("ok "), proc.stdout + proc.stderr


@pytest.mark.slow
def test_a_qlora_run_prints_no_library_warning(tiny_recipe):
    """4-bit (bitsandbytes imported and used), "before" samples (a no-grad forward), 3 steps."""
    recipe = tiny_recipe('sample_prompts = ["Who are you?"]\nsample_max_new_tokens = 2')
    proc = _cli("run", str(recipe), "--set", "quantization.bits=4")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    assert "done 3 steps" in proc.stdout
    assert not [word for word in LIBRARY_NOISE if word in output], output[-3000:]
