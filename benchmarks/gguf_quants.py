"""Size, llama.cpp generation speed and logit error of each GGUF weight type on one run (the README's table).

    python benchmarks/gguf_quants.py runs/gguf-demo [--quants f16,q8_0,q4_k_m] [--threads 2] [--repeats 3]

Each type is exported through the normal verified path (so the error is what the export's check measured, in
llama.cpp), then generated with greedily for 64 tokens, `--repeats` times (the median is reported, after one
untimed warm-up generation). The GGUF files go to --out; the table is printed and written to --table.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from rich.console import Console

from peftsft.artifacts.export.pipeline import Exporter, ExportJob
from peftsft.artifacts.export.run_models import open_run

QUANTS = "f16,bf16,q8_0,q6_k,q5_k_m,q4_k_m,q4_0"
PROMPT = "Write a short paragraph about why the sky is blue."


def tokens_per_second(path: Path, threads: int, repeats: int, new_tokens: int = 64) -> float:
    """Median greedy generation speed (prompt processing included) over `repeats` runs after a warm-up."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), n_ctx=256, n_threads=threads, n_threads_batch=threads, verbose=False)
    prompt = llm.tokenize(PROMPT.encode())
    speeds = []
    for _ in range(repeats + 1):
        llm.reset()
        count, start = 0, time.perf_counter()
        for _ in llm.generate(prompt, temp=0.0, reset=True):  # greedy; runs on past end-of-turn (speed only)
            count += 1
            if count == new_tokens:
                break
        speeds.append(new_tokens / (time.perf_counter() - start))
    llm.close()
    return statistics.median(speeds[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--quants", default=QUANTS)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="/tmp/peftsft-gguf-quants", help="where the GGUF files go")
    parser.add_argument("--table", default="benchmarks/results/gguf_quants.md", help="the table, as Markdown")
    args = parser.parse_args()
    exporter = Exporter(open_run(args.run_dir), Console(quiet=True))
    lines = ["| type | size (MB) | llama.cpp tokens/s | max / mean \\|Δ logit\\| (share of max logit) | greedy "
             "agreement | identical replies | checked in |", "|---|---:|---:|---:|---:|---:|---|"]
    for quant in args.quants.split(","):
        out = Path(args.out) / f"{Path(args.run_dir).name}.{quant}.gguf"
        exporter.export(ExportJob("gguf", out, quant=quant, modelfile=False), force=True)
        c = exporter.checks[-1]
        speed = tokens_per_second(out, args.threads, args.repeats)
        lines.append(f"| {quant} | {out.stat().st_size / 1e6:.0f} | {speed:.0f} | {c.max_diff / c.scale:.1e} / "
                     f"{c.mean_diff / c.scale:.1e} | {c.agreement:.0%} | {c.same_replies}/{c.prompts} | {c.runtime} |")
        print(lines[-1], flush=True)
    print("\n".join(lines))
    Path(args.table).write_text(f"`python benchmarks/gguf_quants.py {args.run_dir} --quants {args.quants} "
                                f"--threads {args.threads} --repeats {args.repeats}`\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
