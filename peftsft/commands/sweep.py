"""`peftsft sweep RECIPE --trials N`: parse the options, run the sweep (workflows.sweep), print where it went."""

from __future__ import annotations

import argparse


def add_commands(subparsers) -> None:
    parser = subparsers.add_parser(
        "sweep", help="hyperparameter search over the recipe's [sweep] space (Optuna: TPE, pruning, resumable)"
    )
    parser.add_argument("recipe", help="path to a recipe .toml with a [sweep] section")
    parser.add_argument("--trials", type=int, metavar="N", help="trials in all (default: [sweep] trials); a sweep "
                        "run again continues its stored study up to N")
    parser.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a recipe value")
    parser.add_argument("--output", help="parent folder of the sweep dir (overrides run.output_dir)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the stored sweep (it is continued anyway when present; this fails if none is)")
    parser.add_argument("--overwrite", action="store_true", help="delete the stored sweep and start over")
    parser.add_argument("--verbose", action="store_true", help="show each trial's training output")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    parser.set_defaults(func=cmd_sweep)


def cmd_sweep(args: argparse.Namespace) -> int:
    from peftsft.commands.cli import _toml_string
    from peftsft.core.console import console
    from peftsft.core.errors import UserError
    from peftsft.workflows.sweep import SweepRequest, sweep

    if args.trials is not None and args.trials < 1:
        raise UserError("--trials must be at least 1")
    overrides = list(args.set or []) + ([f"run.output_dir={_toml_string(args.output)}"] if args.output else [])
    request = SweepRequest(args.recipe, overrides, args.trials, args.resume, args.overwrite, args.verbose)
    results = sweep(request, console)
    counts = results["counts"]
    console.print(f"[green]done[/] {counts['complete']} complete, {counts['pruned']} pruned, {counts['fail']} failed")
    return 0
