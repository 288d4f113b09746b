"""The options `chat` and `generate` share (the model, its base, tools, sampling), and loading what they name."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from peftsft.core.errors import UserError


def add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="RUN_DIR|MODEL", help="a run dir, a merged model dir, a .gguf or a model id")
    parser.add_argument("--compare-base", action="store_true", help="also answer with the base model, side by side")
    parser.add_argument(
        "--base", metavar="MODEL", help="base to compare a merged/model dir with (default: its recipe.resolved.toml)"
    )
    parser.add_argument("--system", help="system prompt (default: the recipe's, else the chat template's own)")
    parser.add_argument(
        "--tools", metavar="FILE.json", help="tool schemas offered to the model (a JSON list; OpenAI or bare)"
    )
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--seed", type=int, help="seed for sampling, for repeatable answers")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")


def add_sampling_args(parser, temperature: float, top_p: float, top_k: int, max_new_tokens: int) -> None:
    """Decoding flags shared by chat, generate and eval; defaults differ per command."""
    group = parser.add_argument_group("sampling")
    group.add_argument("--max-new-tokens", type=int, default=max_new_tokens, help=f"default {max_new_tokens}")
    group.add_argument("--temperature", type=float, default=temperature, help=f"0 = greedy (default {temperature})")
    group.add_argument("--top-p", type=float, default=top_p, help=f"nucleus sampling (default {top_p})")
    group.add_argument("--top-k", type=int, default=top_k, help=f"0 = off (default {top_k})")
    group.add_argument("--repetition-penalty", type=float, default=1.0, help="1.0 = off (default)")


def sampling_from_args(args: argparse.Namespace):
    from peftsft.generation import Sampling

    if args.max_new_tokens < 1 or args.temperature < 0 or not 0 < args.top_p <= 1 or args.top_k < 0:
        raise UserError(
            "invalid sampling flags",
            hint="--max-new-tokens ≥ 1, --temperature ≥ 0, 0 < --top-p ≤ 1, --top-k ≥ 0",
        )
    return Sampling(args.max_new_tokens, args.temperature, args.top_p, args.top_k, args.repetition_penalty)


def load_for_args(args: argparse.Namespace):
    """Load the model named on the command line; fail early if --compare-base has no base to use."""
    from peftsft.loading import load

    console = Console(stderr=True)
    with console.status(f"loading {args.model}"):
        loaded = load(args.model, args.device, base=args.base)
    if args.compare_base and not loaded.has_base:
        raise UserError(
            f"{args.model}: --compare-base needs to know the base model",
            hint="pass --base MODEL_SOURCE, or point at a run dir",
        )
    if args.seed is not None:
        from transformers import set_seed

        set_seed(args.seed)
    return loaded



def read_tools(path: str | None) -> list[dict] | None:
    """The --tools file's schemas, normalised (None without the flag)."""
    from peftsft.data.tools import ToolsError, normalize_tools

    if not path:
        return None
    try:
        return normalize_tools(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise UserError(f"--tools {path}: cannot read it: {exc}") from None
    except ToolsError as exc:
        raise UserError(f"--tools {path}: {exc}", hint='a JSON list like [{"name": ..., "parameters": {...}}]') from None


