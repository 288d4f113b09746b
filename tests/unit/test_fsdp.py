"""FSDP2 on CPU processes (gloo) through `accelerate launch` and the shipped fsdp-cpu.yaml: two processes train like
one (same global batch), the adapter is gathered from the shards and written once, a killed run resumes; launches
that would not do what their config says are refused before a model loads."""

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from peftsft.core.launch import Launch, current_launch
from tests.unit.test_distributed import (  # noqa: F401 (fixtures)
    CONFIGS, COMMON, REPO, STEPS, _loss_records, _tool, adapter_difference, assert_two_processes_like_one, free_port,
    one_process, recipe,
)

pytestmark = pytest.mark.skipif(_tool("accelerate") is None, reason="accelerate CLI not installed")
SAMPLES = ['run.sample_prompts=["What is your name?"]', "run.sample_max_new_tokens=4"]


def fsdp_launcher(*extra: str) -> list:
    return [_tool("accelerate"), "launch", "--config_file", str(CONFIGS / "fsdp-cpu.yaml"),
            "--main_process_port", free_port(), *extra]


def _command(launcher: list, recipe, name: str, *overrides: str, command: str = "run") -> list:
    sets = [a for o in [*COMMON, *overrides, f"run.name={name}"] for a in ("--set", o)]
    return [*launcher, "-m", "peftsft", command, str(recipe), *sets]


def _launch(launcher: list, recipe, name: str, *overrides: str, command: str = "run", extra: tuple = ()):
    return subprocess.run([*_command(launcher, recipe, name, *overrides, command=command), *extra],
                          cwd=REPO, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_fsdp_two_cpu_processes_match_one_process_and_write_a_peft_adapter(recipe, one_process, tiny_model_dir):
    result = _launch(fsdp_launcher(), recipe, "fsdp", *SAMPLES)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run_dir = recipe.parent / "runs" / "fsdp"
    assert json.loads((run_dir / "summary.json").read_text())["engine"] == "fsdp2"  # sharded, not DDP in disguise
    assert_two_processes_like_one(result, run_dir, one_process)
    assert "## What is your name?" in (run_dir / "samples.md").read_text()  # forward passes on every process

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), run_dir / "adapter")
    lora = {n: p for n, p in tuned.named_parameters() if "lora_B" in n}
    assert lora and all(p.abs().sum() > 0 for p in lora.values())  # whole trained tensors, not empty shards


def _sealed(run_dir, step: int) -> bool:
    from peftsft.core.rundir import CHECKPOINT_SEAL

    return (run_dir / "checkpoints" / f"checkpoint-{step}" / CHECKPOINT_SEAL).is_file()


