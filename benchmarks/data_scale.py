"""Data preparation at scale: peftsft's build against TRL's and LLaMA-Factory's on the same generated chat JSONL.

One command: `python benchmarks/data_scale.py` writes benchmarks/results/data_scale/results.{json,md,png}.

Rows: seeded 2-turn chats (a short system turn, a question, a reply) of 30–260 tokens after SmolLM2's template, the
length mix of the reference job's rows (benchmarks/_chat_job.py), generated into --work (never committed). Each arm
turns the same file into tokenized, assistant-masked samples with the embedded SmolLM2 tokenizer, in a process of
its own, while this process samples that process tree's memory:
- peftsft: `build_datasets` (cache cold) + the pre-flight contract, [data] num_proc = auto;
- peftsft-cached: the same in a second process, now a cache hit (the "second run starts in seconds" figure);
- trl: `load_dataset("json")` + `SFTTrainer(...)`, whose constructor prepares the dataset (tokenize with
  `assistant_only_loss`, labels, truncation) at TRL's defaults (`dataset_num_proc` unset: one process), with
  SmolLM2's template given `{% generation %}` markers (it renders the same text, see `marked_template`);
- trl-np: the same with `dataset_num_proc` = the cores, for a like-for-like core count;
- llamafactory: LLaMA-Factory's `get_dataset` (stage sft, template smollm2) in its own venv (--lf-python), where one
  was installed; its default `preprocessing_num_workers` (unset: one process).
Timed: from the JSONL on disk to masked samples (and, for peftsft, the contract's checks). Memory: the peak resident
set of the arm's main process (VmHWM), and the peak proportional set (PSS) of its whole process tree, in all and its
anonymous part: file pages a memory-mapped dataset touched count in RSS and PSS but are page cache the kernel can
drop, so the anonymous part is what a process really holds. Speeds on a shared machine move with its load: the load
average is recorded with each arm; rerun on a quiet machine for final figures.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "results" / "data_scale"
SEED, MAX_LENGTH, DIGEST_ROWS = 38, 2048, 1000
ARMS = ("peftsft", "peftsft-cached", "trl", "trl-np", "llamafactory")


# ---------------------------------------------------------------------------------------------- the rows


def write_rows(path: Path, rows: int, seed: int = SEED) -> Path:
    """`rows` chats streamed to `path`: the reference job's words and lengths (30–260 tokens), drawn row by row."""
    sys.path.insert(0, str(REPO))
    from benchmarks._chat_job import SYSTEM, WORDS

    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for _ in range(rows):
            target = 30 + int(230 * rng.random() ** 0.6)  # more long rows than short ones, as in chat_rows
            words = max(2, round((target - 25) / 1.04))
            question = max(1, words // 4)
            user = " ".join(rng.choice(WORDS) for _ in range(question)).capitalize() + "?"
            reply = " ".join(rng.choice(WORDS) for _ in range(words - question)).capitalize() + "."
            turns = [SYSTEM, {"role": "user", "content": user}, {"role": "assistant", "content": reply}]
            handle.write(json.dumps({"messages": turns}) + "\n")
    return path


# ---------------------------------------------------------------------------------------------- the arms


def run_peftsft(path: Path, tokenizer_dir: str, work: Path) -> dict:
    from transformers import AutoTokenizer

    from peftsft.core.config import DataSection, DatasetSpec
    from peftsft.data.build import build_datasets
    from peftsft.data.contract import check_contract

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    data = DataSection(datasets=[DatasetSpec(path=str(path))], max_length=MAX_LENGTH)
    clock = Clock()
    train, evals, stats = build_datasets(tokenizer, data, seed=0)
    contract = check_contract(tokenizer, train, evals, stats, data, "sdpa")
    timed = clock.stop()
    assert not contract.failures, contract.failures
    return timed | {"samples": len(train), "cache": stats.cache, "digest": digest(train)}


def marked_template(template: str) -> str:
    """SmolLM2's template with each reply and its <|im_end|> inside {% generation %} (TRL's assistant masks)."""
    turn = "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    assert turn in template, "SmolLM2's template changed: update marked_template"
    return template.replace(turn, (
        "{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\n' }}{% generation %}"
        "{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}{% else %}" + turn + "{% endif %}"
    ))


def run_trl(path: Path, tokenizer_dir: str, work: Path, num_proc: int | None) -> dict:
    import torch
    from datasets import load_dataset
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
    from trl import SFTConfig, SFTTrainer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    plain = tokenizer.apply_chat_template(json.loads(path.open().readline())["messages"], tokenize=False)
    tokenizer.chat_template = marked_template(tokenizer.chat_template)
    assert tokenizer.apply_chat_template(json.loads(path.open().readline())["messages"], tokenize=False) == plain
    torch.manual_seed(0)  # a 2-layer model: the constructor needs one, the data preparation is what is timed
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)
    model = LlamaForCausalLM(config)
    args = SFTConfig(output_dir=str(work / "trl-out"), assistant_only_loss=True, max_length=MAX_LENGTH,
                     dataset_num_proc=num_proc, report_to=[], use_cpu=True, bf16=False)
    clock = Clock()
    dataset = load_dataset("json", data_files=str(path), split="train")
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    timed = clock.stop()
    return timed | {"samples": len(trainer.train_dataset), "digest": digest(trainer.train_dataset)}


