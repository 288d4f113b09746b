"""Per-process memory of FSDP2 against DDP: 2 CPU processes, LoRA on a random-init public shape, a few steps.

    python benchmarks/fsdp_memory.py --out benchmarks/results/fsdp                  # Llama-3.2-1B shape, bf16
    python benchmarks/fsdp_memory.py --shape qwen2.5-0.5b --out /tmp/fsdp-mem        # another shape
    python benchmarks/fsdp_memory.py --quick --out /tmp/fsdp-mem                     # a tiny shape: a check

Both arms are `accelerate launch --config_file recipes/accelerate/{ddp,fsdp}-cpu.yaml -m peftsft run`, the same
recipe and rows, one arm after the other. A sampler outside the processes reads every trainer's resident memory
(RSS, and RssAnon: its own memory without shared libraries) every 0.1 s: the peaks over the whole run (loading
included) and over training alone (from the first logged step to the summary). The model is the shape's config
with random weights (weights change neither speed nor memory) and the embedded SmolLM2 tokenizer.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
CONFIGS = REPO / "benchmarks" / "configs"
ARMS = {"ddp": "ddp-cpu.yaml", "fsdp": "fsdp-cpu.yaml"}
GIB = 1024**3
# --rss-live (as in full_vs_lora.py): every freed block of 1 MiB or more goes back to the OS at once, so RSS tracks
# the memory in use rather than what glibc keeps for reuse (FSDP gathers and frees each layer's weights every step)
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(2**20)}


def random_model(shape: str, directory: Path, quick: bool) -> Path:
    """The shape's config with random bf16 weights and the embedded tokenizer, saved once under `directory`."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from peftsft.core.config import DEFAULT_MODEL
    from peftsft.models import materialize, resolve_source

    out = directory / (f"{shape}-quick" if quick else shape)
    if (out / "config.json").is_file():
        return out
    fields = json.loads((CONFIGS / f"{shape}.json").read_text())
    if quick:  # the shape's kind at a size that loads in seconds
        fields.update(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=64)
    tokenizer = AutoTokenizer.from_pretrained(materialize(resolve_source(DEFAULT_MODEL)))
    config = AutoConfig.for_model(**fields)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    del model  # the arms' processes load it; this one should not hold it meanwhile
    return out


def write_recipe(directory: Path, model_dir: Path, steps: int, seq_len: int) -> Path:
    from benchmarks._chat_job import write_chat_rows

    rows = directory / "rows.jsonl"
    write_chat_rows(rows)
    recipe = directory / "recipe.toml"
    recipe.write_text(f"""[model]
source = "{model_dir}"
dtype = "bfloat16"
[strategy]
name = "lora"
r = 16
alpha = 32
dropout = 0.0
target_modules = "all-linear"
[[data.datasets]]
path = "{rows}"
[data]
max_length = {seq_len}
[training]
max_steps = {steps}
batch_size = 1
global_batch_size = 2
learning_rate = 1e-4
warmup_ratio = 0.0
logging_steps = 1
activation_checkpointing = false
[eval]
general_check = false
[run]
name = "arm"
output_dir = "{directory / 'runs'}"
""", encoding="utf-8")
    return recipe


