"""Full fine-tuning vs LoRA vs QLoRA (and any registered strategy) against plain TRL, measured on this machine.

    python benchmarks/full_vs_lora.py --out benchmarks/results          # embedded SmolLM2, ~10 min on a 2-core CPU
    python benchmarks/full_vs_lora.py --quick --out /tmp/bench          # a tiny Llama, well under a minute
    python benchmarks/full_vs_lora.py --job reference --out benchmarks/results/reference   # issue 24's job, 1 epoch

The `reference` job (benchmarks/_chat_job.py) is fixed: 96 generated chat rows of 30–260 tokens, LoRA r16/α32
all-linear, dropout 0, batch 4, 1 epoch, lr 1e-4, max length 512, against TRL's defaults on the same rows and
LoRA; tokens/s is over the whole epoch (after the warm-up step), and each arm's matmul work is given as a share
of this machine's measured matmul peak for the precision it trains in. On CUDA the same command is the GPU run.

Each arm runs in a fresh process on the same model, rows (same order, same batches), sequence length, batch and
optimizer; warm-up steps are discarded. A baseline arm, plain `trl.SFTTrainer` with its defaults (+ peft LoRA
r=16 on all linear layers), runs on the same job so that every figure comes with a ratio measured in the same run.
Writes results.json, results.md (tables with ratios, plan estimate vs measurement, hardware and versions) and
results.png (memory and tokens/s bars) into --out.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # peftsft from this checkout
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from rich.console import Console  # noqa: E402

from peftsft.core.errors import UserError  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _chat_job import REFERENCE, reference_rows  # noqa: E402
from _report import hardware, human_bytes, write_outputs  # noqa: E402

DATA = REPO / "recipes" / "data" / "persona_train.jsonl"
WORKER = Path(__file__).resolve().parent / "_arm.py"
# Sized so that the default run (5 arms on SmolLM2-135M) takes ~10 minutes on a quiet 2-core CPU
DEFAULTS = {"arms": "full,lora,qlora", "steps": 6, "warmup": 1, "batch": 4, "seq_len": 256, "budget": 120.0}
QUICK = {"arms": "full,lora", "steps": 2, "warmup": 1, "batch": 2, "seq_len": 64, "budget": 120.0}
BASELINES = {
    "trl_lora": "plain TRL SFTTrainer, its defaults + peft LoRA r=16 all-linear",
    "trl_qlora": "plain TRL SFTTrainer, its defaults + peft LoRA r=16 on TRL's 4-bit base (nf4)",
}
SPECIAL_ARMS = {"qlora": ("lora", 4)}  # arm name → (strategy, quantization bits)
# --rss-live: glibc keeps freed heap memory, so a process's peak RSS depends on its allocation history; with a
# fixed mmap threshold every tensor of 1 MiB or more goes back to the OS when freed, and RSS tracks the memory in
# use — but each such tensor then page-faults again when allocated, which slowed peftsft's reference job on an
# AVX2 CPU to 113.6 tokens/s against 158.5 with glibc as it is (TRL's bf16 arm: 4.8 against 5.1). The default is
# glibc as it is: what `peftsft run` and a plain TRL script get, in speed and in peak RSS.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(2**20)}

console = Console(soft_wrap=True)


@dataclass
class Arm:
    name: str
    kind: str  # "peftsft" | "trl"
    strategy: str = ""
    bits: int | None = None
    reference: str | None = None  # the baseline arm its ratios are taken against

    @property
    def describe(self) -> str:
        if self.kind == "trl":
            return BASELINES[self.name]
        quant = f" on a {self.bits}-bit base" if self.bits else ""
        return f"peftsft, strategy {self.strategy}{quant}"


# ---------------------------------------------------------------------------------------------- arms


def choose_arms(arms_text: str, baselines_text: str, device: str) -> list[Arm]:
    """Baselines first (their figures are the references), then the requested arms in order."""
    from peftsft.strategies import list_strategies

    known = {s.name for s in list_strategies()}
    names = [a.strip().lower() for a in arms_text.split(",") if a.strip()]
    unknown = [n for n in names if n not in known and n not in SPECIAL_ARMS and n not in BASELINES]
    if unknown:
        raise UserError(
            f"--arms: unknown arm(s) {', '.join(unknown)}",
            hint=f"arms are strategies ({', '.join(sorted(known))}), 'qlora' (lora on a 4-bit base) "
            f"or a baseline ({', '.join(BASELINES)})",
        )
    arms = [_peftsft_arm(n) for n in names if n not in BASELINES]
    baselines = _baselines(baselines_text, arms, device) + [n for n in names if n in BASELINES]
    baseline_arms = [Arm(b, "trl") for b in dict.fromkeys(baselines)]
    for arm in arms:
        wanted = "trl_qlora" if arm.bits and "trl_qlora" in baselines else "trl_lora"
        arm.reference = wanted if wanted in baselines else None
    return baseline_arms + arms


def _peftsft_arm(name: str) -> Arm:
    strategy, bits = SPECIAL_ARMS.get(name, (name, None))
    return Arm(name, "peftsft", strategy, bits)


def _baselines(text: str, arms: list[Arm], device: str) -> list[str]:
    if text == "auto":
        # on CPUs TRL's bf16 default makes a baseline step ~20x slower than peftsft's fp32: one baseline there
        quantized = any(a.bits for a in arms) and device == "cuda"
        return ["trl_lora"] + (["trl_qlora"] if quantized else [])
    if text == "none":
        return []
    names = [b.strip() for b in text.split(",") if b.strip()]
    bad = [b for b in names if b not in BASELINES]
    if bad:
        raise UserError(f"--baselines: unknown {', '.join(bad)}", hint=f"one of auto, none, {', '.join(BASELINES)}")
    return names


# ---------------------------------------------------------------------------------------------- the job


def tiny_model(directory: Path) -> Path:
    """The test suite's tiny Llama (2 layers, hidden 32) with SmolLM2's real tokenizer; built once."""
    if (directory / "config.json").is_file():
        return directory
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from peftsft.core.config import DEFAULT_MODEL
    from peftsft.models import materialize, resolve_source

    tokenizer = AutoTokenizer.from_pretrained(materialize(resolve_source(DEFAULT_MODEL)))
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def write_rows(path: Path, model_dir: str, batch: int, steps: int, warmup: int, seed: int) -> int:
    """The job's rows: the project's chat data (mixed lengths), shuffled once with `seed`, in a fixed order.

    The warm-up takes the batches of the shortest rows (cheap, even for a slow baseline), and the batch holding
    the longest row runs first after it, so that every arm in file order meets its memory peak (with optimizer
    states allocated) even when the time budget ends it after one measured step."""
    from transformers import AutoTokenizer

    rows = DATA.read_text(encoding="utf-8").splitlines()
    random.Random(seed).shuffle(rows)
    picked = [rows[i % len(rows)] for i in range((warmup + steps) * batch)]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    conversations = [json.loads(row)["messages"] for row in picked]
    encoded = tokenizer.apply_chat_template(conversations, tokenize=True, return_dict=True)
    lengths = [len(ids) for ids in encoded["input_ids"]]
    by_length = sorted(range(len(picked)), key=lambda i: lengths[i])
    shortest = [by_length[i : i + batch] for i in range(0, warmup * batch, batch)]
    rest = [i for i in range(len(picked)) if i not in set(by_length[: warmup * batch])]
    batches = shortest + [rest[i : i + batch] for i in range(0, len(rest), batch)]
    longest = max(range(len(batches)), key=lambda b: max(lengths[i] for i in batches[b]))
    first = min(warmup, len(batches) - 1)
    batches[first], batches[longest] = batches[longest], batches[first]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(picked[i] + "\n" for b in batches for i in b), encoding="utf-8")
    return len(picked)


def write_recipe(path: Path, arm: Arm, job: dict) -> Path:
    """A plain peftsft recipe for the arm: `python -m peftsft run` on it trains the same job."""
    quant = f"\n[quantization]\nbits = {arm.bits}\n" if arm.bits else ""
    lora = job.get("lora") if arm.strategy == "lora" else None
    strategy_params = "".join(f"\n{key} = {value}" for key, value in (lora or {}).items())
    rate = f"\nlearning_rate = {job['learning_rate']}" if job.get("learning_rate") else ""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"""# benchmark arm {arm.name!r}: written by benchmarks/full_vs_lora.py
