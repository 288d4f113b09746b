"""benchmarks/full_vs_lora.py --quick: two arms + the plain-TRL baseline on the tiny Llama, each in its own process.

Also where `peftsft plan` meets a measurement: its estimate for the tiny model must be within PLAN_TOLERANCE of
the training footprint measured in the same run.
"""

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "full_vs_lora.py"
PLAN_TOLERANCE = 0.25  # |estimate / measured footprint - 1|; the project's goal for `peftsft plan`
# Where precision "auto" is bf16 (AVX-512-BF16/AMX CPUs) the plan runs low: it counts the CPU loss head's tiles in
# fp32 only, and autocast adds bf16 copies. Measured on such a CPU with this tiny model (hidden 64): LoRA -12% once,
# -26% in a later CI run; forced to fp32, as the fixture below runs it, full +2% and LoRA +0.4%.


@pytest.fixture(scope="module")
def quick(tmp_path_factory, tiny_model_dir):
    out = tmp_path_factory.mktemp("bench")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        # TRL's 32768-wide loss-head slices: with the CPU default (4096) the tiny model's whole footprint is
        # ~30 MiB, the size of the first step's fixed allocations (kernel caches, lazily loaded code), which vary
        # by ±10 MiB from one machine to the next; at ~150 MiB the estimate can be compared with the measurement
        # fp32 on every CPU kind: under bf16 autocast (precision "auto" on AVX-512-BF16/AMX CPUs) the plan runs
        # low — it counts the CPU loss head's tiles and the saved activations in fp32 only and not autocast's bf16
        # copies — by 12-26% on this tiny model, scattered around the 25% goal by run-to-run noise (a known gap of
        # the plan, stated in the README's Benchmarks section); in fp32 the same arms come out within a few percent
        [sys.executable, str(SCRIPT), "--quick", "--model", str(tiny_model_dir), "--out", str(out),
         "--set", "training.loss_vocab_chunk=32768", "--set", "training.precision=fp32",
         "--rss-live"],  # the plan estimates live memory: RSS then tracks it
        capture_output=True, text=True, env=env, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "results.json").read_text())
    return out, report, {arm["arm"]: arm for arm in report["arms"]}, proc.stdout


@pytest.mark.slow
def test_writes_all_three_outputs(quick):
    out, report, arms, _ = quick
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "results.md").read_text()
    for name in ("trl_lora", "full", "lora"):
        assert f"| {name} |" in md
    assert "×)" in md and "Machine:" in md and "transformers" in md
    assert report["hardware"]["logical_cores"] >= 1 and report["versions"]["trl"]
    # --rss-live: every arm's process under a fixed mmap threshold, said in the report
    assert report["job"]["env"] == {"MALLOC_MMAP_THRESHOLD_": "1048576"} and "MALLOC_MMAP_THRESHOLD_=1048576" in md


@pytest.mark.slow
def test_runs_the_two_arms_and_the_trl_baseline(quick):
    _, report, arms, stdout = quick
    assert list(arms) == ["trl_lora", "full", "lora"]
    assert all(arm["ok"] for arm in arms.values())
    assert arms["full"]["reference"] == arms["lora"]["reference"] == "trl_lora"
    assert "step 3/3" in stdout  # progress while it runs


@pytest.mark.slow
def test_numbers_are_sane(quick):
    _, report, arms, _ = quick
    full, lora = arms["full"], arms["lora"]
    assert 0 < lora["trainable_params"] < full["trainable_params"] == full["total_params"]
    assert lora["optimizer_state_bytes"] < full["optimizer_state_bytes"]
    for arm in arms.values():
        assert arm["peak_bytes"] > 0 and arm["footprint_bytes"] > 0 and arm["weights_bytes"] > 0
        assert arm["tokens_per_s"] > 0 and arm["step_seconds"] > 0 and math.isfinite(arm["final_loss"])
        assert arm["measured_steps"] == report["job"]["steps"]  # the warm-up step is discarded
        assert len(arm["steps"]) == report["job"]["warmup"] + report["job"]["steps"]
    # the same job: identical rows and batches in every arm, the TRL baseline included
    assert len({arm["train_tokens"] for arm in arms.values()}) == 1
    assert len({arm["data"]["supervised_tokens"] for arm in arms.values()}) == 1


@pytest.mark.slow
def test_ratios_are_against_the_baseline_of_the_same_run(quick):
    _, _, arms, _ = quick
    base, lora = arms["trl_lora"], arms["lora"]
    assert lora["ratios"]["tokens_per_s"] == pytest.approx(lora["tokens_per_s"] / base["tokens_per_s"], rel=1e-2)
    assert lora["ratios"]["peak_bytes"] == pytest.approx(lora["peak_bytes"] / base["peak_bytes"], rel=1e-2)
    assert lora["ratios"]["trainable_params"] == 1.0  # both: LoRA r=16 on every linear layer


@pytest.mark.slow
def test_plan_estimate_is_within_tolerance_of_the_measurement(quick):
    _, _, arms, _ = quick
    for name in ("full", "lora"):
        arm = arms[name]
        assert arm["plan"]["peak_bytes"] > 0
        assert abs(arm["plan_error"]) <= PLAN_TOLERANCE, (name, arm["plan"], arm["footprint_bytes"])
        # the parts that are plain tensors are counted exactly (AdamW adds a 4-byte step count per tensor)
        assert arm["plan"]["components"]["optimizer"] == pytest.approx(arm["optimizer_state_bytes"], rel=1e-3)
        assert arm["plan"]["components"]["gradients"] == arm["gradient_bytes"]
        assert arm["plan"]["components"]["weights"] == pytest.approx(arm["weights_bytes"], rel=1e-3)


