"""`peftsft plan RECIPE`: the memory plan (peftsft.training.plan over the levers' terms), as a table (or JSON)."""

from __future__ import annotations

import argparse
import json

def add_commands(subparsers) -> None:
    parser = subparsers.add_parser("plan", help="estimate peak training memory for a recipe, before running it")
    parser.add_argument("recipe", help="path to a recipe .toml")
    parser.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a recipe value")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="device to plan for (auto: the recipe's, on this machine)")
    parser.add_argument("--max-length", action="store_true",
                        help="assume every row is [data] max_length tokens long instead of reading the data")
    parser.add_argument("--memory", type=float, metavar="GIB",
                        help="plan for a device with this much memory free (GiB), e.g. 22 on a 24 GB GPU; "
                        "default: measured on this machine")
    parser.add_argument("--json", action="store_true", help="print the estimate as JSON")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    parser.set_defaults(func=cmd_plan)


def cmd_plan(args: argparse.Namespace) -> int:
    from peftsft.core.console import console
    from peftsft.training.plan import estimate
    from peftsft.training.recipe import load_recipe

    recipe = load_recipe(args.recipe, list(args.set or []))
    device = None if args.device == "auto" else args.device
    with console.status("reading the model's config and the data"):
        available = int(args.memory * 2**30) if args.memory else None
        plan = estimate(recipe, device, read_data=not args.max_length, available_bytes=available)
    if args.json:
        console.print_json(json.dumps(plan.as_dict()))
    else:
        print_plan(console, plan, recipe)
    return 0


def print_plan(console, plan, recipe) -> None:
    from rich.markup import escape
    from rich.table import Table

    from peftsft.core.units import gib

    table = Table(title=escape(f"memory plan: {recipe.model.source} · {recipe.strategy.name} · {plan.device}"))
    table.add_column("component")
    table.add_column("estimate", justify="right")
    table.add_column("from")
    quant = f", {plan.quantized_params:,} of them {recipe.quantization.bits}-bit" if plan.quantized_params else ""
    explain = {
        "weights": f"{plan.total_params:,} parameters{quant}",
        "gradients": f"{plan.trainable_params:,} trainable parameters",
        "optimizer": f"{plan.levers.get('optimizer', recipe.training.optim)} states",
        "activations": f"{plan.dims.layers} layers x batch {plan.batch} x {plan.seq} tokens ({plan.seq_from}), "
        f"{plan.precision}{', checkpointed' if plan.checkpointing else ''}",
        "loss_head": "peftsft's CPU LM head: token blocks of logits over the whole vocabulary + the hidden gradient"
        if plan.levers.get("loss_kernel") == "peftsft"
        else f"TRL's fused LM head: logit tiles ({plan.levers.get('loss_vocab_chunk')} vocabulary slice) "
        "+ gradient accumulators",
    }
    explain["general_check"] = ("scoring the general check before and after training (replies' logits in bounded "
                                "batches, a batch of answers), beyond the weights")
    kept = "oneDNN's compiled kernels for bf16 products on the CPU, one per shape, as many as its caches keep"
    explain["kernel_caches"] = kept if plan.components.get("kernel_caches") else "none: bf16 runs on the CPU only"
    for name, nbytes in plan.components.items():
        table.add_row(name, gib(nbytes), escape(explain[name]))
    formula = "weights + optimizer + kernel caches + max(activations + loss head, gradients)"
    if plan.components.get("general_check"):
        formula = f"max(training: {formula}, general check: weights + kernel caches + general check)"
    table.add_row("[bold]peak[/]", f"[bold]{gib(plan.peak_bytes)}[/]", formula)
    console.print(table)
    runtime = "the CUDA context (~0.5 GiB)" if plan.device == "cuda" else "the Python process (~0.5 GiB of libraries)"
    console.print(f"not included: {runtime}")
    console.print(f"activation checkpointing: {escape(plan.checkpointing_reason)}")
    for note in plan.notes:
        console.print(f"note: {escape(note)}")
