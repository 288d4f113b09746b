"""The artifacts of each task: what `merge`/`export`, `eval`, loading and the end of `run` do for a kind of run.

A recipe's `task` (or a run dir's recipe.resolved.toml) picks one record here; training itself is picked in
peftsft.workflows.run. Adding a task is its module under peftsft/tasks/ plus one line there and one here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from rich.console import Console

from peftsft.artifacts.card import write_run_card
from peftsft.artifacts.evaluate import EvalRequest, evaluate_chat
from peftsft.artifacts.evaluate_classification import evaluate_classifier
from peftsft.artifacts.evaluate_preference import evaluate_preference
from peftsft.artifacts.export.classification import export_classification, export_classification_after_training
from peftsft.artifacts.export.pipeline import ExportRequest, export_chat, export_chat_after_training
from peftsft.core.config import Recipe
from peftsft.core.errors import UserError
from peftsft.core.rundir import RunDir
from peftsft.loading import load as load_chat
from peftsft.tasks.classification.model import load_classifier


@dataclass(frozen=True)
class Task:
    name: str
    export: Callable[[str | Path, ExportRequest, Console], Path]  # one verified export of a finished run
    export_after_training: Callable[[Recipe, Console], list[str]]  # the recipe's [export] formats
    evaluate: Callable[[EvalRequest, Console], Path]  # held-out scores, saved as JSON (returned: where)
    load: Callable[[str, str], Any]  # (run dir or model, device) -> a model ready for inference
    write_card: Callable[[Path], Path] | None = None  # run dir -> adapter/README.md, the model card


TASKS: dict[str, Task] = {
    "chat": Task("chat", export_chat, export_chat_after_training, evaluate_chat, load_chat, write_run_card),
    # a preference run's result is a chat adapter: exported, loaded and described as chat runs are; evaluated
    # against the model it started from
    "preference": Task(
        "preference", export_chat, export_chat_after_training, evaluate_preference, load_chat, write_run_card,
    ),
    "classification": Task(
        "classification", export_classification, export_classification_after_training,
        evaluate_classifier, load_classifier,
    ),
}


def task_named(name: str) -> Task:
    if name not in TASKS:
        raise UserError(f"unknown task {name!r}", hint=f"task is one of: {', '.join(TASKS)}")
    return TASKS[name]


def task_of_path(path: str | Path) -> Task:
    """The task of a run dir (or of an export with recipe.resolved.toml beside it); chat for anything else."""
    return TASKS.get(RunDir(Path(path)).task(), TASKS["chat"])


def after_training(recipe: Recipe, summary: dict, console: Console) -> dict:
    """What `peftsft run` does once training ended (main process): the recipe's `[export] formats` into
    <run dir>/exports/, then the model card (last: it shows the exports' verification too)."""
    task = task_named(recipe.task)
    if recipe.export.formats:
        summary["exports"] = task.export_after_training(recipe, console)
        RunDir(recipe.run_dir).write_summary(summary)
    if task.write_card is not None:
        task.write_card(recipe.run_dir)
    return summary


def run(recipe: Recipe, console: Console, overwrite: bool = False, resume: str | bool | None = None,
        force: bool = False) -> dict:  # fmt: skip
    """A recipe end to end, as `peftsft run` does it: the run workflow, then `after_training`."""
    from peftsft.workflows.run import run as run_workflow

    return run_workflow(recipe, console, overwrite, resume, force, after_training=after_training)