@pytest.mark.slow
def test_fsdp_run_killed_mid_run_resumes_to_the_same_adapter(recipe, one_process):
    """SIGKILL to the launcher and both trainers once the step-2 checkpoint is sealed; --resume ends where one
    unbroken process ends."""
    overrides = ("training.save_steps=2",)
    run_dir = recipe.parent / "runs" / "fsdp-killed"
    process = subprocess.Popen(_command(fsdp_launcher(), recipe, "fsdp-killed", *overrides), cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while not _sealed(run_dir, 2) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    import psutil

    launcher = psutil.Process(process.pid)
    for each in [*launcher.children(recursive=True), launcher]:  # torchrun starts the trainers in sessions of their own
        each.send_signal(signal.SIGKILL)  # no chance to save anything
    output = process.communicate()[0]
    assert process.returncode == -signal.SIGKILL, output[-3000:]  # killed, not finished
    assert _sealed(run_dir, 2) and not (run_dir / "adapter").exists(), output[-3000:]

    result = _launch(fsdp_launcher(), recipe, "fsdp-killed", *overrides, extra=("--resume",))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "resuming from" in result.stdout
    assert [r["step"] for r in _loss_records(run_dir)] == list(range(1, STEPS + 1))
    assert adapter_difference(one_process, run_dir) <= 1e-4


@pytest.mark.slow  # launches accelerate processes
@pytest.mark.parametrize("launch_args, overrides, reason", [
    ((), ["quantization.bits=4"], "bitsandbytes' CPU backend"),
    (("--cpu", "--num_processes", "2"), [], "started this process alone"),
])
@pytest.mark.parametrize("command", ["validate", "run"])
def test_launches_that_would_not_do_what_they_say_stop_before_loading(recipe, command, launch_args, overrides, reason):
    result = _launch(fsdp_launcher(*launch_args), recipe, "refused", *overrides, command=command)
    assert result.returncode != 0 and reason in result.stderr, result.stdout[-2000:] + result.stderr[-2000:]
    assert "model:" not in result.stdout and not (recipe.parent / "runs" / "refused").exists()


def test_the_launch_is_read_from_the_launchers_environment():
    fsdp = {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "WORLD_SIZE": "2"}
    assert current_launch(fsdp) == Launch("fsdp", 2, 2)
    assert current_launch({"ACCELERATE_USE_DEEPSPEED": "true", "WORLD_SIZE": "4"}) == Launch("deepspeed", 4)
    assert current_launch({"WORLD_SIZE": "2"}) == Launch("ddp", 2)
    assert current_launch({}) == Launch("single", 1)
    alone = {"ACCELERATE_USE_CPU": "True", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    assert current_launch(alone).started_alone  # accelerate's one-process launcher, asked for several
    assert not current_launch({"ACCELERATE_USE_CPU": "False"}).started_alone  # asked for one


@pytest.mark.slow  # launches accelerate processes
@pytest.mark.parametrize("mixed_precision, precision, reason", [
    ("bf16", "bf16", "DeepSpeed on CPU processes at bf16"),  # DeepSpeed's bf16 mode: 2 processes ≠ 1
    ("bf16", "fp32", "mixed_precision ('bf16') and this run's precision (fp32"),  # the trainer would stop after loading
])
def test_deepspeed_launches_on_cpu_that_would_not_train_like_one_process_are_refused(
    recipe, mixed_precision, precision, reason
):
    env = {**os.environ, "ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_MIXED_PRECISION": mixed_precision,
           "WORLD_SIZE": "1"}  # what accelerate's DeepSpeed launcher sets (validate needs no process group)
    result = subprocess.run([sys.executable, "-m", "peftsft", "validate", str(recipe), "--set",
                             f'training.precision="{precision}"'], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 2 and reason in result.stderr, result.stderr[-2000:]


def cpu_variant(config: str, directory) -> str:
    """A shipped GPU config as it runs on CPU processes: use_cpu, and fp32 (DeepSpeed's bf16 is refused there)."""
    text = (CONFIGS / config).read_text().replace("use_cpu: false", "use_cpu: true")
    path = directory / config.replace(".yaml", "-cpu.yaml")
    path.write_text(text.replace("mixed_precision: bf16", "mixed_precision: 'no'"))
    return str(path)


@pytest.fixture(scope="module")
def one_process_fp32(recipe):
    from tests.unit.test_distributed import _run

    return _run([sys.executable], recipe, "one-fp32", 'training.precision="fp32"')[1]


@pytest.mark.slow  # launches accelerate processes
@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="deepspeed not installed")
@pytest.mark.parametrize("config", ["deepspeed-zero2.yaml", "deepspeed-zero3.yaml"])
def test_deepspeed_two_cpu_processes_match_one_process_at_fp32(recipe, one_process_fp32, config, tmp_path):
    launcher = [_tool("accelerate"), "launch", "--config_file", cpu_variant(config, tmp_path),
                "--main_process_port", free_port()]
    name = config.removesuffix(".yaml")
    result = _launch(launcher, recipe, name, 'training.precision="fp32"', *SAMPLES)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run_dir = recipe.parent / "runs" / name
    assert json.loads((run_dir / "summary.json").read_text())["engine"] == name  # ZeRO engaged
    assert_two_processes_like_one(result, run_dir, one_process_fp32)