[model]
source = {json.dumps(job['model'])}
{quant}
[strategy]
name = "{arm.strategy}"{strategy_params}

[[data.datasets]]
path = {json.dumps(str(job['data']))}
format = "messages"

[data]
masking = "all"  # the loss on every token, as TRL's default does for conversational rows
max_length = {job['seq_len']}

[training]
max_steps = {job['total_steps']}
batch_size = {job['batch']}
optim = "{job['optim']}"  # TRL's (transformers') default optimizer, so that every arm uses the same one{rate}
logging_steps = 1
seed = {job['seed']}

[run]
name = "{arm.name}"
output_dir = {json.dumps(str(job['out'] / 'runs'))}
""",
        encoding="utf-8",
    )
    return path


def default_optimizer() -> str:
    from transformers import TrainingArguments

    return str(TrainingArguments.default_optim)


def plan_estimate(recipe_path: Path, overrides: list[str], device: str) -> dict:
    """The `peftsft plan` estimate for an arm's recipe, or why there is none."""
    from peftsft.training.recipe import load_recipe
    from peftsft.training.plan import estimate

    try:
        plan = estimate(load_recipe(recipe_path, overrides), device)
    except Exception as exc:  # an estimate that fails must not stop the measurement
        return {"error": f"{type(exc).__name__}: {exc}"}
    # the arms measure training alone (no general check around it): its peak is what they are held against
    return {"peak_bytes": plan.training_peak_bytes, "components": plan.components, "seq": plan.seq,
            "notes": plan.notes}


