"""A whole `peftsft run` against its training: does what the run does besides training stay inside training's peak?

    python benchmarks/run_peak.py --job reference --out benchmarks/results/run_peak/reference
    python benchmarks/run_peak.py --shape qwen2.5-0.5b --length 2048 --out benchmarks/results/run_peak/qwen2.5-0.5b

The job: the reference job (SmolLM2, its 96 rows, batch 4, one epoch; benchmarks/_chat_job.py) or a public shape
random-initialised as in benchmarks/scale.py (rows of exactly --length tokens, batch 1, --steps steps). Arms, each
`python -m peftsft run RECIPE` in a fresh process, one after the other on the same recipe:
- `defaults`: as a user runs it: the general check on the base before training and on the tuned model after it,
  and two sample prompts asked before and after;
- `training only`: `[eval] general_check = false` and no sample prompts.
Peak: the run process's maximum resident set (its rusage from wait4: whatever it held at any moment, loading, the
check, training, saving). The ratio of the two peaks is what the run adds to training's (1.00: nothing). Beside them,
`peftsft plan`'s estimates for the recipe: training's peak and the general check's, the larger of which it reports.
Writes results.json and results.md under --out.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from full_vs_lora import REPO, Arm, console, default_optimizer, write_recipe  # noqa: E402
from _chat_job import REFERENCE, ROWS, reference_rows  # noqa: E402
from _report import hardware, human_bytes  # noqa: E402

PROMPTS = ["What is the capital of France?", "Write one sentence about the sea."]
ARMS = {
    "defaults": [f"run.sample_prompts={json.dumps(PROMPTS)}"],
    "training only": ["eval.general_check=false", "run.sample_prompts=[]"],
}


def prepare(args: argparse.Namespace, out: Path) -> tuple[Path, dict]:
    """The job's recipe (and a description of the job)."""
    from peftsft.core.config import DEFAULT_MODEL

    data = out / "data" / "train.jsonl"
    if args.job == "reference":
        rows = reference_rows(data, ROWS)
        job = {"name": "reference", "model": DEFAULT_MODEL, "lora": REFERENCE["lora"],
               "learning_rate": REFERENCE["learning_rate"], "seq_len": REFERENCE["full"]["seq_len"],
               "batch": REFERENCE["full"]["batch"], "total_steps": rows // REFERENCE["full"]["batch"]}
    else:
        from scale import LORA, model_dir, write_rows

        shape_dir = model_dir(args.shape, Path(args.cache))
        write_rows(data, shape_dir, args.length, args.steps)
        rows = args.steps
        job = {"name": args.shape, "model": str(shape_dir), "lora": LORA, "learning_rate": 1e-4,
               "seq_len": args.length, "batch": 1, "total_steps": args.steps}
    job.update(data=data, rows=rows, optim=default_optimizer(), seed=42, out=out)
    recipe = write_recipe(out / "recipe.toml", Arm("run", "peftsft", "lora"), job)
    return recipe, {key: str(value) if isinstance(value, Path) else value for key, value in job.items()}


def plan_of(recipe: Path) -> dict:
    from peftsft.training.plan import estimate
    from peftsft.training.recipe import load_recipe

    plan = estimate(load_recipe(recipe, []))
    return {"training_peak_bytes": plan.training_peak_bytes, "general_check_bytes":
            plan.components.get("general_check"), "peak_bytes": plan.peak_bytes}


def run_arm(name: str, recipe: Path, out: Path, timeout: float | None) -> dict:
    """`peftsft run` with the arm's overrides in a fresh process; its peak resident set and summary."""
    folder = out / "arms" / name.replace(" ", "-")
    folder.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "peftsft", "run", str(recipe), "--overwrite",
               "--set", f"run.output_dir={json.dumps(str(folder / 'runs'))}"]
    for override in ARMS[name]:
        command += ["--set", override]
    started = time.perf_counter()
    with (folder / "log.txt").open("w", encoding="utf-8") as log:
        process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        try:
            _, status, usage = _wait4(process, timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            return {"arm": name, "ok": False, "error": f"timed out after {timeout:.0f} s"}
    record = {"arm": name, "overrides": ARMS[name], "ok": status == 0, "exit_code": status,
              "wall_seconds": round(time.perf_counter() - started, 1), "peak_bytes": usage.ru_maxrss * 1024}
    summaries = sorted((folder / "runs").glob("*/summary.json"))
    if status == 0 and summaries:
        summary = json.loads(summaries[-1].read_text(encoding="utf-8"))
        record.update(steps=summary["steps"], train_tokens_per_s=summary["train_tokens_per_s"],
                      last_loss=summary["last_loss"], summary_peak_bytes=summary["peak_memory_bytes"])
    elif status != 0:
        record["error"] = f"exit code {status}; see {folder / 'log.txt'}"
    return record


def _wait4(process: subprocess.Popen, timeout: float | None):
    """os.wait4 on the process (its own rusage, not the sum of every child so far), with a timeout."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            process.returncode = os.waitstatus_to_exitcode(status)
            return pid, process.returncode, usage
        if deadline is not None and time.monotonic() > deadline:
            raise subprocess.TimeoutExpired(process.args, timeout)
        time.sleep(0.5)


def markdown(report: dict) -> str:
    job, plan = report["job"], report["plan"]
    by_arm = {record["arm"]: record for record in report["records"]}
    lines = [f"# {job['name']}: a whole `peftsft run` against its training", "",
             f"`{report['command']}` — {report['date']}, {report['hardware'].get('cpu', '?')}, "
             f"{human_bytes(report['hardware'].get('memory_bytes'))} memory; LoRA r{job['lora']['r']}, batch "
             f"{job['batch']}, {job['total_steps']} steps, rows of at most {job['seq_len']} tokens, model "
             f"{job['model']}.", "",
             "| arm | peak resident set | × training only | steps | train tokens/s | last loss | wall |",
             "|---|--:|--:|--:|--:|--:|--:|"]
    base = by_arm.get("training only", {})
    for record in report["records"]:
        if not record["ok"]:
            lines.append(f"| {record['arm']} | {record.get('error')} | | | | | |")
            continue
        ratio = record["peak_bytes"] / base["peak_bytes"] if base.get("ok") else None
        lines.append(f"| {record['arm']} | {human_bytes(record['peak_bytes'])} | "
                     f"{f'{ratio:.2f}×' if ratio else '—'} | {record.get('steps', '—')} | "
                     f"{record.get('train_tokens_per_s', '—')} | {record.get('last_loss', '—')} | "
                     f"{record['wall_seconds']:.0f} s |")
    lines += ["", f"`peftsft plan` for this recipe: training {human_bytes(plan['training_peak_bytes'])}; the general "
              f"check {human_bytes(plan.get('general_check_bytes'))} beyond the weights and kernel caches; its peak "
              f"{human_bytes(plan['peak_bytes'])}, the larger of the two.", "",
              "Arms: `defaults` = the recipe as written plus two sample prompts (the general check before and after "
              "training, the prompts asked before and after); `training only` = `[eval] general_check = false`, no "
              "sample prompts. Peak: the `peftsft run` process's maximum resident set (rusage via wait4).", ""]
    return "\n".join(lines + report["notes"]) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--job", choices=("reference", "shape"), default="shape")
    parser.add_argument("--shape", help="a config name under benchmarks/configs/ (implies --job shape)")
    parser.add_argument("--length", type=int, default=2048, help="tokens per row (shape jobs)")
    parser.add_argument("--steps", type=int, default=2, help="training steps (shape jobs)")
    parser.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated, of {', '.join(ARMS)}")
    parser.add_argument("--cache", default=str(Path.home() / ".cache" / "peftsft" / "shapes"))
    parser.add_argument("--timeout", type=float, help="seconds one arm may take")
    parser.add_argument("--note", action="append", default=[], help="a line for the report's notes")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    if args.job == "shape" and not args.shape:
        parser.error("a shape job needs --shape (or --job reference)")
    unknown = [arm for arm in args.arms.split(",") if arm not in ARMS]
    if unknown:
        parser.error(f"--arms: unknown {', '.join(unknown)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    recipe, job = prepare(args, out)
    report = {"command": "python benchmarks/run_peak.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "date": time.strftime("%Y-%m-%d %H:%M"), "hardware": hardware(), "job": job, "plan": plan_of(recipe),
              "records": [], "notes": args.note}
    for name in args.arms.split(","):
        console.print(f"[bold cyan]{job['name']} · {name}[/]")
        record = run_arm(name, recipe, out, args.timeout)
        console.print(f"  peak {human_bytes(record['peak_bytes'])}" if record["ok"] else f"  [red]{record['error']}")
        report["records"].append(record)
    (out / "results.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    (out / "results.md").write_text(markdown(report), encoding="utf-8")
    console.print(f"results: {out / 'results.md'}")
    return 0 if all(record["ok"] for record in report["records"]) else 1


if __name__ == "__main__":
    sys.exit(main())
