"""Command line: one subcommand → one function; rich output; user errors without tracebacks."""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys
from collections.abc import Callable

from rich.table import Table

from peftsft.core.console import console, err_console
from peftsft.core.errors import TrainingStopped, UserError
from peftsft.core.quiet import quiet_libraries

DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def cmd_run(args: argparse.Namespace) -> int:
    from peftsft.artifacts.tasks import run
    from peftsft.core.rundir import is_main_process
    from peftsft.training.recipe import load_recipe

    overrides = list(args.set or [])
    if args.output:
        overrides.append(f"run.output_dir={_toml_string(args.output)}")
    if args.skip_contract:
        overrides.append("data.enforce_contract=false")
    recipe = load_recipe(args.recipe, overrides)
    summary = run(recipe, console, overwrite=args.overwrite, resume=args.resume, force=args.force)
    if is_main_process():
        console.print(f"[green]done[/] {summary.get('steps')} steps, {_loss_change(summary)} → {summary['run_dir']}")
    return 0


def _loss_change(summary: dict) -> str:
    first, last = summary.get("first_loss"), summary.get("last_loss")
    losses = f"loss {first:.3f} → {last:.3f}" if first is not None and last is not None else "no loss logged"
    return f"{losses}, {summary.get('train_tokens_per_s', 0):.0f} train tokens/s"


def cmd_validate(args: argparse.Namespace) -> int:
    from rich.markup import escape

    from peftsft.core.config import key_help
    from peftsft.training.recipe import load_recipe

    recipe = load_recipe(args.recipe, list(args.set or []))
    if args.explain:
        table = Table("key", "value", "help", title=f"{args.recipe}: every key (help from the schema)")
        resolved = recipe.model_dump(mode="json")
        for key, _default, help_text in key_help():
            table.add_row(key, escape(_value_at(resolved, key)), escape(help_text))
        console.print(table)
    console.print(
        f"[green]ok[/] {args.recipe}: model {recipe.model.source}, strategy {recipe.strategy.name}, "
        f"{len(recipe.data.datasets)} dataset(s) → {recipe.run_dir}"
    )
    _print_base_identity(recipe)
    return 0


def _print_base_identity(recipe) -> None:
    """The base's public id the artifacts will name; unknown is a warning (the run still trains)."""
    from rich.markup import escape

    from peftsft.base_identity import detect_base_identity

    if recipe.model.base_id is not None:
        console.print(f"base id: {recipe.model.base_id} ([model] base_id)", markup=False, highlight=False)
        return
    identity = detect_base_identity(recipe.model.source)
    if identity.id is not None:
        console.print(f"base id: {identity.id} (from {identity.found_in})")
    else:
        console.print(f"[bold yellow]warning:[/] the base model's Hub id is unknown ({escape(identity.found_in)}): the "
                      "adapter and its model card cannot name it; set \\[model] base_id = \"OWNER/NAME\"", highlight=False)


def _value_at(resolved: dict, key: str) -> str:
    node = resolved
    for part in key.split("."):
        if isinstance(node, list):  # data.datasets.*: show each dataset's value
            return ", ".join(repr(item.get(part)) for item in node)
        node = node.get(part) if isinstance(node, dict) else None
    return repr(node)


def cmd_strategies(args: argparse.Namespace) -> int:
    from peftsft.strategies import list_strategies

    table = Table("name", "merge", "4/8-bit base", "description")
    for strategy in list_strategies():
        yes_no = ["yes" if flag else "no" for flag in (strategy.can_merge, strategy.kbit)]
        table.add_row(strategy.name, *yes_no, strategy.description)
    console.print(table)
    return 0


# Modules that add their own subcommands: each defines `add_commands(subparsers)` and keeps heavy imports
# inside its command functions, so `peftsft --help` stays fast.
COMMAND_MODULES: list[str] = [
    "peftsft.commands.talk",
    "peftsft.commands.generate",
    "peftsft.commands.evaluate",
    "peftsft.commands.export",
    "peftsft.commands.doctor",
    "peftsft.commands.classify",
    "peftsft.commands.data",
    "peftsft.commands.plan",
    "peftsft.commands.ui",
    "peftsft.commands.push",
    "peftsft.commands.serve",
    "peftsft.commands.sweep",
]


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
    run.add_argument(
        "--resume", nargs="?", const=True, default=None, metavar="CHECKPOINT",
        help="continue the run from its latest checkpoint (or from CHECKPOINT)",
    )
    run.add_argument("--force", action="store_true", help="with --resume: accept a changed recipe")
    run.add_argument(
        "--skip-contract", action="store_true", help="train even if the pre-flight data contract fails (reported)"
    )
    run.set_defaults(func=cmd_run)

    validate = sub.add_parser("validate", help="check a recipe without loading a model")
    _recipe_args(validate)
    validate.add_argument("--explain", action="store_true", help="list every key with its value and help text")
    validate.set_defaults(func=cmd_validate)

    strategies = sub.add_parser("strategies", help="list registered adapter strategies")
    strategies.set_defaults(func=cmd_strategies)

    for module in COMMAND_MODULES:
        importlib.import_module(module).add_commands(sub)
    return parser


def _recipe_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="path to a recipe .toml")
    parser.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a recipe value")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from peftsft.levers import prepare_process

    prepare_process()  # before any command's first product (oneDNN reads its cache bounds once)
    quiet_libraries(debug=getattr(args, "debug", False))  # before any command imports the libraries
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except UserError as exc:
        if args.debug:
            raise
        _print_error(exc)
        return exc.exit_code
    except OSError as exc:  # the disk, not the code: full, read-only, no permission
        if args.debug or exc.errno not in DISK_ERRNOS:
            raise
        _print_error(UserError(f"could not write {exc.filename or 'output'}: {exc.strerror}",
                               hint=f"free some disk space or choose another place with {_output_flag(args)}"))
        return 2
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/]")
        return 130


def _output_flag(args: argparse.Namespace) -> str:
    """The flag by which this command is told where to write (`run --output DIR`; export, merge, ... `--out`)."""
    return "--output" if hasattr(args, "output") else "--out" if hasattr(args, "out") else "another output path"


def _print_error(exc: UserError) -> None:
    from peftsft.core.compat import launched_rank
    from peftsft.core.rundir import is_main_process

    main = is_main_process()
    if not main and isinstance(exc, TrainingStopped):  # every process stops alike: the main process tells the user
        return
    if not main:
        err_console.print(f"[rank {launched_rank()}] ", end="")
    err_console.print("[bold red]error:[/] ", end="")
    err_console.print(str(exc), markup=False, highlight=False)


if __name__ == "__main__":
    sys.exit(main())
