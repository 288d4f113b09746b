"""`peftsft data preview RECIPE [-n N]`: rendered samples with the loss mask shown, data stats, the contract.

Supervised tokens are coloured in a terminal; piped (or with --markers) they are wrapped in [[ ]].
Only the tokenizer is loaded, never the model.
"""

from __future__ import annotations

import argparse



def add_commands(subparsers) -> None:
    data = subparsers.add_parser("data", help="inspect the data a recipe trains on")
    commands = data.add_subparsers(dest="data_command", required=True)
    preview = commands.add_parser("preview", help="render samples with the loss mask shown, plus data stats")
    preview.add_argument("recipe", help="path to a recipe .toml")
    preview.add_argument("-n", type=int, default=3, metavar="N", help="samples to render (default 3)")
    preview.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a recipe value")
    preview.add_argument("--markers", action="store_true", help="mark supervised tokens with [[ ]] even in a terminal")
    preview.add_argument("--debug", action="store_true", help="show full tracebacks")
    preview.set_defaults(func=cmd_preview)


def cmd_preview(args: argparse.Namespace) -> int:
    from peftsft.core.console import console
    from peftsft.core.errors import UserError
    from peftsft.data.build import build_datasets
    from peftsft.data.contract import check_contract, print_contract
    from peftsft.data.preview import CLOSE, OPEN, load_recipe_tokenizer, print_sample, print_stats
    from peftsft.training.recipe import load_recipe

    recipe = load_recipe(args.recipe, list(args.set or []))
    if recipe.task == "preference":
        return preview_preference(args, recipe)
    if recipe.task != "chat":
        raise UserError(f"data preview shows chat and preference data; this recipe's task is {recipe.task!r}")
    tokenizer = load_recipe_tokenizer(recipe)
    train, evals, stats = build_datasets(tokenizer, recipe.data, recipe.training.seed)
    markers = args.markers or not console.is_terminal
    shown = f"between {OPEN} and {CLOSE}" if markers else "in green"
    console.print(f"{args.recipe}: {len(train)} training samples; supervised tokens are shown {shown}", markup=False)
    for index in range(min(max(args.n, 0), len(train))):
        print_sample(console, tokenizer, train[index], f"sample {index + 1} of {len(train)}", markers)
    print_stats(console, stats)
    print_contract(console, check_contract(tokenizer, train, evals, stats, recipe.data, recipe.model.attention))
    return 0


def preview_preference(args: argparse.Namespace, recipe) -> int:
    """Both answers of each pair (or each KTO answer) with their scored tokens, the stats and the pairs' contract."""
    from peftsft.core.console import console
    from peftsft.data.contract import print_contract
    from peftsft.data.preference_build import build_preference_datasets
    from peftsft.data.preference_contract import check_preference_contract
    from peftsft.data.preview import (
        CLOSE, OPEN, load_recipe_tokenizer, preference_counts, print_preference_row, print_stats,
    )

    tokenizer = load_recipe_tokenizer(recipe)
    train, evals, stats = build_preference_datasets(tokenizer, recipe.data, recipe.training.seed, recipe.preference.paired)
    markers = args.markers or not console.is_terminal
    shown = f"between {OPEN} and {CLOSE}" if markers else "in green"
    console.print(f"{args.recipe}: [preference] method = {recipe.preference.method!r}, {preference_counts(stats, train)} for "
                  f"training; scored tokens are shown {shown}", markup=False)
    for index in range(min(max(args.n, 0), len(train))):
        print_preference_row(console, tokenizer, train[index], f"row {index + 1} of {len(train)}", markers)
    print_stats(console, stats)
    print_contract(console, check_preference_contract(tokenizer, train, evals, stats, recipe.data))
    return 0