# ---------------------------------------------------------------------------------------------- running


def run_arm(arm: Arm, spec: dict, out: Path, timeout: float | None) -> dict:
    """The worker in a fresh process; its progress lines pass through, its stderr goes to logs/<arm>.log."""
    spec_path, result_path = out / "arms" / f"{arm.name}.spec.json", out / "arms" / f"{arm.name}.json"
    log_path = out / "logs" / f"{arm.name}.log"
    for path in (spec_path, log_path):
        path.parent.mkdir(parents=True, exist_ok=True)
    spec_path.write_text(json.dumps(spec, indent=1), encoding="utf-8")
    result_path.unlink(missing_ok=True)
    started = time.perf_counter()
    with log_path.open("w", encoding="utf-8") as log:
        try:
            code = subprocess.run(
                [sys.executable, str(WORKER), str(spec_path), str(result_path)],
                stderr=log, timeout=timeout, env={**os.environ, **spec["env"]},
            ).returncode
        except subprocess.TimeoutExpired:
            return {"ok": False, "error": f"timed out after {timeout:.0f} s"}
    if not result_path.is_file():
        return {"ok": False, "error": f"worker exited with code {code} without a result; see {log_path}"}
    result = json.loads(result_path.read_text(encoding="utf-8"))
    result["wall_seconds"] = round(time.perf_counter() - started, 1)
    return result


def derive(result: dict, warmup: int, device: str, whole_epoch: bool = False) -> dict:
    """Medians over the measured steps and the memory figures the tables compare."""
    if not result.get("ok"):
        return {}
    measured = result["steps"][warmup:] or result["steps"]
    rates = [s["tokens"] / s["seconds"] for s in measured if s["seconds"] > 0]
    overall = sum(s["tokens"] for s in measured) / max(sum(s["seconds"] for s in measured), 1e-9)
    if device == "cuda":
        footprint = peak = result["cuda_max_allocated_bytes"]
    else:
        peak = result["peak_rss_bytes"]
        footprint = result["weights_bytes"] + result.get("train_rss_increase_bytes", 0)
    return {
        "measured_steps": len(measured),
        "stopped_by_budget": len(result["steps"]) < result.get("total_steps", len(result["steps"])),
        # a whole epoch of mixed lengths (batches grouped differently per arm): its tokens over its time
        "tokens_per_s": overall if whole_epoch else (statistics.median(rates) if rates else None),
        "tokens_per_s_overall": overall,
        "step_seconds": statistics.median(s["seconds"] for s in measured),
        "train_tokens": sum(s["tokens"] for s in result["steps"]),
        "final_loss": result["losses"][-1] if result["losses"] else None,
        "peak_bytes": peak,
        "footprint_bytes": footprint,
    }


RATIO_KEYS = (
    "peak_bytes", "footprint_bytes", "tokens_per_s", "step_seconds", "trainable_params", "optimizer_state_bytes"
)


def add_ratios(records: list[dict]) -> None:
    by_name = {r["arm"]: r for r in records}
    for record in records:
        ref = by_name.get(record.get("reference") or "")
        if not ref or not record.get("ok") or not ref.get("ok"):
            continue
        record["ratios"] = {
            key: round(record[key] / ref[key], 3) for key in RATIO_KEYS if record.get(key) and ref.get(key)
        }