def test_unknown_arm_is_a_clear_error(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("full_vs_lora", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    assert module.main(["--arms", "lora,nope", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown arm(s) nope" in err and "qlora" in err
    assert not (tmp_path / "results.json").exists()


def test_reference_job_is_fixed_and_in_range(tokenizer):
    """Issue 24's job: the same 96 rows every time, 30–260 tokens each after SmolLM2's chat template."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from _chat_job import ROWS, chat_rows

    rows = chat_rows()
    assert rows == chat_rows() and len(rows) == ROWS == 96
    lengths = [len(tokenizer.apply_chat_template(r["messages"], tokenize=True, return_dict=True)["input_ids"])
               for r in rows]
    assert 30 <= min(lengths) and max(lengths) <= 260
    assert 14_000 <= sum(lengths) <= 18_000  # ~16k tokens, like the 16,984


# ---------------------------------------------------------------------------------------------- benchmarks/scale.py


def _scale_module():
    spec = importlib.util.spec_from_file_location("scale_bench", REPO / "benchmarks" / "scale.py")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(SCRIPT.parent))
    spec.loader.exec_module(module)
    return module


def test_scale_rows_have_exactly_the_length_asked_for(tmp_path, tiny_model_dir, tokenizer):
    scale = _scale_module()
    for tokens in (48, 300):
        path = tmp_path / f"rows{tokens}.jsonl"
        scale.write_rows(path, tiny_model_dir, tokens, count=3)
        rows = [json.loads(line)["messages"] for line in path.read_text().splitlines()]
        lengths = [len(tokenizer.apply_chat_template(r, tokenize=True, return_dict=True)["input_ids"]) for r in rows]
        assert lengths == [tokens] * 3 and len({r[1]["content"] for r in rows}) == 3


def test_scale_shapes_are_the_published_dimensions():
    """The configs the scale job random-initialises, against the models' published sizes (parameters, billions)."""
    from transformers import AutoConfig, AutoModelForCausalLM
    import torch

    scale = _scale_module()
    published = {"qwen2.5-0.5b": 0.49, "llama-3.2-1b": 1.24, "qwen3-1.7b": 1.72, "llama-3.1-8b": 8.03}
    for shape, billions in published.items():
        values = scale.shape_config(shape)
        config = AutoConfig.for_model(**{k: v for k, v in values.items() if k != "architectures"})
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        assert sum(p.numel() for p in model.parameters()) / 1e9 == pytest.approx(billions, rel=0.02), shape


def test_scale_sets_the_kernel_cache_bound_aside_in_a_second_plan_error():
    scale = _scale_module()
    gib = 2**30
    record = {"footprint_bytes": 2 * gib, "plan": {"peak_bytes": int(2.5 * gib),
                                                    "components": {"kernel_caches": gib // 4, "weights": gib}}}
    scale.add_plan_error(record)
    scale.add_plan_error_without_caches(record)
    assert record["plan_error"] == 0.25 and record["plan_error_without_caches"] == 0.125
    no_caches = {"footprint_bytes": 2 * gib, "plan": {"peak_bytes": 2 * gib, "components": {"kernel_caches": 0}}}
    scale.add_plan_error_without_caches(no_caches)  # fp32 or a GPU: no such term, no second figure
    assert "plan_error_without_caches" not in no_caches


@pytest.mark.slow
def test_scale_job_runs_both_arms_per_length(tmp_path):
    out = tmp_path / "scale"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "scale.py"), "--shape", "tiny", "--lengths", "48,96", "--steps",
         "1", "--warmup", "0", "--out", str(out), "--cache", str(tmp_path / "cache")],
        capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "results.json").read_text())
    assert sorted(report["lengths"], key=int) == ["48", "96"]
    for tokens, (trl, ours) in report["lengths"].items():
        assert trl["arm"] == "trl_lora" and ours["arm"] == "lora" and trl["ok"] and ours["ok"]
        assert all(step["tokens"] == int(tokens) for step in trl["steps"] + ours["steps"])  # the same rows
        assert ours["ratios"]["tokens_per_s"] == pytest.approx(ours["tokens_per_s"] / trl["tokens_per_s"], rel=1e-2)
    assert (out / "results.png").stat().st_size > 0 and "| 96 |" in (out / "results.md").read_text()


# ---------------------------------------------------------------------------------------------- benchmarks/run_peak.py


@pytest.mark.slow
def test_run_peak_runs_the_whole_run_and_training_alone(tmp_path):
    out = tmp_path / "peak"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "run_peak.py"), "--shape", "tiny", "--length", "48", "--steps", "2",
         "--out", str(out), "--cache", str(tmp_path / "cache")],
        capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "results.json").read_text())
    whole, alone = report["records"]
    assert (whole["arm"], alone["arm"]) == ("defaults", "training only") and whole["ok"] and alone["ok"]
    assert whole["steps"] == alone["steps"] == 2 and whole["last_loss"] == alone["last_loss"]  # the same training
    samples = {arm: (out / "arms" / arm / "runs" / "run" / "samples.md").read_text() for arm in ("defaults",
                                                                                                "training-only")}
    assert "# General check" in samples["defaults"] and "## What is the capital of France?" in samples["defaults"]
    assert "# General check" not in samples["training-only"] and "France" not in samples["training-only"]
    # the process's own peak, at least what the run's summary saw of itself
    assert whole["peak_bytes"] >= whole["summary_peak_bytes"] > 0 and alone["peak_bytes"] >= alone["summary_peak_bytes"]
    ratio = whole["peak_bytes"] / alone["peak_bytes"]
    assert "| defaults | " in (out / "results.md").read_text() and f"{ratio:.2f}×" in (out / "results.md").read_text()
    assert report["plan"]["peak_bytes"] >= report["plan"]["training_peak_bytes"] > 0