def run_llamafactory(path: Path, tokenizer_dir: str, work: Path) -> dict:
    from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
    from llamafactory.hparams import get_train_args
    from llamafactory.model import load_tokenizer

    (work / "lf-data").mkdir(exist_ok=True)
    (work / "lf-data" / "dataset_info.json").write_text(json.dumps({"rows": {
        "file_name": str(path), "formatting": "sharegpt", "columns": {"messages": "messages"},
        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant",
                 "system_tag": "system"}}}))
    model_args, data_args, training_args, *_ = get_train_args({
        "stage": "sft", "do_train": True, "model_name_or_path": tokenizer_dir, "dataset": "rows",
        "dataset_dir": str(work / "lf-data"), "template": "smollm2", "cutoff_len": MAX_LENGTH,
        "output_dir": str(work / "lf-out"), "overwrite_cache": True, "report_to": "none", "finetuning_type": "lora",
    })
    modules = load_tokenizer(model_args)
    template = get_template_and_fix_tokenizer(modules["tokenizer"], data_args)
    clock = Clock()
    module = get_dataset(template, model_args, data_args, training_args, stage="sft", **modules)
    timed = clock.stop()
    train = module["train_dataset"]
    return timed | {"samples": len(train), "digest": digest(train)}


def digest(dataset) -> str:
    """A hash of the first samples' ids and labels: arms that agree on the tokens and masks share it."""
    head = dataset.select(range(min(DIGEST_ROWS, len(dataset))))[:]
    return hashlib.sha256(json.dumps([head["input_ids"], head["labels"]]).encode()).hexdigest()[:16]


def child(args: argparse.Namespace) -> int:
    """One arm, in this process: its figures as JSON on the last line of stdout."""
    path, work = Path(args.file), Path(args.arm_work)
    base = _status("VmRSS")
    if args.arm.startswith("peftsft"):
        result = run_peftsft(path, args.tokenizer, work)
    elif args.arm.startswith("trl"):
        result = run_trl(path, args.tokenizer, work, args.num_proc)
    else:
        result = run_llamafactory(path, args.tokenizer, work)
    result.update(base_rss_mib=base, main_peak_rss_mib=_status("VmHWM"))
    print(json.dumps(result))
    return 0


class Clock:
    """Wall and CPU seconds of the timed section; CPU time counts what the work cost, whatever else the machine ran."""

    def __init__(self):
        self.wall, self.cpu = time.perf_counter(), _cpu_seconds()

    def stop(self) -> dict:
        return {"seconds": time.perf_counter() - self.wall, "cpu_s": round(_cpu_seconds() - self.cpu, 2)}


def _cpu_seconds() -> float:
    """CPU time of this process and of its children that finished."""
    import resource

    return sum(u.ru_utime + u.ru_stime for u in map(resource.getrusage, (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)))


