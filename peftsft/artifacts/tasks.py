"""The task record: what `run`, `merge`/`export`, `eval` and loading do for each kind of run, chosen once.

A recipe's `task` (or a run dir's recipe.resolved.toml) picks one record here; nothing else asks "chat or
classification?". Adding a task (say, preference tuning) is its module under peftsft/tasks/ plus one line in TASKS.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from rich.console import Console

from peftsft.artifacts.card import write_run_card
from peftsft.artifacts.evaluate import EvalRequest, evaluate_chat
from peftsft.artifacts.evaluate_classification import evaluate_classifier
from peftsft.artifacts.export.classification import export_classification, export_classification_after_training
from peftsft.artifacts.export.pipeline import ExportRequest, export_chat, export_chat_after_training
from peftsft.core.config import Recipe
from peftsft.core.errors import UserError
from peftsft.core.recipe_io import read_toml
from peftsft.core.rundir import write_json
from peftsft.loading import load as load_chat
from peftsft.tasks import chat, classification
from peftsft.tasks.classification.model import load_classifier
from peftsft.training.runs import STATUS_FILE, write_status


@dataclass(frozen=True)
class Task:
    name: str
    train: Callable[..., dict]  # (recipe, console, overwrite, resume, force) -> summary.json's contents
    export: Callable[[str | Path, ExportRequest, Console], Path]  # one verified export of a finished run
    export_after_training: Callable[[Recipe, Console], list[str]]  # the recipe's [export] formats
    evaluate: Callable[[EvalRequest, Console], Path]  # held-out scores, saved as JSON (returned: where)
    load: Callable[[str, str], Any]  # (run dir or model, device) -> a model ready for inference
    write_card: Callable[[Path], Path] | None = None  # run dir -> adapter/README.md, the model card


TASKS: dict[str, Task] = {
    "chat": Task("chat", chat.train, export_chat, export_chat_after_training, evaluate_chat, load_chat, write_run_card),
    "classification": Task(
        "classification", classification.train, export_classification, export_classification_after_training,
        evaluate_classifier, load_classifier,
    ),
}


def task_named(name: str) -> Task:
    if name not in TASKS:
        raise UserError(f"unknown task {name!r}", hint=f"task is one of: {', '.join(TASKS)}")
    return TASKS[name]


def task_of_path(path: str | Path) -> Task:
    """The task of a run dir (or of an export with recipe.resolved.toml beside it); chat for anything else."""
    recipe_file = Path(path) / "recipe.resolved.toml"
    if not recipe_file.is_file():
        return TASKS["chat"]
    try:
        return task_named(read_toml(recipe_file).get("task", "chat"))
    except UserError:
        return TASKS["chat"]


def run(recipe: Recipe, console: Console, overwrite: bool = False, resume: str | bool | None = None,
        force: bool = False) -> dict:
    """Train per the recipe's task, then (main process) its `[export] formats` into <run dir>/exports/."""
    task = task_named(recipe.task)
    main_process = int(os.environ.get("RANK", "0")) == 0
    try:
        summary = task.train(recipe, console, overwrite, resume, force)
        if recipe.export.formats and main_process:
            summary["exports"] = task.export_after_training(recipe, console)
            write_json(recipe.run_dir / "summary.json", summary)
        if task.write_card is not None and main_process:
            task.write_card(recipe.run_dir)  # last: it shows the exports' verification too
    except BaseException as exc:
        if main_process and _running_here(recipe.run_dir):  # stops (NaN, Ctrl-C) have said why already
            first_line = str(exc).splitlines()[0] if str(exc) else ""
            write_status(recipe.run_dir, "failed", f"{type(exc).__name__}: {first_line}")
        raise
    if main_process:
        write_status(recipe.run_dir, "done")
    return summary


def _running_here(run_dir: Path) -> bool:
    """This process marked the run dir running (not another run's dir that this one was refused)."""
    try:
        status = json.loads((run_dir / STATUS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return status.get("state") == "running" and status.get("pid") == os.getpid()
