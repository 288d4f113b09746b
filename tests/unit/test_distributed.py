"""Several processes train like one process with the same global batch; one writes outputs and shows the display.

Launched both ways the README gives: torchrun, and `accelerate launch` with the shipped configs
(ddp-cpu.yaml runs here: 2 CPU processes over gloo; the others need GPUs and carry the `gpu` marker).
"""

import importlib.util
import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import write_tiny_recipe

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "recipes" / "accelerate"
GPU_ONLY = ["ddp.yaml", "fsdp-lora.yaml", "fsdp-qlora.yaml", "deepspeed-zero2.yaml", "deepspeed-zero3.yaml"]
# Same samples in the same global batch of 8: sequential sampling, 4 per device; global_batch_size derives
# grad_accum = 2 in one process and 1 in two, so one recipe runs alike under every launcher. Every step updates
# at the full learning rate (no warm-up: its first step would run at 0 and carry nothing); 6 steps = 2 epochs.
STEPS = 6
COMMON = ['training.sampling="sequential"', f"training.max_steps={STEPS}", "strategy.dropout=0.0",
          "training.logging_steps=1", "training.batch_size=4", "training.global_batch_size=8",
          "training.warmup_ratio=0.0", 'training.lr_scheduler="constant"']
# Gradients are identical up to float summation order across the two processes.
LOSS_RTOL = 1e-4
# Final adapter tensors: largest |difference| relative to the tensor's largest |value|.
ADAPTER_RTOL = 1e-4


def _tool(name: str) -> str | None:
    path = Path(sys.executable).with_name(name)
    return str(path) if path.exists() else shutil.which(name)


def free_port() -> str:
    """A port nothing listens on now: parallel runs (and other users of the machine) never collide on a fixed one."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


def torchrun() -> list:
    return [_tool("torchrun"), "--nproc_per_node", "2", "--master_port", free_port()]


needs_torchrun = pytest.mark.skipif(_tool("torchrun") is None, reason="torchrun not installed")


def _launch(launcher: list, recipe: Path, name: str, *overrides: str) -> subprocess.CompletedProcess:
    """`launcher -m peftsft run RECIPE` with COMMON, then `overrides`, as run `name`."""
    sets = [a for o in [*COMMON, *overrides, f"run.name={name}"] for a in ("--set", o)]
    return subprocess.run([*launcher, "-m", "peftsft", "run", str(recipe), *sets],
                          cwd=REPO, capture_output=True, text=True, timeout=600)


def _run(launcher: list, recipe: Path, name: str, *overrides: str) -> tuple[subprocess.CompletedProcess, Path]:
    """A launch that must succeed; the completed process and its run dir, the only new one."""
    runs = recipe.parent / "runs"
    before = set(runs.iterdir()) if runs.is_dir() else set()
    result = _launch(launcher, recipe, name, *overrides)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert set(runs.iterdir()) - before == {runs / name}  # one run dir, written by one process
    return result, runs / name


def adapter_difference(a: Path, b: Path) -> float:
    """max over tensors of max |a - b| / max |a|, between two runs' final adapters."""
    ta, tb = (load_file(d / "adapter" / "adapter_model.safetensors") for d in (a, b))
    assert ta.keys() == tb.keys() and ta
    return max(((ta[k] - tb[k]).abs().max() / ta[k].abs().max().clamp_min(1e-12)).item() for k in ta)


def _loss_records(run_dir: Path) -> list[dict]:
    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


@pytest.fixture(scope="module")
def recipe(tmp_path_factory, tiny_model_dir) -> Path:
    return write_tiny_recipe(tmp_path_factory.mktemp("distributed"), tiny_model_dir)


@pytest.fixture(scope="module")
def one_process(recipe) -> Path:
    """The reference: one process, grad_accum derived as 2."""
    _, run_dir = _run([sys.executable], recipe, "one")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["world_size"], summary["global_batch_size"]) == (1, 8)
    return run_dir


def assert_two_processes_like_one(result: subprocess.CompletedProcess, run_dir: Path, one: Path) -> None:
    """One writer (one adapter, each metrics step once), one display and contract, losses as one process."""
    assert [p.parent for p in run_dir.rglob("adapter_model.safetensors")] == [run_dir / "adapter"]
    for line in ("pre-flight data contract", "strategy lora:", "done "):  # the display (and contract) once
        assert result.stdout.count(line) == 1, (line, result.stdout[-3000:])
    two = _loss_records(run_dir)
    assert [r["step"] for r in two] == list(range(1, STEPS + 1))  # no step written twice
    a, b = [r["loss"] for r in _loss_records(one)], [r["loss"] for r in two]
    assert len(a) == len(b) == STEPS
    for x, y in zip(a, b):
        assert abs(x - y) <= LOSS_RTOL * abs(x), (a, b)
    assert adapter_difference(one, run_dir) <= ADAPTER_RTOL
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["world_size"], summary["global_batch_size"]) == (2, 8)


