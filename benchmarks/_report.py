"""The benchmark's report: results.md (tables with ratios, plan vs measurement), results.png, machine facts."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

from rich.console import Console

def hardware() -> dict:
    import torch

    info = {
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "memory_bytes": _meminfo_total(),
        "torch_threads": torch.get_num_threads(),
        "cuda": None,
        "matmul_gflops": {dtype: matmul_gflops(dtype) for dtype in ("float32", "bfloat16")},
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["cuda"] = {"name": props.name, "memory_bytes": props.total_memory, "count": torch.cuda.device_count()}
    return info


def matmul_gflops(dtype: str, seconds: float = 1.0) -> float:
    """This machine's dense matmul peak for `dtype` (GFLOP/s): the best of repeated square products, as `a @ b`
    and as `F.linear` (what a model's layers run), at two sizes. Both ops count: on AVX2-only CPUs a bf16
    `a @ b` runs at ~1 GFLOP/s while a bf16 `F.linear` takes oneDNN's path at ~17 (measured), so probing `@`
    alone put TRL's bf16 arm at 314% of "the peak". Two sizes: on CPUs with AMX, 1024² bf16 products reach only
    about half of what 2048² ones do on two threads. The larger size is skipped for an op whose smaller product
    took longer than `seconds` (it is no peak, and a 2048² bf16 `@` alone takes ~17 s on an AVX2 CPU)."""
    import time

    import torch
    import torch.nn.functional as F

    device = "cuda" if torch.cuda.is_available() else "cpu"
    best = 0.0
    for op in (torch.matmul, F.linear):
        for n in (4096, 8192) if device == "cuda" else (1024, 2048):
            a, b = (torch.randn(n, n, device=device).to(getattr(torch, dtype)) for _ in range(2))
            start = time.perf_counter()
            op(a, b)  # warm-up: first-call dispatch and page faults
            if device == "cuda":
                torch.cuda.synchronize()
            slow = time.perf_counter() - start > seconds
            deadline = time.perf_counter() + seconds
            while True:
                start = time.perf_counter()
                op(a, b)
                if device == "cuda":
                    torch.cuda.synchronize()
                elapsed = time.perf_counter() - start
                best = max(best, 2 * n**3 / elapsed / 1e9)
                if start + elapsed > deadline:
                    break
            if slow:
                break
    return round(best, 1)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _meminfo_total() -> int | None:
    try:
        first = Path("/proc/meminfo").read_text().splitlines()[0]
        return int(first.split()[1]) * 1024
    except (OSError, IndexError, ValueError):
        return None


def human_bytes(n: float | None) -> str:
    if n is None:
        return "—"
    if n >= 2**30:
        return f"{n / 2**30:.2f} GiB"
    return f"{n / 2**20:.0f} MiB" if n >= 2**20 else f"{n / 2**10:.0f} KiB"


def _with_ratio(text: str, record: dict, key: str) -> str:
    ratio = (record.get("ratios") or {}).get(key)
    return f"{text} ({ratio:.2f}×)" if ratio is not None and record.get("reference") else text


def markdown(report: dict) -> str:
    job, hw = report["job"], report["hardware"]
    gpu = f"{hw['cuda']['name']} ({human_bytes(hw['cuda']['memory_bytes'])})" if hw["cuda"] else "none"
    lines = [
        "# Full fine-tuning vs LoRA vs QLoRA vs plain TRL",
        "",
        f"Measured by `{report['command']}` on {report['date']}.",
        "",
        f"- **Machine:** {hw['cpu']}, {hw['logical_cores']} logical cores, {human_bytes(hw['memory_bytes'])} RAM, "
        f"GPU: {gpu}; {hw['platform']}; torch threads: {hw['torch_threads']}",
        "- **Libraries:** " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()),
        _reference_job(job) if job.get("name") == "reference" else
        f"- **Job (every arm):** model `{job['model']}` on {job['device']}, batch {job['batch']}, max length "
        f"{job['seq_len']}, {job['steps']} measured steps after {job['warmup']} warm-up step(s) (discarded), "
        f"optimizer {job['optim']}. The same {job['rows']} chat rows (recipes/data/persona_train.jsonl, shuffled "
        "once, mixed lengths), each once: TRL arms in file order (the shortest rows as warm-up, then the longest), "
        "peftsft arms with their default speed levers (length-grouped batches, loss head on supervised positions "
        "only, activation checkpointing when activations dominate memory; the levers each arm used are in "
        "results.json); the loss covers "
        "every token in every arm (TRL's default for conversational rows; peftsft arms use masking = \"all\"). "
        "Learning rates are each side's default (peftsft 2e-4, TRL 2e-5): final losses after a few steps are a "
        "sanity check, not a quality comparison."
        + _malloc_note(job),
        "",
        "| arm | what | trainable params | optimizer states | peak memory | training footprint | train tokens/s "
        "| s/step | matmul GFLOP/s (share of peak) | final loss |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in report["arms"]:
        if not r.get("ok"):
            lines.append(f"| {r['arm']} | {r['describe']} | failed: {r.get('error', '?')} ||||||||")
            continue
        trainable, rate, seconds = f"{r['trainable_params']:,}", f"{r['tokens_per_s']:.1f}", f"{r['step_seconds']:.2f}"
        lines.append(
            f"| {r['arm']} | {r['describe']} | {_with_ratio(trainable, r, 'trainable_params')} "
            f"| {_with_ratio(human_bytes(r['optimizer_state_bytes']), r, 'optimizer_state_bytes')} "
            f"| {_with_ratio(human_bytes(r['peak_bytes']), r, 'peak_bytes')} "
            f"| {_with_ratio(human_bytes(r['footprint_bytes']), r, 'footprint_bytes')} "
            f"| {_with_ratio(rate, r, 'tokens_per_s')} "
            f"| {_with_ratio(seconds, r, 'step_seconds')} "
            f"| {_efficiency(r, hw)} "
            f"| {r['final_loss']:.3f} |"
        )
    lines += ["", _ratio_note(report), *_budget_note(report), "", *_plan_table(report)]
    lines += ["", *_definitions(job["device"], hw)]
    return "\n".join(lines) + "\n"


def _reference_job(job: dict) -> str:
    lora = job.get("lora") or {}
    return (
        f"- **Job (every arm): the reference job** (benchmarks/_chat_job.py, issue 24): model `{job['model']}` on "
        f"{job['device']}, {job['rows']} generated chat rows of 30–260 tokens, each once, batch {job['batch']}, "
        f"max length {job['seq_len']}, learning rate {job['learning_rate']}, LoRA r{lora.get('r')}/"
        f"α{lora.get('alpha')} all-linear, dropout {lora.get('dropout')}, optimizer {job['optim']}; "
        f"{job['warmup']} warm-up step(s) discarded, tokens/s over the other {job['steps']} (the whole epoch). "
        "TRL arms: SFTTrainer's defaults (bf16 where TRL picks it, gradient checkpointing, its loss head) on the "
        "rows in file order; peftsft arms: their default speed levers (results.json has each arm's). The loss "
        "covers every token in every arm (masking = \"all\")."
        + _malloc_note(job)
    )


def _peaks(hw: dict) -> str:
    peaks = hw.get("matmul_gflops") or {}
    return ", ".join(f"{dtype} {gflops:.1f} GFLOP/s" for dtype, gflops in peaks.items()) or "not measured"


def _efficiency(record: dict, hw: dict) -> str:
    """Achieved matmul GFLOP/s and its share of the machine's best matmul peak (the dtype it runs fastest)."""
    peaks = hw.get("matmul_gflops") or {}
    if "achieved_gflops" not in record or not peaks:
        return "—"
    share = record.get("peak_share") or {}  # the peak for the precision the arm trains in
    dtype = share.get("dtype") or max(peaks, key=peaks.get)
    return f"{record['achieved_gflops']:.1f} ({record['peak_fraction'][dtype]:.0%} of {dtype})"


def _malloc_note(job: dict) -> str:
    if not job.get("env"):
        return (" Arm processes run with glibc's malloc as it is (what `peftsft run` and a plain TRL script get): "
                "peak RSS includes freed memory glibc keeps for reuse.")
    settings = ", ".join(f"{k}={v}" for k, v in job["env"].items())
    return (
        f" Arm processes run with {settings}: glibc then returns every freed tensor of 1 MiB or more to the OS, "
        "so RSS tracks the memory in use."
    )


def _ratio_note(report: dict) -> str:
    refs = sorted({r["reference"] for r in report["arms"] if r.get("reference")})
    if not refs:
        return "No baseline arm ran, so there are no ratios."
    return (
        f"(×) = ratio to the baseline measured in this run ({' / '.join(refs)}; quantized arms are compared with "
        "trl_qlora when it ran). Memory and s/step: lower is better; tokens/s: higher is better."
    )


def _budget_note(report: dict) -> list[str]:
    short = [r for r in report["arms"] if r.get("ok") and r.get("stopped_by_budget")]
    if not short:
        return []
    cut = ", ".join(f"{r['arm']} ({r['measured_steps']} of {report['job']['steps']})" for r in short)
    return [
        "",
        f"Measured steps cut short by the {report['job']['budget']:.0f} s per-arm budget: {cut}. Every arm ran the "
        "batch with the longest row first after the warm-up, so memory peaks are comparable; tokens/s is the median "
        "of the steps measured.",
    ]


def _plan_table(report: dict) -> list[str]:
    lines = [
        "## `peftsft plan` estimate vs measurement",
        "",
        "| arm | estimate | measured footprint | error | weights | gradients | optimizer | activations + loss head "
        "| kernel caches |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in report["arms"]:
        plan = r.get("plan") or {}
        if not r.get("ok") or not plan.get("peak_bytes"):
            continue
        c = plan["components"]
        lines.append(
            f"| {r['arm']} | {human_bytes(plan['peak_bytes'])} | {human_bytes(r['footprint_bytes'])} "
            f"| {r['plan_error']:+.0%} | {human_bytes(c['weights'])} (measured {human_bytes(r['weights_bytes'])}) "
            f"| {human_bytes(c['gradients'])} (measured {human_bytes(r['gradient_bytes'])}) "
            f"| {human_bytes(c['optimizer'])} (measured {human_bytes(r['optimizer_state_bytes'])}) "
            f"| {human_bytes(c['activations'] + c['loss_head'])} | {human_bytes(c.get('kernel_caches', 0))} |"
        )
    return lines


def _definitions(device: str, hw: dict) -> list[str]:
    memory = (
        "- **peak memory**: `torch.cuda.max_memory_allocated` during training (reserved is in results.json); "
        "**training footprint**: the same figure, which `peftsft plan` estimates."
        if device == "cuda"
        else "- **peak memory**: the arm process's peak RSS (`ru_maxrss`), loading included; "
        "**training footprint**: the weights' bytes plus how much RSS grew during training (the kernel's peak-RSS "
        "mark is reset when training starts), i.e. memory for weights, gradients, optimizer states and "
        "activations, without the Python runtime — what `peftsft plan` estimates."
    )
    return [
        "## Definitions",
        "",
        memory,
        "- **train tokens/s**: non-padding tokens of a step / its wall time (step begin → step end, in a "
        "TrainerCallback), median over the measured steps; **s/step**: median step time.",
        "- **optimizer states**: bytes of the optimizer's state tensors after training; **trainable params** as peft "
        "counts them.",
        "- **matmul GFLOP/s**: tokens/s × the model's matmul FLOPs per token (forward 2P, backward 2P for the "
        "activations' gradients, 2P more for the weights that train; P = weights of every linear layer, LM head "
        "included; activation checkpointing's recomputation not counted), and its share of this machine's best "
        f"dense matmul peak for the precision the arm trains in (bf16 autocast: bfloat16), measured in the same "
        f"run ({_peaks(hw)}; every share is in results.json).",
    ]


def _planned(record: dict) -> bool:
    return bool((record.get("plan") or {}).get("peak_bytes"))


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = [r for r in report["arms"] if r.get("ok")]
    names = [r["arm"] for r in arms]
    colors = ["#999999" if r["kind"] == "trl" else "#2a7ab0" for r in arms]
    fig, (mem_ax, tps_ax) = plt.subplots(1, 2, figsize=(11, 4.2))
    x = range(len(arms))
    mem_ax.bar([i - 0.2 for i in x], [r["peak_bytes"] / 2**20 for r in arms], 0.4, color=colors, label="peak memory")
    mem_ax.bar([i + 0.2 for i in x], [r["footprint_bytes"] / 2**20 for r in arms], 0.4, color=colors, alpha=0.5,
               hatch="//", label="training footprint")
    planned = [(i + 0.2, r["plan"]["peak_bytes"] / 2**20) for i, r in enumerate(arms) if _planned(r)]
    if planned:
        mem_ax.scatter(*zip(*planned), marker="_", s=400, color="black", zorder=3, label="plan estimate")
    mem_ax.set_ylabel("MiB")
    mem_ax.set_title("memory (lower is better)")
    mem_ax.legend(fontsize=8)
    tps_ax.bar(list(x), [r["tokens_per_s"] or 0 for r in arms], 0.6, color=colors)
    tps_ax.set_ylabel("train tokens / s")
    tps_ax.set_title("throughput (higher is better; grey = plain TRL)")
    for ax in (mem_ax, tps_ax):
        ax.set_xticks(list(x), names, rotation=20)
        ax.grid(axis="y", alpha=0.3)
    job = report["job"]
    title = f"{job['model']} · batch {job['batch']} · max length {job['seq_len']} · {job['device']}"
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)



def write_outputs(report: dict, out: Path) -> None:
    (out / "results.json").write_text(json.dumps(report, indent=1, default=str), encoding="utf-8")
    (out / "results.md").write_text(markdown(report), encoding="utf-8")
    plot(report, out / "results.png")
    Console().print(f"[green]wrote[/] {out / 'results.md'}, results.json, results.png")
