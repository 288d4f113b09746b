"""benchmarks/gpu_check.py --dry-run: the GPU check's whole path on tiny shapes on the CPU, so it cannot rot
before a GPU machine runs it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # every benchmark arm in its own process
def test_gpu_check_dry_run_runs_every_arm_on_both_models_and_reports(tmp_path):
    out = tmp_path / "check"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--dry-run", "--out", str(out),
                           "--models", str(tmp_path / "shapes")], capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((out / "results.json").read_text())
    arms = {(a["model"], a["arm"]): a for a in result["arms"]}
    shape = "Llama-3.1-8B shape"  # every arm kind; SmolLM2's stand-in takes the same path with one pair
    expected = {("SmolLM2-135M", "trl_lora"), ("SmolLM2-135M", "lora")} | {
        (shape, a) for a in ("trl_lora", "trl_qlora", "lora", "qlora")}
    assert set(arms) == expected and all(a["ok"] for a in arms.values())
    for model, arm, baseline in (("SmolLM2-135M", "lora", "trl_lora"), (shape, "lora", "trl_lora"),
                                 (shape, "qlora", "trl_qlora")):
        record = arms[(model, arm)]
        assert record["reference"] == baseline and record["ratios"]["tokens_per_s"] > 0  # measured side by side
        assert record["plan"]["peak_bytes"] > 0 and "plan_error" in record  # plan against the measured peak
    config = json.loads((tmp_path / "shapes" / "llama-3.1-8b-tiny" / "config.json").read_text())
    assert (config["vocab_size"], config["tie_word_embeddings"]) == (128256, False)  # the 8B shape's kind
    assert result["gpu_tests"]["command"].endswith("--collect-only") and result["gpu_tests"]["ok"]
    md = (out / "results.md").read_text()
    assert "**Dry run**" in md and "the CPU (no CUDA GPU)" in md and "| Llama-3.1-8B shape | qlora |" in md
