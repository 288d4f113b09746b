"""peftsft's defaults against TRL's at public model shapes and long rows, both arms in one run, on the same batches.

    python benchmarks/scale.py --shape qwen2.5-0.5b --lengths 2048 --out benchmarks/results/scale/qwen2.5-0.5b
    python benchmarks/scale.py --shape llama-3.2-1b --lengths 512,1024,2048,4096 --out benchmarks/results/long/llama-3.2-1b
    python benchmarks/scale.py --shape tiny --lengths 64,128 --steps 1 --out /tmp/scale   # a check that it all works

A shape is a config under benchmarks/configs/ written from the model's published dimensions; the model is
random-initialised from it (seed 0, bf16 safetensors, cached under --cache) with the embedded SmolLM2 tokenizer:
weights do not change speed or memory. Each row is one generated chat turn of exactly the length asked for (template
included), batch 1 unless --batch says otherwise. Arms: `trl_lora` (plain TRL SFTTrainer with its defaults + peft
LoRA r16 all-linear) and `lora` (peftsft's defaults, the same LoRA), run one after the other in fresh processes
(benchmarks/_arm.py); a length an arm cannot train in this machine's memory is recorded as such (the process dies).
Writes results.json, results.md (per length: tokens/s, peak memory, their ratios, the plan against the measured peak)
and results.png (tokens/s and peak memory against the row length).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from full_vs_lora import (  # noqa: E402
    REPO, Arm, MALLOC_ENV, add_efficiency, add_plan_error, arm_spec, console, default_optimizer, derive, plan_estimate,
    quiet_libraries, run_arm, write_recipe,
)
from _chat_job import WORDS  # noqa: E402
from _report import hardware, human_bytes  # noqa: E402

CONFIGS = REPO / "benchmarks" / "configs"
LORA = {"r": 16, "alpha": 32, "dropout": 0.0}
TINY = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
        "vocab_size": 49152, "max_position_embeddings": 8192, "tie_word_embeddings": True,
        "torch_dtype": "bfloat16"}  # fmt: skip


def shape_config(shape: str) -> dict:
    if shape == "tiny":
        return dict(TINY)
    path = CONFIGS / f"{shape}.json"
    if not path.is_file():
        known = sorted(p.stem for p in CONFIGS.glob("*.json"))
        raise SystemExit(f"--shape {shape}: no {path}; one of tiny, {', '.join(known)}")
    return json.loads(path.read_text(encoding="utf-8"))


def model_dir(shape: str, cache: Path) -> Path:
    """The shape random-initialised (seed 0) in bf16 with the embedded tokenizer; built once per cache."""
    directory = cache / shape
    if (directory / "config.json").is_file():
        return directory
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from peftsft.core.config import DEFAULT_MODEL
    from peftsft.models import materialize, resolve_source

    tokenizer = AutoTokenizer.from_pretrained(materialize(resolve_source(DEFAULT_MODEL)))
    values = shape_config(shape)
    values.update(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                  pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    config = AutoConfig.for_model(**{k: v for k, v in values.items() if k != "architectures"})
    config.architectures = values.get("architectures")
    torch.manual_seed(0)
    with console.status(f"random-initialising {shape} ({directory})"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        tmp = directory.with_name(directory.name + ".tmp")
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        tmp.rename(directory)
    return directory


def write_rows(path: Path, tokenizer_dir: Path, tokens: int, count: int, seed: int = 38) -> None:
    """`count` chat rows of exactly `tokens` tokens each under the tokenizer's chat template (words trimmed or
    added one at a time until the count is met)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        question = " ".join(rng.choice(WORDS) for _ in range(12)).capitalize() + "?"
        words = [rng.choice(WORDS) for _ in range(tokens)]
        while True:
            messages = [{"role": "user", "content": question}, {"role": "assistant", "content": " ".join(words)}]
            length = len(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])
            if length == tokens or not words:
                break
            step = max(1, abs(length - tokens) // 2)
            words = words[:-step] if length > tokens else words + [rng.choice(WORDS) for _ in range(step)]
        rows.append({"messages": messages})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def run_length(args: argparse.Namespace, shape_dir: Path, tokens: int, out: Path) -> list[dict]:
    """Both arms at one row length; their records with ratios against TRL's arm."""
    from peftsft.models import pick_device

    folder = out / f"len{tokens}"
    total = args.warmup + args.steps
    data = folder / "data" / "train.jsonl"
    write_rows(data, shape_dir, tokens, args.batch * total)
    job = {
        "name": "scale", "learning_rate": 1e-4, "lora": LORA, "model": str(shape_dir), "model_dir": str(shape_dir),
        "device": pick_device("auto"), "data": data, "rows": args.batch * total, "steps": args.steps,
        "warmup": args.warmup, "total_steps": total, "batch": args.batch, "seq_len": tokens, "seed": 42,
        "optim": default_optimizer(), "budget": args.budget, "out": folder,
        "env": MALLOC_ENV if args.rss_live else {},
    }
    records = []
    for arm in (Arm("trl_lora", "trl"), Arm("lora", "peftsft", "lora", reference="trl_lora")):
        recipe = write_recipe(folder / "recipes" / f"{arm.name}.toml", arm, job) if arm.kind == "peftsft" else None
        plan = plan_estimate(recipe, [], job["device"]) if recipe else None
        console.print(f"[bold cyan]{args.shape} · {tokens} tokens · {arm.name}[/]")
        result = run_arm(arm, arm_spec(arm, job, recipe), folder, args.timeout)
        record = {"arm": arm.name, "kind": arm.kind, "reference": arm.reference, "tokens": tokens, **result}
        record.update(derive(result, job["warmup"], job["device"]))
        record["plan"] = plan
        add_plan_error(record)
        add_plan_error_without_caches(record)
        records.append(record)
        console.print(_one_line(record))
    trl, ours = records
    if trl.get("ok") and ours.get("ok"):
        ours["ratios"] = {key: round(ours[key] / trl[key], 3) for key in ("tokens_per_s", "peak_bytes")}
    return records


def add_plan_error_without_caches(record: dict) -> None:
    """The plan against the footprint without its kernel-cache term. The plan counts oneDNN's caches full (the
    kernel_caches lever's bound), which a run over rows of varied lengths reaches; every row here has one length,
    so a few steps cache the kernels of one shape only and the bound goes unused."""
    plan = record.get("plan") or {}
    caches = (plan.get("components") or {}).get("kernel_caches", 0)
    if plan.get("peak_bytes") and record.get("footprint_bytes") and caches:
        record["plan_error_without_caches"] = round((plan["peak_bytes"] - caches) / record["footprint_bytes"] - 1, 3)


def _one_line(record: dict) -> str:
    if not record.get("ok"):
        return f"  [red]did not train[/]: {record.get('error')}"
    return (f"  {record['tokens_per_s']:.1f} tok/s, peak {human_bytes(record['peak_bytes'])}, "
            f"loss {record['final_loss']:.3f}")  # fmt: skip


def markdown(report: dict) -> str:
    job = report["job"]
    lines = [
        f"# {job['shape']}: peftsft's defaults vs TRL's defaults",
        "",
        f"`{report['command']}` — {report['date']}, {report['hardware'].get('cpu', '?')}, "
        f"{report['hardware'].get('torch_threads', '?')} threads, {human_bytes(report['hardware'].get('memory_bytes'))} "
        f"memory; LoRA r16 all-linear, batch {job['batch']}, {job['warmup']} warm-up + {job['steps']} measured "
        f"step(s) per arm; the model random-initialised from {_source(job['shape'])}.",
        "",
        "| row tokens | TRL tokens/s | TRL peak | peftsft tokens/s | peftsft peak | speed × TRL | memory × TRL "
        "| share of the matmul peak | plan vs peftsft's footprint | the same without the kernel-cache bound |",
        "|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for tokens, (trl, ours) in sorted(report["lengths"].items(), key=lambda kv: int(kv[0])):
        ratios = ours.get("ratios", {})
        share = ours.get("peak_share", {}).get("share")
        lines.append("| " + " | ".join([
            str(tokens), _rate(trl), _peak(trl), _rate(ours), _peak(ours),
            f"{ratios['tokens_per_s']:.2f}×" if "tokens_per_s" in ratios else "—",
            f"{ratios['peak_bytes']:.2f}×" if "peak_bytes" in ratios else "—",
            f"{share:.0%}" if share is not None else "—",
            f"{ours['plan_error']:+.0%}" if "plan_error" in ours else "—",
            f"{ours['plan_error_without_caches']:+.1%}" if "plan_error_without_caches" in ours else "—",
        ]) + " |")  # fmt: skip
    lines += ["", "A row whose arm shows *did not train* ran out of this machine's memory (its process died) or failed;"
              " the logs under each length's folder say which.", "",
              "The plan counts oneDNN's kernel caches full (256 kernels × 1 MiB, the kernel_caches lever's bound), "
              "which a run over rows of varied lengths reaches; here every row has one length, so the caches hold "
              "the kernels of one shape and the last column sets that term aside.", ""]
    return "\n".join(lines)


def _source(shape: str) -> str:
    return "benchmarks/scale.py's TINY config" if shape == "tiny" else f"benchmarks/configs/{shape}.json"


def _rate(record: dict) -> str:
    return f"{record['tokens_per_s']:.1f}" if record.get("ok") else "did not train"


def _peak(record: dict) -> str:
    return human_bytes(record["peak_bytes"]) if record.get("ok") else "—"


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (speed, memory) = plt.subplots(1, 2, figsize=(11, 4))
    for index, name in enumerate(("TRL defaults", "peftsft defaults")):
        points = [(int(t), arms[index]) for t, arms in report["lengths"].items() if arms[index].get("ok")]
        points.sort()
        if points:
            speed.plot([t for t, _ in points], [r["tokens_per_s"] for _, r in points], marker="o", label=name)
            memory.plot([t for t, _ in points], [r["peak_bytes"] / 2**30 for _, r in points], marker="o", label=name)
    for axis, label in ((speed, "train tokens/s"), (memory, "peak memory (GiB)")):
        axis.set_xscale("log", base=2)
        axis.set_xlabel("tokens per row (batch of %d)" % report["job"]["batch"])
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
        axis.legend()
    fig.suptitle(f"{report['job']['shape']}: tokens/s and peak memory against row length")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", required=True, help="tiny, or a config name under benchmarks/configs/")
    parser.add_argument("--lengths", default="2048", help="comma-separated tokens per row (default 2048)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=2, help="measured steps per arm and length")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--budget", type=float, default=1800.0, help="training seconds per arm after one step")
    parser.add_argument("--timeout", type=float, help="seconds one arm's process may take in all")
    parser.add_argument("--rss-live", action="store_true", help=f"arms under {MALLOC_ENV} (see full_vs_lora.py)")
    parser.add_argument("--cache", default=str(Path.home() / ".cache" / "peftsft" / "shapes"))
    parser.add_argument("--out", required=True)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_libraries()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    shape_dir = model_dir(args.shape, Path(args.cache))
    machine = hardware()
    lengths = {}
    for tokens in (int(t) for t in args.lengths.split(",")):
        records = run_length(args, shape_dir, tokens, out)
        add_efficiency(records, machine)
        lengths[str(tokens)] = records
    report = {
        "command": "python benchmarks/scale.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "job": {"shape": args.shape, "batch": args.batch, "steps": args.steps, "warmup": args.warmup,
                "model_dir": str(shape_dir), "lora": LORA},
        "hardware": machine,
        "lengths": lengths,
    }
    (out / "results.json").write_text(json.dumps(report, indent=1, default=str), encoding="utf-8")
    (out / "results.md").write_text(markdown(report), encoding="utf-8")
    plot(report, out / "results.png")
    console.print(markdown(report), markup=False, highlight=False)
    return 0 if all(r.get("ok") for records in lengths.values() for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
