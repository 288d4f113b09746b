"""The GPU check in one call (≤ 8 minutes on one H100): LoRA and QLoRA, peftsft's defaults against TRL's, `plan`
against the measured peak, and the `gpu`-marked tests.

    python benchmarks/gpu_check.py --out benchmarks/results/gpu_check           # on a CUDA machine
    python benchmarks/gpu_check.py --dry-run --out /tmp/gpu-check               # tiny shapes on the CPU: a check

Two models: the embedded SmolLM2-135M and a random-init Llama-3.1-8B shape (benchmarks/configs/llama-3.1-8b.json,
bf16 weights written once under --models; weights change neither speed nor memory). On each, four arms in fresh
processes, run by benchmarks/full_vs_lora.py's worker on the same rows and batches: `lora` and `qlora` (nf4,
double quantization: peftsft's defaults) and TRL's defaults with peft LoRA r16 all-linear (`trl_lora`,
`trl_qlora`). Each peftsft arm's `peftsft plan` estimate is set against the CUDA peak it measured. Then
`pytest -m gpu`. A section that would pass --budget is skipped and says so. Writes results.json and results.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent
REPO = BENCHMARKS.parent
sys.path.insert(0, str(BENCHMARKS))
import full_vs_lora as bench  # noqa: E402  (sets up sys.path for peftsft too)

ARMS, BASELINES = "lora,qlora", "trl_lora,trl_qlora"
# The dry run keeps every arm kind on the 8B shape's stand-in and one pair on SmolLM2's (the same path): it checks
# the script, quickly.
DRY_ARMS = {"SmolLM2-135M": ("lora", "trl_lora"), "Llama-3.1-8B shape": (ARMS, BASELINES)}
JOB = {"full": {"steps": 4, "warmup": 1, "batch": 4, "seq_len": 512},
       "dry": {"steps": 1, "warmup": 0, "batch": 1, "seq_len": 32}}
# Per arm: training seconds before an arm stops early (full_vs_lora's --budget), and the whole process's limit.
ARM_BUDGET, ARM_TIMEOUT = {"full": 60.0, "dry": 60.0}, {"full": 240.0, "dry": 300.0}


def shape_model(directory: Path, dry_run: bool) -> Path:
    """Llama-3.1-8B's shape with random bf16 weights (on the GPU when there is one) and the embedded tokenizer;
    the dry run keeps its kind at a tiny size."""
    out = directory / ("llama-3.1-8b-tiny" if dry_run else "llama-3.1-8b")
    if (out / "config.json").is_file():
        return out
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from peftsft.core.config import DEFAULT_MODEL
    from peftsft.models import materialize, resolve_source

    fields = json.loads((BENCHMARKS / "configs" / "llama-3.1-8b.json").read_text())
    if dry_run:
        fields.update(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=16)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**fields), dtype=torch.bfloat16)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(materialize(resolve_source(DEFAULT_MODEL))).save_pretrained(out)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return out


def check_model(name: str, model: str, out: Path, size: str) -> list[dict]:
    """The arms on one model, as full_vs_lora.py runs them, with its ratios and plan errors."""
    arms, baselines = DRY_ARMS[name] if size == "dry" else (ARMS, BASELINES)
    args = bench.parse_args(["--out", str(out), "--model", model, "--arms", arms, "--baselines", baselines,
                             *(f"--{k.replace('_', '-')}={v}" for k, v in JOB[size].items())])
    job = bench.prepare_job(args, out)
    job["budget"] = ARM_BUDGET[size]
    records = []
    for arm in bench.choose_arms(arms, baselines, job["device"]):
        recipe = bench.write_recipe(out / "recipes" / f"{arm.name}.toml", arm, job) if arm.kind == "peftsft" else None
        plan = bench.plan_estimate(recipe, [], job["device"]) if recipe else None
        print(f"[{name}] {arm.name}: {arm.describe}", flush=True)
        result = bench.run_arm(arm, bench.arm_spec(arm, job, recipe), out, ARM_TIMEOUT[size])
        record = {"model": name, "arm": arm.name, "kind": arm.kind, "reference": arm.reference,
                  "describe": arm.describe, **result}
        record.update(bench.derive(result, job["warmup"], job["device"]))
        record["plan"] = plan
        bench.add_plan_error(record)
        records.append(record)
        print(f"  {bench._one_line(record)}", flush=True)
    bench.add_ratios(records)
    return records


def gpu_tests(dry_run: bool, timeout: float) -> dict:
    """`pytest -m gpu` (the dry run only collects them: they need CUDA)."""
    command = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "tests"]
    if dry_run:
        command.append("--collect-only")
    started = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"command": " ".join(command[1:]), "ok": False, "summary": f"timed out after {timeout:.0f} s"}
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    return {"command": " ".join(command[1:]), "ok": done.returncode == 0, "returncode": done.returncode,
            "summary": lines[-1] if lines else done.stderr[-500:], "seconds": round(time.perf_counter() - started, 1)}


def report(result: dict) -> str:
    from _report import human_bytes

    device = result["device"]
    lines = ["# GPU check", "", f"`{result['command']}` on {device}, {result['date']}; "
             f"{result['seconds']:.0f} s in all.", ""]
    if result["dry_run"]:
        lines += ["**Dry run**: tiny shapes on the CPU, 1 step per arm — it checks that the script runs, its figures "
                  "measure nothing about GPUs.", ""]
    lines += ["| model | arm | tokens/s | × TRL | peak memory | × TRL | plan | plan error | loss |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in result["arms"]:
        if not r.get("ok"):
            lines.append(f"| {r['model']} | {r['arm']} | failed: {r.get('error', '?')} | | | | | | |")
            continue
        ratios = {k: f"{v:.2f}×" for k, v in r.get("ratios", {}).items()}
        plan = (r.get("plan") or {}).get("peak_bytes")
        error = f"{r['plan_error']:+.0%}" if "plan_error" in r else ""
        lines.append(
            f"| {r['model']} | {r['arm']} | {r['tokens_per_s']:.0f} | {ratios.get('tokens_per_s', '')} | "
            f"{human_bytes(r['peak_bytes'])} | {ratios.get('peak_bytes', '')} | {human_bytes(plan) if plan else ''} | "
            f"{error} | {r['final_loss']:.3f} |")
    for name, why in result["skipped"].items():
        lines.append(f"| {name} | skipped: {why} | | | | | | | |")
    tests = result["gpu_tests"]
    lines += ["", f"`{tests['command']}`: {tests['summary']}", "",
              "peak memory: CUDA's max allocated on a GPU, the process's peak RSS on the CPU; × TRL: against "
              "`trl_lora` (LoRA arms) or `trl_qlora` (QLoRA arms) on the same model; plan error: plan / measured − 1."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--dry-run", action="store_true", help="tiny shapes on the CPU, 1 step per arm")
    parser.add_argument("--budget", type=float, default=450.0, help="seconds; a model whose arms would start past "
                        "it is skipped (default 450: with the GPU tests, under 8 minutes)")
    parser.add_argument("--models", default=str(Path.home() / ".cache" / "peftsft" / "shapes"))
    args = parser.parse_args(argv)
    import torch

    from peftsft.core.config import DEFAULT_MODEL

    if not args.dry_run and not torch.cuda.is_available():
        print("no CUDA GPU here: run on a GPU machine, or --dry-run to check the script on the CPU", file=sys.stderr)
        return 2
    started, out, size = time.perf_counter(), Path(args.out), "dry" if args.dry_run else "full"
    out.mkdir(parents=True, exist_ok=True)
    models = {"SmolLM2-135M": None, "Llama-3.1-8B shape": None}
    arms, skipped = [], {}
    for name in models:
        if time.perf_counter() - started > args.budget:
            skipped[name] = f"past the {args.budget:.0f} s budget"
            continue
        if name.startswith("SmolLM2"):
            model = str(bench.tiny_model(out / "tiny-model")) if args.dry_run else None
        else:
            model = str(shape_model(Path(args.models), args.dry_run))
        arms += check_model(name, model or DEFAULT_MODEL, out / name.split()[0].lower(), size)
    tests = gpu_tests(args.dry_run, timeout=max(60.0, 480.0 - (time.perf_counter() - started)))
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "the CPU (no CUDA GPU)"
    result = {"command": "python benchmarks/gpu_check.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "date": time.strftime("%Y-%m-%d %H:%M"), "device": device, "dry_run": args.dry_run,
              "seconds": round(time.perf_counter() - started, 1), "arms": arms, "skipped": skipped,
              "gpu_tests": tests, "versions": bench._versions()}
    (out / "results.json").write_text(json.dumps(result, indent=1, default=str) + "\n", encoding="utf-8")
    (out / "results.md").write_text(report(result), encoding="utf-8")
    print(report(result))
    return 0 if all(a.get("ok") for a in arms) and (tests["ok"] or args.dry_run) else 1


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
