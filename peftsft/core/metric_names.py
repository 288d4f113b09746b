"""The metrics an evaluation during training can log, and which way is better for each: the one table that
`[training] early_stopping_metric`, `[sweep] metric`, the Trainer's best-model choice and the sweep's direction read.

Each is logged as `eval_<name>` at the step it was measured (metrics.jsonl, the progress display, the trackers).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass


@dataclass(frozen=True)
class MetricName:
    higher_is_better: bool
    tasks: tuple[str, ...]
    what: str


_CHAT, _CLS, _BOTH = ("chat",), ("classification",), ("chat", "classification")
METRICS: dict[str, MetricName] = {
    "loss": MetricName(False, _BOTH, "loss on the held-out rows"),
    # tool calls (rows that offer tools): as `peftsft eval` scores them (training.tool_scoring)
    "tool_accuracy": MetricName(True, _CHAT, "rows handled right: the expected functions called, or no call where "
                                             "none was expected"),
    "tool_name_accuracy": MetricName(True, _CHAT, "call rows whose reply calls exactly the expected functions"),
    "tool_call_exact": MetricName(True, _CHAT, "call rows whose reply also has the expected arguments"),
    "tool_json_valid": MetricName(True, _CHAT, "call rows whose reply holds calls that all parse"),
    "no_call_accuracy": MetricName(True, _CHAT, "no-call rows whose reply calls nothing"),
    # answers against the reference reply (rows that end in a plain-text reply)
    "exact_match": MetricName(True, _CHAT, "answers equal to the reference (normalised)"),
    "contains_reference": MetricName(True, _CHAT, "answers containing the reference"),
    "token_f1": MetricName(True, _CHAT, "word-overlap F1 with the reference"),
    "rouge_l": MetricName(True, _CHAT, "ROUGE-L F-measure"),
    "bleu": MetricName(True, _CHAT, "corpus BLEU, 0-100"),
    # the general check ([eval]), during training
    "general_loss": MetricName(False, _CHAT, "loss on the general check's reference answers"),
    "general_accuracy": MetricName(True, _CHAT, "general check rows answered right (general_during_training = "
                                                "\"answers\")"),
    # classification (its trainer's compute_metrics)
    "accuracy": MetricName(True, _CLS, "held-out texts labelled right"),
    "macro_f1": MetricName(True, _CLS, "F1 averaged over the labels"),
}
ALIASES = {"general": "general_loss"}


def canonical(name: str) -> str:
    """The metric's name in METRICS (an alias such as `general` resolved)."""
    return ALIASES.get(name, name)


def higher_is_better(name: str) -> bool:
    return METRICS[canonical(name)].higher_is_better


def direction(name: str) -> str:
    return "higher is better" if higher_is_better(name) else "lower is better"


def metric_problem(name: str, task: str) -> str | None:
    """Why `name` is not a metric a `task` run logs (with a "did you mean"), or None when it is one."""
    key = canonical(name)
    if key in METRICS and task in METRICS[key].tasks:
        return None
    offered = [n for n, m in METRICS.items() if task in m.tasks] + [a for a, n in ALIASES.items() if task in
                                                                     METRICS[n].tasks]
    if key in METRICS:
        return f"{name!r} is not measured in {task} runs (they log: {', '.join(offered)})"
    close = difflib.get_close_matches(name, offered, n=1, cutoff=0.6)
    hint = f" — did you mean {close[0]!r}? ({METRICS[canonical(close[0])].what})" if close else ""
    return f"unknown metric {name!r}{hint} (one of: {', '.join(offered)})"


def best_metric(recipe) -> str:
    """The metric that picks a run's best checkpoint: `[training] early_stopping_metric`, else the task's default
    (classification: `[classification] best_metric`; chat: loss)."""
    chosen = recipe.training.early_stopping_metric
    if chosen is None:
        chosen = recipe.classification.best_metric if recipe.task == "classification" else "loss"
    return canonical(chosen)


def keeps_best(recipe) -> bool:
    """Whether the run keeps its best checkpoint (as its adapter): early stopping, or a metric named for it."""
    t = recipe.training
    return t.early_stopping_patience is not None or t.early_stopping_metric is not None


def metric_problems(recipe) -> list[str]:
    """The metrics a recipe names (early stopping, sweep) exist for its task and will be measured."""
    named = [("[training] early_stopping_metric", recipe.training.early_stopping_metric),
             ("[sweep] metric", recipe.sweep.metric)]  # fmt: skip
    problems = []
    for where, name in named:
        if name is None:
            continue
        if problem := metric_problem(name, recipe.task):
            problems.append(f"{where}: {problem}")
        elif why := _unmeasured(canonical(name), recipe.eval):
            problems.append(f"{where}: {name!r} {why}")
    return problems + _sweep_problems(recipe)


def _unmeasured(name: str, checks) -> str | None:
    """Why [eval] settings leave `name` unmeasured during training (None: it is measured)."""
    if name.startswith("general_") and (not checks.general_check or checks.general_during_training == "off"):
        return "needs the general check during training: [eval] general_check = true, general_during_training = " \
               "\"loss\" (or \"answers\")"
    if name == "general_accuracy" and checks.general_during_training != "answers":
        return "needs [eval] general_during_training = \"answers\" (greedy answers at every evaluation)"
    task_metric = name not in ("loss", "accuracy", "macro_f1") and not name.startswith("general_")
    if task_metric and not checks.task_metrics:
        return "is a task metric: set [eval] task_metrics = true"
    return None


def _sweep_problems(recipe) -> list[str]:
    s, t = recipe.sweep, recipe.training
    if not s.space():
        return []
    problems = []
    if not (recipe.data.eval_path or recipe.data.eval_fraction > 0):
        problems.append("[sweep] needs held-out rows to judge trials: set [data] eval_path or eval_fraction")
    elif s.prune and t.eval_steps is None:
        problems.append("[sweep] prune needs evaluations during training: set [training] eval_steps, or prune = false")
    if s.general_must_not_regress and (recipe.task != "chat" or not recipe.eval.general_check):
        problems.append("[sweep] general_must_not_regress needs the general check: a chat run with [eval] "
                        "general_check = true")
    return problems