def _status(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


# ---------------------------------------------------------------------------------------------- measuring


class TreeMemory(threading.Thread):
    """Peak RSS, PSS and anonymous PSS of a process and its descendants, sampled every 0.2 s."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.stop, self.peak = pid, threading.Event(), {"rss": 0.0, "pss": 0.0, "pss_anon": 0.0}

    def run(self) -> None:
        import psutil

        root = psutil.Process(self.pid)
        while not self.stop.wait(0.2):
            try:
                pids = [root.pid] + [p.pid for p in root.children(recursive=True)]
            except psutil.Error:
                return
            totals = {"rss": 0.0, "pss": 0.0, "pss_anon": 0.0}
            for pid in pids:
                for key, value in _rollup(pid).items():
                    totals[key] += value
            for key, value in totals.items():
                self.peak[key] = max(self.peak[key], value)


def _rollup(pid: int) -> dict:
    names = {"Rss:": "rss", "Pss:": "pss", "Pss_Anon:": "pss_anon"}
    try:
        lines = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
    except OSError:
        return {}
    return {names[p[0]]: int(p[1]) / 1024 for p in (line.split() for line in lines) if p and p[0] in names}


def measure(arm: str, path: Path, rows: int, args: argparse.Namespace, work: Path) -> dict:
    """Run one arm in a fresh process (its own empty datasets cache; peftsft's shared with peftsft-cached)."""
    python = args.lf_python if arm == "llamafactory" else sys.executable
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(work / arm / "hf-datasets"),
           "PEFTSFT_CACHE": str(work / "peftsft-cache"), "PYTHONPATH": str(REPO)}
    (work / arm).mkdir(parents=True, exist_ok=True)
    if arm == "llamafactory":  # LLaMA-Factory imports torchaudio for audio rows; no wheel matches this torch
        stub = work / "lf-stubs" / "torchaudio"
        stub.mkdir(parents=True, exist_ok=True)
        (stub / "__init__.py").write_text('"""Stand-in: imported by llamafactory.data.mm_plugin, unused for text."""\n')
        env["PYTHONPATH"] = str(work / "lf-stubs")
    command = [python, str(Path(__file__).resolve()), "--arm", arm, "--file", str(path), "--tokenizer",
               args.tokenizer, "--arm-work", str(work / arm)]
    if arm == "trl-np":
        command += ["--num-proc", str(os.cpu_count())]
    load_before = os.getloadavg()
    log = (work / f"{arm}-{rows}.log").open("w")
    started = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True, env=env)
    sampler = TreeMemory(proc.pid)
    sampler.start()
    out, _ = proc.communicate(timeout=args.timeout)
    sampler.stop.set()
    sampler.join()
    record = {"arm": arm, "rows": rows, "wall_s": round(time.perf_counter() - started, 1),
              "load_before": [round(x, 2) for x in load_before], "load_after": [round(x, 2) for x in os.getloadavg()]}
    if proc.returncode != 0:
        return record | {"error": f"exit {proc.returncode}; see {log.name}", "log_tail": _tail(Path(log.name))}
    result = json.loads(out.strip().splitlines()[-1])
    record.update(result, rows_per_s=round(rows / result["seconds"], 1), seconds=round(result["seconds"], 2),
                  rows_per_cpu_s=round(rows / max(result["cpu_s"], 1e-9), 1))
    record.update({f"tree_peak_{k}_mib": round(v, 1) for k, v in sampler.peak.items()})
    return record


def _tail(path: Path, lines: int = 15) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


# ---------------------------------------------------------------------------------------------- the report


def add_ratios(records: list[dict]) -> None:
    """Per size: each arm's rows/s and peak memory over TRL's defaults and LLaMA-Factory's, and 1M over 100k."""
    by = {(r["arm"], r["rows"]): r for r in records if "rows_per_s" in r}
    for (arm, rows), record in by.items():
        for peer in ("trl", "trl-np", "llamafactory"):
            if (other := by.get((peer, rows))) and arm != peer:
                record[f"speed_vs_{peer}"] = round(record["rows_per_s"] / other["rows_per_s"], 2)
                record[f"cpu_efficiency_vs_{peer}"] = round(record["rows_per_cpu_s"] / other["rows_per_cpu_s"], 2)
        smallest = min((r for (a, r) in by if a == arm), default=rows)
        if smallest != rows:
            first = by[(arm, smallest)]
            for key in ("main_peak_rss_mib", "tree_peak_pss_mib", "tree_peak_pss_anon_mib"):
                record[f"{key}_vs_{smallest}"] = round(record[key] / max(first[key], 1e-9), 2)