class Sampler(threading.Thread):
    """Every 0.1 s: the RSS of each trainer below the launcher; peaks over the run and over training."""

    def __init__(self, launcher_pid: int, run_dir: Path):
        super().__init__(daemon=True)
        self.launcher, self.run_dir, self.stop = launcher_pid, run_dir, threading.Event()
        # (phase, measure) -> {pid: peak bytes}; measure: rss, or anon (RssAnon: the process's own memory —
        # weights, activations, allocator — without the shared libraries' pages every process maps alike)
        self.peaks: dict[tuple[str, str], dict[int, int]] = {}
        self.training_anon: dict[int, list[int]] = {}  # every reading while training: its mean is what FSDP holds

    def phase(self) -> str:
        if (self.run_dir / "summary.json").is_file():
            return "after"
        metrics = self.run_dir / "metrics.jsonl"
        return "training" if metrics.is_file() and metrics.stat().st_size else "before"

    def run(self) -> None:
        import psutil

        root = psutil.Process(self.launcher)
        while not self.stop.is_set():
            phase = self.phase()
            try:
                trainers = [p.pid for p in root.children(recursive=True) if "peftsft" in " ".join(p.cmdline())]
            except psutil.Error:
                trainers = []
            for pid in trainers:
                sizes = _status_bytes(pid, ("VmRSS", "RssAnon"))
                if phase == "training" and sizes[1]:
                    self.training_anon.setdefault(pid, []).append(sizes[1])
                for measure, size in zip(("rss", "anon"), sizes):
                    for when in ("run", "training") if phase == "training" else ("run",):
                        peaks = self.peaks.setdefault((when, measure), {})
                        peaks[pid] = max(peaks.get(pid, 0), size)
            time.sleep(0.1)

    def largest_first(self, when: str, measure: str) -> list[int]:
        if (when, measure) == ("training", "mean anon"):
            return sorted((sum(v) // len(v) for v in self.training_anon.values()), reverse=True)
        return sorted(self.peaks.get((when, measure), {}).values(), reverse=True)


def _status_bytes(pid: int, fields: tuple[str, ...]) -> list[int]:
    """Fields of /proc/PID/status in bytes (0 once the process is gone)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return [0] * len(fields)
    values = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    return [int(values.get(field, "0 kB").split()[0]) * 1024 for field in fields]


def free_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


def run_arm(arm: str, recipe: Path, threads: int, rss_live: bool) -> dict:
    run_dir = recipe.parent / "runs" / arm
    accelerate = Path(sys.executable).with_name("accelerate")
    command = [str(accelerate), "launch", "--config_file", str(REPO / "recipes" / "accelerate" / ARMS[arm]),
               "--main_process_port", free_port(), "-m", "peftsft", "run", str(recipe), "--overwrite",
               "--set", f"run.name={arm}"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO), **(MALLOC_ENV if rss_live else {})}
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sampler = Sampler(process.pid, run_dir)
    sampler.start()
    output = process.communicate()[0]
    sampler.stop.set()
    sampler.join()
    if process.returncode:
        raise SystemExit(f"{arm} failed:\n{output[-4000:]}")
    summary = json.loads((run_dir / "summary.json").read_text())
    losses = [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
              if "loss" in json.loads(line)]
    return {
        "arm": arm, "engine": summary["engine"], "world_size": summary["world_size"],
        # one figure per process, largest first
        **{f"{when}_peak_{measure}_bytes": sampler.largest_first(when, measure)
           for when in ("run", "training") for measure in ("rss", "anon")},
        "training_mean_anon_bytes": sampler.largest_first("training", "mean anon"),
        "losses": losses, "train_tokens_per_s": summary["train_tokens_per_s"],
        "wall_seconds": round(time.perf_counter() - started, 1),
    }


def report(result: dict) -> str:
    rows = {r["arm"]: r for r in result["arms"]}
    lines = [f"# FSDP2 against DDP: memory per process ({result['shape']}, 2 CPU processes)", "",
             f"LoRA r16 all-linear on a random-init `{result['shape']}` shape ({result['parameters'] / 1e9:.2f} B "
             f"parameters, bf16 base), {result['steps']} steps of 1 row per process, rows up to {result['seq_len']} "
             f"tokens, {result['threads_per_process']} thread per process; "
             f"`python benchmarks/fsdp_memory.py{' --quick' if result['quick'] else ''}"
             f"{' --rss-live' if result['rss_live'] else ''}` on {result['cpu']}"
             + (f" (both arms with {MALLOC_ENV}: RSS tracks the memory in use)" if result["rss_live"] else "") + ".", "",
             "Peak per process, largest first (GiB). *Own*: RssAnon, the process's own memory (weights, activations, "
             "allocator), without the shared libraries' pages that every process maps alike; *RSS*: all resident "
             "memory. *Run*: from start to exit, loading included; *training*: from the first logged step to the "
             "summary; *(mean)*: the mean of the readings while training, where the peaks are the largest.", "",
             "| arm | engine | own, training (mean) | own, training | own, run | RSS, training | RSS, run | tokens/s |",
             "|---|---|---|---|---|---|---|---|"]
    for arm in ARMS:
        r = rows[arm]
        cells = [" / ".join(f"{b / GIB:.2f}" for b in r[key]) for key in (
            "training_mean_anon_bytes", *(f"{when}_peak_{measure}_bytes" for measure in ("anon", "rss")
                                          for when in ("training", "run")))]
        lines.append(f"| {arm} | {r['engine']} | {' | '.join(cells)} | {r['train_tokens_per_s']:.1f} |")
    ratios = {f"{ {'anon': 'own', 'rss': 'RSS'}[measure]}, {when}": max(rows["fsdp"][f"{when}_peak_{measure}_bytes"])
              / max(rows["ddp"][f"{when}_peak_{measure}_bytes"])
              for measure in ("anon", "rss") for when in ("training", "run")}
    lines += ["", "FSDP / DDP, largest process: " + ", ".join(f"{k} **{v:.2f}×**" for k, v in ratios.items()) + ".",
              "", f"Losses, DDP: {', '.join(f'{x:.4f}' for x in rows['ddp']['losses'])}; FSDP: "
              f"{', '.join(f'{x:.4f}' for x in rows['fsdp']['losses'])}. The machine is shared with other work: "
              "tokens/s are indicative only."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="llama-3.2-1b", help="a file name in benchmarks/configs (no .json)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1, help="OMP threads per process")
    parser.add_argument("--models", default=str(Path.home() / ".cache" / "peftsft" / "shapes"))
    parser.add_argument("--quick", action="store_true", help="a tiny version of the shape: checks the script")
    parser.add_argument("--rss-live", action="store_true", help=f"run both arms with {MALLOC_ENV}")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out = Path(args.out)
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    model_dir = random_model(args.shape, Path(args.models), args.quick)
    recipe = write_recipe(work, model_dir, args.steps, args.seq_len)
    arms = [run_arm(arm, recipe, args.threads, args.rss_live) for arm in ARMS]
    from benchmarks._report import _cpu_model
    from safetensors import safe_open

    parameters = 0
    for file in model_dir.glob("*.safetensors"):
        with safe_open(file, "pt") as weights:
            parameters += sum(_numel(weights.get_slice(key).get_shape()) for key in weights.keys())
    result = {"shape": args.shape, "quick": args.quick, "rss_live": args.rss_live, "steps": args.steps, "seq_len": args.seq_len,
              "parameters": parameters, "cpu": _cpu_model(), "threads_per_process": args.threads, "arms": arms}
    name = ("memory-quick" if args.quick else f"memory-{args.shape}") + ("-rss-live" if args.rss_live else "")
    (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / f"{name}.md").write_text(report(result))
    print(report(result))
    return 0


def _numel(shape) -> int:
    total = 1
    for size in shape:
        total *= size
    return total


if __name__ == "__main__":
    sys.exit(main())