def add_efficiency(records: list[dict], hardware: dict) -> None:
    """Achieved matmul GFLOP/s of each arm, its share of this machine's measured fp32 and bf16 matmul peaks, and
    `peak_share`: the share of the peak for the precision the arm trains in (bf16/fp16 autocast: bfloat16)."""
    peaks = hardware.get("matmul_gflops") or {}
    for record in records:
        if not record.get("ok") or not record.get("tokens_per_s"):
            continue
        achieved = record["tokens_per_s"] * record["matmul_flops_per_token"] / 1e9
        record["achieved_gflops"] = round(achieved, 2)
        record["peak_fraction"] = {dtype: round(achieved / peak, 4) for dtype, peak in peaks.items() if peak}
        dtype = "float32" if record.get("precision", "fp32") == "fp32" else "bfloat16"
        if dtype in record["peak_fraction"]:
            record["peak_share"] = {"dtype": dtype, "share": record["peak_fraction"][dtype]}


def add_plan_error(record: dict) -> None:
    plan = record.get("plan") or {}
    if plan.get("peak_bytes") and record.get("footprint_bytes"):
        record["plan_error"] = round(plan["peak_bytes"] / record["footprint_bytes"] - 1, 3)


# ---------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--job", choices=("persona", "reference"), default="persona",
                        help="persona: the project's chat rows, a few steps; reference: issue 24's fixed job, 1 epoch")
    parser.add_argument("--model", help="model source, as in a recipe (default: the embedded SmolLM2; --quick: tiny)")
    parser.add_argument("--arms", help=f"comma-separated arms (default {DEFAULTS['arms']}; --quick: {QUICK['arms']})")
    parser.add_argument("--baselines", default="auto",
                        help="auto (trl_lora, and trl_qlora when a quantized arm runs), none, or a list")
    parser.add_argument("--steps", type=int, help=f"measured steps per arm (default {DEFAULTS['steps']})")
    parser.add_argument("--warmup", type=int, help=f"warm-up steps, discarded (default {DEFAULTS['warmup']})")
    parser.add_argument("--seq-len", type=int, help=f"max tokens per row (default {DEFAULTS['seq_len']})")
    parser.add_argument("--batch", type=int, help=f"rows per step (default {DEFAULTS['batch']})")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="recipe override for every peftsft arm (e.g. training.activation_checkpointing=true)")
    parser.add_argument("--budget", type=float,
                        help="training seconds per arm: after the warm-up and one measured step, an arm past this "
                        "stops early (default 120, reference job 3600; TRL's bf16 default is very slow on AVX2 CPUs)")
    parser.add_argument("--rss-live", action="store_true",
                        help=f"run the arms with {MALLOC_ENV}, so that RSS tracks live memory (every freed tensor "
                        "of 1 MiB or more goes back to the OS; slower steps); default: glibc's malloc as it is")
    parser.add_argument("--timeout", type=float, help="seconds one arm's process may take in all (default: no limit)")
    parser.add_argument("--quick", action="store_true", help="tiny model, few steps: a check that everything works")
    parser.add_argument("--out", required=True, help="directory for results.json / .md / .png")
    args = parser.parse_args(argv)
    defaults = {**(QUICK if args.quick else DEFAULTS), **(REFERENCE["quick" if args.quick else "full"]
                                                            if args.job == "reference" else {})}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.steps < 1 or args.warmup < 0 or args.batch < 1 or args.seq_len < 8:
        parser.error("--steps and --batch must be >= 1, --warmup >= 0, --seq-len >= 8")
    return args


def prepare_job(args: argparse.Namespace, out: Path) -> dict:
    from peftsft.core.config import DEFAULT_MODEL
    from peftsft.models import materialize, pick_device, resolve_source

    model = args.model or (str(tiny_model(out / "tiny-model")) if args.quick else DEFAULT_MODEL)
    with console.status(f"resolving {model}"):
        model_dir = materialize(resolve_source(model))
    total = args.warmup + args.steps
    data = out / "data" / "train.jsonl"
    if args.job == "reference":
        rows = reference_rows(data, args.batch * total)
    else:
        rows = write_rows(data, model_dir, args.batch, args.steps, args.warmup, args.seed)
    return {
        "name": args.job, "learning_rate": REFERENCE["learning_rate"] if args.job == "reference" else None,
        "lora": REFERENCE["lora"] if args.job == "reference" else None,
        "model": model, "model_dir": model_dir, "device": pick_device("auto"), "data": data, "rows": rows,
        "steps": args.steps, "warmup": args.warmup, "total_steps": total, "batch": args.batch,
        "seq_len": args.seq_len, "seed": args.seed, "optim": default_optimizer(), "budget": args.budget, "out": out,
        "env": MALLOC_ENV if args.rss_live else {},
    }