def markdown(result: dict) -> str:
    lines = [
        "# Data preparation at scale: peftsft vs TRL vs LLaMA-Factory", "",
        f"`python benchmarks/data_scale.py {_command(result['argv'])}` on {result['machine']['cpu']} "
        f"({result['machine']['cores']} cores, {result['machine']['memory_gib']} GiB), {result['date']}; "
        f"peftsft {result['versions'].get('peftsft')}.", "",
        "Generated 2-turn chats (30–260 tokens, seeded) → tokenized, assistant-masked samples, SmolLM2's tokenizer and "
        "template, max length 2048. rows/s: rows over the seconds from the JSONL to masked samples (peftsft: and the "
        "pre-flight contract). Memory in MiB: the arm's main process peak RSS; the process tree's peak PSS, all and "
        "anonymous (what no page-cache eviction can take back). Load average (1 min) before → after each arm: the "
        "machine is shared, speeds move with it. CPU s: the CPU time of the arm's processes over the timed section, "
        "whatever else ran; rows per CPU s is the work's cost, which the load does not change. On an idle machine the "
        "wall time of an arm that keeps N cores busy approaches its CPU time / N: peftsft uses every core by default "
        "([data] num_proc), TRL and LLaMA-Factory one unless told otherwise (trl-np: dataset_num_proc = the cores).",
        "",
        "| rows | arm | rows/s | seconds | × TRL | × LLaMA-Factory | CPU s | rows per CPU s | × TRL | × LLaMA-Factory "
        "| main peak RSS | tree peak PSS | tree peak anon | samples | same tokens as peftsft | load |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    records = result["records"]
    reference = {r["rows"]: r.get("digest") for r in records if r["arm"] == "peftsft"}
    for r in records:
        if "error" in r:
            lines.append(f"| {r['rows']:,} | {r['arm']} | failed: {r['error']} |" + " |" * 13)
            continue
        same = "yes" if r.get("digest") == reference.get(r["rows"]) else "no"
        lines.append(
            f"| {r['rows']:,} | {r['arm']} | {r['rows_per_s']:,.0f} | {r['seconds']:,.1f} | "
            f"{_x(r.get('speed_vs_trl'))} | {_x(r.get('speed_vs_llamafactory'))} | {r['cpu_s']:,.1f} | "
            f"{r['rows_per_cpu_s']:,.0f} | {_x(r.get('cpu_efficiency_vs_trl'))} | "
            f"{_x(r.get('cpu_efficiency_vs_llamafactory'))} | {r['main_peak_rss_mib']:,.0f} | "
            f"{r['tree_peak_pss_mib']:,.0f} | {r['tree_peak_pss_anon_mib']:,.0f} | {r['samples']:,} | {same} | "
            f"{r['load_before'][0]} → {r['load_after'][0]} |"
        )
    growth = [r for r in records if any(k.startswith("main_peak_rss_mib_vs_") for k in r)]
    if growth:
        lines += ["", "Peak memory at the largest size over the smallest (1.00 = flat):", "",
                  "| arm | rows | main peak RSS | tree peak PSS | tree peak anon |", "|---|---:|---:|---:|---:|"]
        for r in growth:
            ratios = [next(v for k, v in r.items() if k.startswith(f"{key}_vs_")) for key in
                      ("main_peak_rss_mib", "tree_peak_pss_mib", "tree_peak_pss_anon_mib")]
            lines.append(f"| {r['arm']} | {r['rows']:,} | " + " | ".join(f"{v:.2f}×" for v in ratios) + " |")
    lines += ["", *result.get("notes", [])]
    return "\n".join(lines) + "\n"


def _command(argv: list[str]) -> str:
    """The command line as run, the notes' text left out (they follow the table)."""
    return " ".join("…" if i and argv[i - 1] == "--note" else arg for i, arg in enumerate(argv))


def _x(value) -> str:
    return f"{value:.2f}×" if value is not None else ""


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [r for r in result["records"] if "rows_per_s" in r]
    sizes = sorted({r["rows"] for r in records})
    arms = [a for a in ARMS if any(r["arm"] == a for r in records)]
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.8 / max(len(arms), 1)
    for i, arm in enumerate(arms):
        for ax, key in zip(axes, ("rows_per_s", "tree_peak_pss_anon_mib")):
            values = [next((r[key] for r in records if r["arm"] == arm and r["rows"] == n), 0) for n in sizes]
            ax.bar([j + i * width for j in range(len(sizes))], values, width, label=arm)
    for ax, title in zip(axes, ("rows/s (higher is better)", "peak anonymous memory of the process tree, MiB")):
        ax.set_xticks([j + width * (len(arms) - 1) / 2 for j in range(len(sizes))], [f"{n:,} rows" for n in sizes])
        ax.set_title(title)
    axes[1].set_yscale("log")
    axes[0].legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    memory = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal"))
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(memory / 2**20, 1), "python": platform.python_version()}


