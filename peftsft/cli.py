"""Command line: one subcommand → one function; rich output; user errors without tracebacks."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from rich.console import Console
from rich.table import Table

from .errors import UserError

console = Console(stderr=False)
err_console = Console(stderr=True)


def cmd_run(args: argparse.Namespace) -> int:
    from .config import load_recipe
    from .train import run

    overrides = list(args.set or [])
    if args.output:
        overrides.append(f"run.output_dir={_toml_string(args.output)}")
    recipe = load_recipe(args.recipe, overrides)
    summary = run(recipe, console, overwrite=args.overwrite)
    console.print(
        f"[green]done[/] {summary['steps']} steps, loss {summary['first_loss']:.3f} → {summary['last_loss']:.3f}, "
        f"{summary['train_tokens_per_s']:.0f} train tokens/s → {summary['run_dir']}"
    )
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from .config import load_recipe

    recipe = load_recipe(args.recipe, list(args.set or []))
    console.print(
        f"[green]ok[/] {args.recipe}: model {recipe.model.source}, strategy {recipe.strategy.name}, "
        f"{len(recipe.data.datasets)} dataset(s) → {recipe.run_dir}"
    )
    return 0


def cmd_strategies(args: argparse.Namespace) -> int:
    from .strategies import list_strategies

    table = Table("name", "merge", "description")
    for strategy in list_strategies():
        table.add_row(strategy.name, "yes" if strategy.can_merge else "no", strategy.description)
    console.print(table)
    return 0


def _toml_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="peftsft", description="Parameter-efficient SFT of chat models.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="train per a recipe")
    _recipe_args(run)
    run.add_argument("--output", help="parent folder for the run dir (overrides run.output_dir)")
    run.add_argument("--overwrite", action="store_true", help="replace an existing run dir")
    run.set_defaults(func=cmd_run)

    validate = sub.add_parser("validate", help="check a recipe without loading a model")
    _recipe_args(validate)
    validate.set_defaults(func=cmd_validate)

    strategies = sub.add_parser("strategies", help="list registered adapter strategies")
    strategies.set_defaults(func=cmd_strategies)
    return parser


def _recipe_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="path to a recipe .toml")
    parser.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a recipe value")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    _quiet_libraries()
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except UserError as exc:
        if args.debug:
            raise
        _print_error(exc)
        return 2
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/]")
        return 130


def _print_error(exc: UserError) -> None:
    err_console.print("[bold red]error:[/] ", end="")
    err_console.print(str(exc), markup=False, highlight=False)


def _quiet_libraries() -> None:
    """Our own display replaces the libraries' progress bars and info chatter."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        from datasets.utils.logging import disable_progress_bar

        disable_progress_bar()
    except ImportError:
        pass


if __name__ == "__main__":
    sys.exit(main())
