"""DPO's reference model, continuing an SFT adapter: peftsft's way (one base, a frozen copy of the adapter beside the
trained one) against a second copy of the model as the reference, side by side, each arm in a fresh process.

  adapter_copy  peftsft: the SFT adapter loaded trainable; TRL's "ref" adapter, a frozen copy of it, is the reference
  two_copies    the usual alternative: the same policy, and as ref_model a second copy of the base with the SFT
                adapter merged into it (its weights cloned: memory of its own, as on a GPU)
  precompute    peftsft with [preference] precompute_reference: the reference's log-probabilities computed once
                before training (through the frozen copy), nothing of it used while training

Both build the same rows (peftsft's preference build), the same trainer (TRL's DPOTrainer through
peftsft.core.compat.pretokenized) and train the same steps; only the reference differs. The SFT adapter is a LoRA
with random non-zero B matrices saved to disk: its values change no memory figure. Memory: the process's resident
set (VmRSS) sampled every 5 ms, the peak over building the trainer and training; also its anonymous part (RssAnon),
which leaves out file pages. The machine's other work changes times, not memory: rerun quietly for times.

  python benchmarks/preference_reference.py                 # all arms; writes results/preference/results.{json,md}
  python benchmarks/preference_reference.py --steps 2 --max-length 256 --out /tmp/x   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
ARMS = ("adapter_copy", "two_copies", "precompute")
PAIRS = REPO / "recipes" / "data" / "preference_train.jsonl"


def rss_mib(field: str = "VmRSS") -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


class PeakRss:
    """The highest VmRSS (and RssAnon) seen while the block runs."""

    def __enter__(self):
        self.peak, self.peak_anon, self._stop = rss_mib(), rss_mib("RssAnon"), threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self):
        while not self._stop.wait(0.005):
            self.peak, self.peak_anon = max(self.peak, rss_mib()), max(self.peak_anon, rss_mib("RssAnon"))

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mib())


def load_base():
    """The embedded SmolLM2 as peftsft loads it, in fp32, its weights in memory of their own."""
    from peftsft.core.config import DEFAULT_MODEL, ModelSection, QuantizationSection
    from peftsft.models import load_model

    model, tokenizer, _ = load_model(ModelSection(source=DEFAULT_MODEL, dtype="float32"), QuantizationSection(), "cpu")
    for param in model.parameters():
        param.data = param.data.clone()
    return model, tokenizer


def sft_adapter(folder: Path) -> Path:
    """A LoRA adapter standing in for an SFT run's: r 16 on every linear layer, B random (non-zero)."""
    import torch
    from peft import LoraConfig, get_peft_model

    if (folder / "adapter_config.json").is_file():
        return folder
    model, _ = load_base()
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, lora)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if ".lora_B." in name:
                param.normal_(std=0.01)
    peft_model.save_pretrained(folder)
    return folder


def run_arm(arm: str, adapter: Path, steps: int, batch: int, max_length: int) -> dict:
    import torch
    from trl import DPOConfig, DPOTrainer

    from peftsft.core.compat import pretokenized
    from peftsft.core.config import DataSection, DatasetSpec
    from peftsft.core.rundir.adapter import load_adapter
    from peftsft.data.preference_build import build_preference_datasets
    from peftsft.strategies.peft_common import prepare_base
    from peftsft.tasks.preference.model import ADAPTER_COPY, settle_reference

    torch.manual_seed(0)
    model, tokenizer = load_base()
    data = DataSection(datasets=[DatasetSpec(path=str(PAIRS))], max_length=max_length, cache=False)
    train, _, _ = build_preference_datasets(tokenizer, data, seed=0, paired=True)
    train = train.select(range(min(steps * batch, len(train))))
    policy = load_adapter(prepare_base(model, False), adapter, trainable=True)
    rss_model = rss_mib()
    with tempfile.TemporaryDirectory() as out:
        args = DPOConfig(
            output_dir=out, per_device_train_batch_size=batch, max_steps=steps, learning_rate=5e-5, beta=0.1,
            logging_steps=1, report_to=[], save_strategy="no", use_cpu=True, bf16=False, max_length=max_length,
            precompute_ref_log_probs=arm == "precompute", lr_scheduler_type="constant", dataloader_num_workers=0,
            seed=0, disable_tqdm=True, remove_unused_columns=False,
        )
        with PeakRss() as peak:
            kwargs = {}
            if arm == "two_copies":
                reference, _ = load_base()
                kwargs["ref_model"] = load_adapter(reference, adapter).merge_and_unload().eval()
            trainer = pretokenized(DPOTrainer)(model=policy, args=args, train_dataset=train, processing_class=tokenizer,
                                               **kwargs)  # fmt: skip
            if arm != "two_copies":
                settle_reference(policy, ADAPTER_COPY)
            rss_init = rss_mib()
            started = time.perf_counter()
            trainer.train()
            seconds = time.perf_counter() - started
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    return {
        "arm": arm, "steps": steps, "batch_pairs": batch, "max_length": max_length, "pairs": len(train),
        "adapters": sorted(policy.peft_config), "ref_model": type(trainer.ref_model).__name__ if trainer.ref_model else None,
        "rss_after_policy_mib": round(rss_model), "rss_after_trainer_init_mib": round(rss_init),
        "peak_rss_mib": round(peak.peak), "peak_anon_mib": round(peak.peak_anon), "train_seconds": round(seconds, 1),
        "first_loss": logs[0]["loss"], "last_loss": logs[-1]["loss"],
        "first_margin": logs[0]["rewards/margins"], "last_margin": logs[-1]["rewards/margins"],
        "torch": torch.__version__, "threads": torch.get_num_threads(),
    }