def versions(lf_python: str | None) -> dict:
    import datasets
    import tokenizers
    import transformers
    import trl

    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    out = {"peftsft": commit.stdout.strip() or os.environ.get("PEFTSFT_COMMIT", "unknown"), "transformers": transformers.__version__, "trl": trl.__version__,
           "datasets": datasets.__version__, "tokenizers": tokenizers.__version__}
    if lf_python:
        probe = "import importlib.metadata as m; print(m.version('llamafactory'), m.version('transformers'), m.version('datasets'))"
        found = subprocess.run([lf_python, "-c", probe], capture_output=True, text=True).stdout.split()
        if len(found) == 3:
            out["llamafactory"] = f"{found[0]} (transformers {found[1]}, datasets {found[2]})"
    return out


# ---------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000], help="dataset sizes")
    parser.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated, of {', '.join(ARMS)}")
    parser.add_argument("--lf-python", default="/tmp/lf-venv/bin/python",
                        help="python of a venv with llamafactory installed (skipped where it does not exist)")
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "peftsft-data-scale"),
                        help="generated rows and caches (several GB at 1M rows)")
    parser.add_argument("--out", default=str(OUT))
    parser.add_argument("--timeout", type=float, default=4 * 3600, help="seconds per arm")
    parser.add_argument("--keep-work", action="store_true", help="keep the generated files and caches")
    parser.add_argument("--note", action="append", default=[], help="a line for the report's notes")
    parser.add_argument("--append", action="store_true",
                        help="keep the records of --out's results.json for other sizes and arms (rerun ones replace)")
    for hidden in ("--arm", "--file", "--tokenizer", "--arm-work"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    parser.add_argument("--num-proc", type=int, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.arm:
        return child(args)
    sys.path.insert(0, str(REPO))
    from peftsft.core.config import DEFAULT_MODEL
    from peftsft.models import materialize, resolve_source

    args.tokenizer = str(materialize(resolve_source(DEFAULT_MODEL)))
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    if unknown := set(arms) - set(ARMS):
        raise SystemExit(f"unknown arm(s) {sorted(unknown)}; choose from {', '.join(ARMS)}")
    notes = list(args.note)
    if "llamafactory" in arms and not Path(args.lf_python).exists():
        arms.remove("llamafactory")
        notes.append(f"LLaMA-Factory: skipped, no venv at {args.lf_python} (pip install llamafactory into one).")
    elif "llamafactory" in arms:
        notes.append("LLaMA-Factory ran in its own venv with a stand-in `torchaudio` module: llamafactory.data imports "
                     "torchaudio at the top, and no torchaudio wheel matches the venv's torch (2.13); text rows never "
                     "use it.")
    work, out = Path(args.work), Path(args.out)
    previous = json.loads((out / "results.json").read_text()) if args.append and (out / "results.json").exists() else {}
    records = [r for r in previous.get("records", []) if not (r["rows"] in args.rows and r["arm"] in arms)]
    result = {"argv": argv if argv is not None else sys.argv[1:], "date": time.strftime("%Y-%m-%d %H:%M"),
              "machine": machine(), "versions": versions(args.lf_python if Path(args.lf_python).exists() else None),
              "records": records, "notes": list(dict.fromkeys(previous.get("notes", []) + notes))}
    for rows in args.rows:
        path = work / f"chat-{rows}.jsonl"
        if not path.exists():
            write_rows(path, rows)
        size_work = work / str(rows)
        for arm in arms:
            records.append(measure(arm, path, rows, args, size_work))
            print(json.dumps(records[-1]), flush=True)
            write_results(result, out)  # after every arm: a long run that stops keeps what it measured
        if not args.keep_work:
            shutil.rmtree(size_work, ignore_errors=True)
    print(markdown(result))
    return 0


def write_results(result: dict, out: Path) -> None:
    result["records"].sort(key=lambda r: (r["rows"], ARMS.index(r["arm"])))
    add_ratios(result["records"])
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "results.md").write_text(markdown(result))
    plot(result, out / "results.png")


if __name__ == "__main__":
    sys.exit(main())