@needs_torchrun
@pytest.mark.slow
def test_torchrun_two_gloo_processes_match_one_process(recipe, one_process):
    assert_two_processes_like_one(*_run(torchrun(), recipe, "torchrun"), one_process)


@pytest.mark.slow
def test_negative_control_a_different_global_batch_ends_elsewhere(recipe, one_process):
    """The equality above can fail: the same steps over a global batch of 4 instead of 8 give another adapter."""
    _, other = _run([sys.executable], recipe, "global4", "training.global_batch_size=4")
    assert [r["step"] for r in _loss_records(other)] == list(range(1, STEPS + 1))
    assert adapter_difference(one_process, other) > 100 * ADAPTER_RTOL


@needs_torchrun
@pytest.mark.slow
def test_a_global_batch_two_processes_cannot_split_stops_before_loading(recipe):
    result = _launch(torchrun(), recipe, "split", "training.global_batch_size=12")  # validates: 12 = 3 × 4
    assert result.returncode != 0, result.stdout[-3000:]  # torchrun exits 1 when a process fails (peftsft: 2)
    assert "global_batch_size (12) is not a multiple of batch_size × processes = 4 × 2 = 8" in result.stderr
    assert "model:" not in result.stdout and not (recipe.parent / "runs" / "split").exists()


@pytest.mark.skipif(_tool("accelerate") is None, reason="accelerate CLI not installed")
@pytest.mark.slow
def test_accelerate_launch_with_shipped_ddp_cpu_config(recipe, one_process):
    launcher = [_tool("accelerate"), "launch", "--config_file", str(CONFIGS / "ddp-cpu.yaml"),
                "--main_process_port", free_port()]
    assert_two_processes_like_one(*_run(launcher, recipe, "accelerate"), one_process)


def test_shipped_accelerate_configs_load_and_say_where_they_run():
    from accelerate.commands.config.config_args import load_config_from_file

    table = (REPO / "docs" / "distributed.md").read_text()
    assert sorted(p.name for p in CONFIGS.glob("*.yaml")) == sorted(["ddp-cpu.yaml", "fsdp-cpu.yaml", *GPU_ONLY])
    for path in CONFIGS.glob("*.yaml"):
        config = load_config_from_file(str(path))
        gpu_only = path.name in GPU_ONLY
        assert config.use_cpu is not gpu_only, path.name
        assert path.read_text().startswith("# GPU only") is gpu_only, path.name
        # accelerate's MULTI_CPU type starts one process and leaves the rest to mpirun: it would train alone
        assert config.distributed_type != "MULTI_CPU", path.name
        # DeepSpeed takes gradient accumulation from [training] ("auto") when the config leaves it out
        assert "gradient_accumulation_steps" not in (getattr(config, "deepspeed_config", None) or {}), path.name
        row = next(line for line in table.splitlines() if line.startswith(f"| `{path.name}`"))  # the docs table
        assert ("GPU only" in row) is gpu_only, row


# ------------------------------------------------------------------------------ GPU only


GPU_EXTRA = {
    "fsdp-qlora.yaml": ["quantization.bits=4", 'quantization.storage_dtype="bfloat16"',
                        'quantization.compute_dtype="bfloat16"'],
}


@pytest.mark.gpu
@pytest.mark.parametrize("config", GPU_ONLY)
@pytest.mark.slow
def test_gpu_configs_train_on_two_gpus(config, recipe):
    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 GPUs")
    if config.startswith("deepspeed") and importlib.util.find_spec("deepspeed") is None:
        pytest.skip("deepspeed not installed")
    if config in GPU_EXTRA and importlib.util.find_spec("bitsandbytes") is None:
        pytest.skip("bitsandbytes not installed")
    name = config.removesuffix(".yaml")
    launcher = [_tool("accelerate"), "launch", "--config_file", str(CONFIGS / config), "--main_process_port", free_port()]
    result, run_dir = _run(launcher, recipe, name, *GPU_EXTRA.get(config, []))
    assert result.stdout.count("strategy lora:") == 1
    assert (run_dir / "adapter" / "adapter_config.json").is_file()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["world_size"], summary["global_batch_size"]) == (2, 8)