def markdown(results: list[dict], command: str) -> str:
    base = next(r for r in results if r["arm"] == "two_copies")
    lines = [
        "# DPO's reference when continuing an SFT adapter: memory", "",
        f"`{command}` — SmolLM2-135M-Instruct (fp32, CPU), LoRA r 16 on every linear layer, {base['steps']} steps of "
        f"{base['batch_pairs']} pairs (max_length {base['max_length']}), each arm in a fresh process.", "",
        "| arm | reference | peak RSS (MiB) | peak anonymous (MiB) | vs two copies | train s | first → last loss |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    what = {"adapter_copy": "frozen copy of the SFT adapter, one base (peftsft)",
            "two_copies": "second copy of the model (SFT adapter merged)",
            "precompute": "log-probs precomputed through the frozen copy (peftsft, precompute_reference)"}
    for r in results:
        lines.append(f"| {r['arm']} | {what[r['arm']]} | {r['peak_rss_mib']} | {r['peak_anon_mib']} | "
                     f"{r['peak_rss_mib'] / base['peak_rss_mib']:.2f} | {r['train_seconds']} | "
                     f"{r['first_loss']:.4f} → {r['last_loss']:.4f} |")
    ours = next((r for r in results if r["arm"] == "adapter_copy"), None)
    if ours is not None:
        same = all(abs(r["last_loss"] - base["last_loss"]) < 1e-4 for r in results)
        lines += ["", f"The second copy costs {base['peak_rss_mib'] - ours['peak_rss_mib']} MiB of peak RSS over the "
                  "frozen adapter copy. " + ("Every arm ends at the same loss: the references agree." if same else
                                              "The arms' losses differ: the references do not agree.")]
    lines += ["", "Times are distorted by other work on a shared machine; memory is what this comparison is for. "
              "Ratios are peak RSS over the two-copies arm's, measured in the same run."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arm", choices=ARMS, help="run one arm in this process (the driver's child)")
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--adapter", default=str(Path(tempfile.gettempdir()) / "peftsft-bench-sft-adapter"))
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "preference"))
    args = parser.parse_args(argv)
    if args.arm:
        import torch

        torch.set_num_threads(args.threads)
        result = run_arm(args.arm, Path(args.adapter), args.steps, args.batch, args.max_length)
        print("RESULT " + json.dumps(result), flush=True)
        return 0
    adapter = sft_adapter(Path(args.adapter))
    results = []
    for arm in args.arms.split(","):
        if arm not in ARMS:
            print(f"unknown arm {arm!r}; arms: {', '.join(ARMS)}", file=sys.stderr)
            return 2
        cmd = [sys.executable, __file__, "--arm", arm, "--steps", str(args.steps), "--batch", str(args.batch),
               "--max-length", str(args.max_length), "--threads", str(args.threads), "--adapter", str(adapter)]
        done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
        line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            print(done.stdout[-3000:], done.stderr[-3000:], file=sys.stderr)
            return 1
        results.append(json.loads(line.removeprefix("RESULT ")))
        print(f"{arm:13s} peak {results[-1]['peak_rss_mib']} MiB (anonymous {results[-1]['peak_anon_mib']})", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/preference_reference.py " + " ".join(argv if argv is not None else sys.argv[1:])
    (out / "results.json").write_text(json.dumps({"command": command.strip(), "results": results}, indent=1) + "\n")
    if any(r["arm"] == "two_copies" for r in results):
        (out / "results.md").write_text(markdown(results, command.strip()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
