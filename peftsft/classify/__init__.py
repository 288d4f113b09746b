"""Sequence classification (task = "classification"): an encoder with a classification head, tuned on labelled text.

data.py (rows → label map → tokenized datasets), model.py (load, strategy with the head trainable, trained
models back), metrics.py (accuracy, macro-F1, confusion matrix), train.py (the run), export.py (merge / adapter
exports, verified), commands.py (`predict`; `eval`, `merge`, `export` for classification runs).
Heavy libraries are imported lazily, so registering the subcommands costs nothing.
"""

from __future__ import annotations

from pathlib import Path

from .commands import add_commands


def is_classification_run(path: str | Path) -> bool:
    """A run dir (or an export beside its recipe.resolved.toml) whose recipe says task = "classification"."""
    from ..config import read_toml
    from ..errors import UserError

    recipe_file = Path(path) / "recipe.resolved.toml"
    if not recipe_file.is_file():
        return False
    try:
        return read_toml(recipe_file).get("task") == "classification"
    except UserError:
        return False


def run_classification(recipe, console, overwrite: bool = False, resume=None, force: bool = False) -> dict:
    from .train import run_classification as run

    return run(recipe, console, overwrite, resume, force)


__all__ = ["add_commands", "is_classification_run", "run_classification"]
