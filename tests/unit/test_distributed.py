"""Two CPU processes (torchrun, gloo) train like one process with the same global batch; one writes outputs."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# Same samples in the same global batches: sequential sampling; 2 × 4 per device = 8 in one process.
COMMON = ['training.sampling="sequential"', "training.max_steps=4", "strategy.dropout=0.0", "training.logging_steps=1"]
# Gradients are identical up to float summation order across the two processes.
LOSS_RTOL = 1e-4


def _sets(overrides):
    return [a for o in overrides for a in ("--set", o)]


def _losses(run_dir: Path) -> list[float]:
    return [json.loads(l)["loss"] for l in (run_dir / "metrics.jsonl").read_text().splitlines() if '"loss"' in l]


@pytest.mark.skipif(shutil.which("torchrun") is None and not Path(sys.executable).with_name("torchrun").exists(),
                    reason="torchrun not installed")
def test_two_gloo_processes_match_one_process(tiny_recipe, tmp_path):
    recipe = tiny_recipe()
    single = subprocess.run(
        [sys.executable, "-m", "peftsft", "run", str(recipe), *_sets(COMMON + ["training.batch_size=8", "run.name=one"])],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert single.returncode == 0, single.stdout[-2000:] + single.stderr[-2000:]
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    multi = subprocess.run(
        [torchrun, "--nproc_per_node", "2", "--master_port", "29517", "-m", "peftsft", "run", str(recipe),
         *_sets(COMMON + ["training.batch_size=4", "run.name=two"])],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert multi.returncode == 0, multi.stdout[-3000:] + multi.stderr[-3000:]
    one, two = tmp_path / "runs" / "one", tmp_path / "runs" / "two"
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["one", "two"]
    assert (two / "adapter" / "adapter_model.safetensors").is_file()
    assert multi.stdout.count("strategy lora:") == 1  # the display appears once
    a, b = _losses(one), _losses(two)
    assert len(a) == len(b) == 4
    for x, y in zip(a, b):
        assert abs(x - y) <= LOSS_RTOL * abs(x), (a, b)
    summary = json.loads((two / "summary.json").read_text())
    assert summary["world_size"] == 2
