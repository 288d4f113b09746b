"""`peftsft plan` on paper for GPUs: Llama-3.1-8B LoRA and QLoRA at 2k context on 24 GB and 80 GB cards.

    python benchmarks/plan_llama8b.py --out /tmp/plan8b      # config only: no weights, no GPU, no Hub

The model's config is built here from Llama-3.1-8B's published dimensions (transformers' LlamaConfig), since
`plan` reads a config and nothing else. Next to it, torchtune's published RTX 4090 figures for the same model
(LoRA 3,083 tokens/s at 16.2 GiB, QLoRA 2,413 tokens/s at 7.4 GiB peak memory), which are measurements, not
estimates; the benchmark's CUDA run (`full_vs_lora.py` on a GPU machine) is what measures peftsft's side.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# Llama-3.1-8B (meta-llama/Llama-3.1-8B config.json)
LLAMA_31_8B = dict(
    vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
    num_key_value_heads=8, max_position_embeddings=131072, rope_theta=500000.0, tie_word_embeddings=False,
    bos_token_id=128000, eos_token_id=128001, rms_norm_eps=1e-5,
)
TORCHTUNE_4090 = {"lora": ("3,083 tok/s", "16.2 GiB"), "qlora": ("2,413 tok/s", "7.4 GiB")}
GPUS = {"24 GB": 22.0, "80 GB": 78.0}  # GiB free after the CUDA context and the runtime (~1.5 GiB)


def write_config(directory: Path) -> Path:
    from transformers import LlamaConfig

    directory.mkdir(parents=True, exist_ok=True)
    LlamaConfig(**LLAMA_31_8B).save_pretrained(directory)
    return directory


def write_recipe(path: Path, model_dir: Path, bits: int | None, batch: int, seq: int) -> Path:
    quant = f"[quantization]\nbits = {bits}\n" if bits else ""
    data = path.parent / "rows.jsonl"  # the recipe must name data; --max-length planning never reads it
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n", encoding="utf-8")
    path.write_text(
        f"""[model]
source = "{model_dir}"
{quant}
[strategy]
name = "lora"
r = 8
alpha = 16
dropout = 0.0
[[data.datasets]]
path = "{data}"
[data]
max_length = {seq}
[training]
batch_size = {batch}
[run]
output_dir = "{path.parent / 'runs'}"
""",
        encoding="utf-8",
    )
    return path


def plan(recipe: Path, free_gib: float) -> dict:
    from peftsft.training.plan import estimate
    from peftsft.training.recipe import load_recipe

    result = estimate(load_recipe(recipe), "cuda", read_data=False, available_bytes=int(free_gib * 2**30))
    return {"peak_gib": round(result.peak_bytes / 2**30, 2), "checkpointing": result.checkpointing_reason,
            "components_gib": {k: round(v / 2**30, 2) for k, v in result.components.items()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=2048)
    args = parser.parse_args(argv)
    out = Path(args.out)
    model_dir = write_config(out / "llama-3.1-8b-config")
    rows = []
    for arm, bits in (("lora", None), ("qlora", 4)):
        recipe = write_recipe(out / f"{arm}.toml", model_dir, bits, args.batch, args.seq)
        for gpu, free in GPUS.items():
            rows.append({"arm": arm, "gpu": gpu, **plan(recipe, free)})
    lines = [
        f"Llama-3.1-8B, LoRA r8/α16 all-linear, batch {args.batch} × {args.seq} tokens, bf16, `peftsft plan` "
        "(estimate; `--device cuda --memory GIB`):", "",
        "| arm | GPU | planned peak | activation checkpointing (auto) | torchtune on an RTX 4090 (measured) |",
        "|---|---|--:|---|---|",
    ]
    for row in rows:
        rate, memory = TORCHTUNE_4090[row["arm"]]
        lines.append(f"| {row['arm']} | {row['gpu']} | {row['peak_gib']:.1f} GiB | {row['checkpointing']} "
                     f"| {memory} peak, {rate} |")
    (out / "plan_llama8b.json").write_text(json.dumps(rows, indent=1), encoding="utf-8")
    (out / "plan_llama8b.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