def arm_spec(arm: Arm, job: dict, recipe: Path | None) -> dict:
    return {
        "arm": arm.name, "kind": arm.kind, "recipe": str(recipe) if recipe else None, "model_dir": job["model_dir"],
        "data": str(job["data"]), "device": job["device"], "total_steps": job["total_steps"], "warmup": job["warmup"],
        "batch": job["batch"], "seq_len": job["seq_len"], "seed": job["seed"], "budget": job["budget"],
        "env": job["env"], "learning_rate": job.get("learning_rate"), "lora": job.get("lora"),
        "quantized": bool(arm.bits) or arm.name == "trl_qlora", "run_dir": str(job["out"] / "runs" / arm.name),
    }


def benchmark(args: argparse.Namespace) -> dict:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from peftsft.models import pick_device

    arms = choose_arms(args.arms, args.baselines, pick_device("auto"))
    job = prepare_job(args, out)
    console.print(
        f"[bold]benchmark[/] {len(arms)} arms ({', '.join(a.name for a in arms)}) on {job['model']} · "
        f"{job['device']} · batch {job['batch']} · max length {job['seq_len']} · {job['warmup']} warm-up + "
        f"{job['steps']} measured steps"
    )
    records = []
    for index, arm in enumerate(arms, 1):
        recipe = write_recipe(out / "recipes" / f"{arm.name}.toml", arm, job) if arm.kind == "peftsft" else None
        plan = plan_estimate(recipe, args.set, job["device"]) if recipe else None
        if recipe and args.set:
            recipe = _with_overrides(recipe, args.set)
        console.print(f"[bold cyan][{index}/{len(arms)}] {arm.name}[/]: {arm.describe}")
        result = run_arm(arm, arm_spec(arm, job, recipe), out, args.timeout)
        fields = {k: v for k, v in asdict(arm).items() if k != "name"}
        record = {"arm": arm.name, **fields, "describe": arm.describe, **result}
        record.update(derive(result, job["warmup"], job["device"], whole_epoch=job["name"] == "reference"))
        record["plan"] = plan
        add_plan_error(record)
        records.append(record)
        console.print(_one_line(record))
    add_ratios(records)
    machine = hardware()
    add_efficiency(records, machine)
    report = {
        "command": "python benchmarks/full_vs_lora.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "job": {k: (str(v) if isinstance(v, Path) else v) for k, v in job.items() if k not in ("out",)},
        "hardware": machine,
        "versions": _versions(),
        "arms": records,
    }
    write_outputs(report, out)
    return report


def _with_overrides(recipe: Path, overrides: list[str]) -> Path:
    """The arm's recipe with the --set overrides applied, resolved (what the worker and a rerun both read)."""
    from peftsft.training.recipe import load_recipe
    from peftsft.core.config import recipe_to_toml

    recipe.write_text(recipe_to_toml(load_recipe(recipe, overrides)), encoding="utf-8")
    return recipe


def _versions() -> dict:
    from peftsft.training.report import versions

    return versions()


def _one_line(record: dict) -> str:
    if not record.get("ok"):
        return f"  [red]failed[/]: {record.get('error')} (see logs/{record['arm']}.log)"
    plan = record.get("plan") or {}
    planned = ""
    if "plan_error" in record:
        planned = f", plan {human_bytes(plan['peak_bytes'])} ({record['plan_error']:+.0%})"
    return (
        f"  [green]done[/] {record['tokens_per_s']:.1f} tok/s, {record['step_seconds']:.2f} s/step, "
        f"peak {human_bytes(record['peak_bytes'])}, footprint {human_bytes(record['footprint_bytes'])}{planned}, "
        f"loss {record['final_loss']:.3f}, {record['trainable_params']:,} trainable"
    )


def quiet_libraries() -> None:
    """This process only plans and tokenizes: no progress bars or info chatter from the libraries."""
    import datasets
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    datasets.disable_progress_bars()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_libraries()
    try:
        report = benchmark(args)
    except UserError as exc:
        err = Console(stderr=True)
        err.print("[bold red]error:[/] ", end="")
        err.print(str(exc), markup=False, highlight=False)
        return 2
    console.print((Path(args.out) / "results.md").read_text(encoding="utf-8"), markup=False, highlight=False)
    return 0 if all(r.get("ok") for r in report["arms"]) else 1


if __name__ == "__main__":
    sys.exit(main())
