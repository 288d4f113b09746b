"""`peftsft run`: a recipe's task trained over its run dir, the status kept, then what comes after training.

What comes after (the recipe's exports, the model card) lives in the artifacts layer above; the command line hands
it in as `after_training`, so this layer never imports it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from rich.console import Console

from peftsft.core.config import Recipe
from peftsft.core.errors import UserError
from peftsft.core.rundir import RunDir, is_main_process
from peftsft.tasks.chat import train as train_chat
from peftsft.tasks.classification.train import train as train_classifier
from peftsft.tasks.preference import train as train_preference

# task name → its training function: (recipe, console, overwrite, resume, force, callbacks) -> summary.json's
# contents. Named by their modules: `classification.train` is the package's function until its submodule `train` is
# imported, then the submodule (a test importing it first turned the table's entry into a module).
TRAINERS: dict[str, Callable[..., dict]] = {"chat": train_chat, "classification": train_classifier,
                                             "preference": train_preference}


def run(recipe: Recipe, console: Console, overwrite: bool = False, resume: str | bool | None = None,
        force: bool = False, after_training: Callable[[Recipe, dict, Console], dict] | None = None,
        callbacks: Sequence = ()) -> dict:  # fmt: skip
    """Train per the recipe's task, then (main process) `after_training(recipe, summary, console)`, which may add
    to the summary; the run dir's status says done, or failed and why. `callbacks`: more Trainer callbacks (a
    sweep's pruner)."""
    if recipe.task not in TRAINERS:
        raise UserError(f"unknown task {recipe.task!r}", hint=f"task is one of: {', '.join(TRAINERS)}")
    rundir, main = RunDir(recipe.run_dir), is_main_process()
    try:
        summary = TRAINERS[recipe.task](recipe, console, overwrite, resume, force, callbacks)
        if after_training is not None and main:
            summary = after_training(recipe, summary, console)
    except BaseException as exc:
        if main and rundir.marked_running_by_this_process():  # stops (NaN, Ctrl-C) have said why already
            first_line = str(exc).splitlines()[0] if str(exc) else ""
            rundir.write_status("failed", f"{type(exc).__name__}: {first_line}")
        raise
    if main:
        rundir.write_status("done")
    return summary
