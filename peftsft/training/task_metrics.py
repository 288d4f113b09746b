"""What every evaluation during training measures beyond the loss, and the callback that hands it to the Trainer.

The metrics join the Trainer's eval metrics as `eval_<name>` before it decides anything (the best checkpoint,
early stopping, a sweep's pruner all read them there) and are logged at the step whose weights they measured
(metrics.jsonl, the progress display, the trackers), with their cost in seconds.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from transformers import TrainerCallback

from peftsft.training.callbacks import weights_step

from peftsft.core.config import EvalSection, Recipe
from peftsft.core.errors import UserError
from peftsft.core.metric_names import METRICS, best_metric, canonical
from peftsft.generation import Sampling, answer_batch
from peftsft.training.general_check import GeneralCheck, autocast
from peftsft.training.held_out import EvalRow, held_out_conversations, score_answers
from peftsft.training.scoring import ANSWER_METRICS
from peftsft.training.tool_scoring import expected_calls
from peftsft.data.tools import tools_of

COUNTS = ("tool_call_rows", "no_call_rows")  # what tool_metrics adds beside its means: not logged as metrics


class ChatMetrics:
    """Chat runs: the first held-out rows that can be scored, answered greedily in bounded batches and scored as
    `peftsft eval` scores them; the general check's loss (and, asked for, its first rows' answers)."""

    def __init__(self, rows: list[EvalRow], settings: EvalSection, general: GeneralCheck | None) -> None:
        self.rows, self.settings, self.general = rows, settings, general

    @classmethod
    def for_recipe(cls, recipe: Recipe, general: GeneralCheck | None) -> ChatMetrics | None:
        """None when there is nothing to measure: no eval data, or task metrics and the general check both off."""
        settings = recipe.eval
        if not (recipe.data.eval_path or recipe.data.eval_fraction > 0):
            return None
        rows = []
        if settings.task_metrics:
            conversations, _ = held_out_conversations(recipe, None)
            rows = [row for row in map(EvalRow, conversations) if row.answerable][: settings.task_rows]
        general = general if settings.general_during_training != "off" else None
        return cls(rows, settings, general) if rows or general else None

    @property
    def names(self) -> list[str]:
        """The metrics `measure` returns, known before it runs (so a named metric that cannot appear fails early)."""
        names = list(ANSWER_METRICS) if any(r.reference is not None for r in self.rows) else []
        offered = [expected_calls(r.messages) for r in self.rows if tools_of(r.messages)]
        if offered:
            names.append("tool_accuracy")
        if any(offered):
            names += ["tool_name_accuracy", "tool_call_exact", "tool_json_valid"]
        if any(calls == [] for calls in offered):
            names.append("no_call_accuracy")
        if self.general is not None:
            names += ["general_loss"] + (["general_accuracy"] if self.settings.general_during_training == "answers"
                                         else [])  # fmt: skip
        return names

    def measure(self, model, tokenizer, precision: str) -> dict[str, float]:
        """The metrics of the model as it is now, and the seconds each part took (task_seconds, general_seconds)."""
        out: dict[str, float] = {}
        if self.rows:
            started = time.perf_counter()
            sampling = Sampling(max_new_tokens=self.settings.task_max_new_tokens)
            with autocast(model, precision):
                predictions = answer_batch(model, tokenizer, [r.prompt for r in self.rows], sampling,
                                           self.settings.task_batch_size)  # fmt: skip
            scores = score_answers(predictions, self.rows)
            out |= {k: v for k, v in scores.items() if k not in COUNTS}
            out["task_seconds"] = time.perf_counter() - started
        if self.general is not None:
            started = time.perf_counter()
            out["general_loss"] = self.general.loss(model, tokenizer, precision)
            if self.settings.general_during_training == "answers":
                _, right = self.general.answers(model, tokenizer, precision, self.settings.general_rows)
                out["general_accuracy"] = sum(right) / len(right)
            out["general_seconds"] = time.perf_counter() - started
        return out


def check_measurable(recipe: Recipe, names: list[str]) -> None:
    """A metric the recipe names must be one this run measures: fail before training, not at the first evaluation."""
    builtin = ["loss"] + (["accuracy", "macro_f1"] if recipe.task == "classification" else [])
    for where, name in (("[training] early_stopping_metric", recipe.training.early_stopping_metric),
                        ("[sweep] metric", recipe.sweep.metric)):  # fmt: skip
        if name is not None and canonical(name) not in builtin + names:
            what = METRICS[canonical(name)].what
            raise UserError(
                f"{where}: {name!r} is not measured on this run's held-out rows",
                hint=f"this run measures: {', '.join(builtin + names)}. {what[:1].upper()}{what[1:]} "
                "needs held-out rows of that kind ([data] eval_path or eval_fraction)",
            )


class EvaluateTask(TrainerCallback):
    """On every evaluation: `measure` the model, add `eval_<name>` to the Trainer's metrics, log them at the step
    whose weights they measured. Added before early stopping and any sweep callback, so both see them."""

    def __init__(self, measure: Callable[..., dict], precision: str, on_main: Callable[[Callable], Any]) -> None:
        """`on_main(fn)`: run fn on the main process and hand its result to every process (all decide alike)."""
        self.measure, self.precision, self.on_main = measure, precision, on_main
        self.log: Callable[[dict], None] | None = None  # the trainer's log, bound once it is built
        self.measured: dict[int, dict[str, float]] = {}  # step → its metrics
        self.trained = False
        self.seconds = 0.0

    def bind(self, trainer) -> None:
        self.log = trainer.log

    def on_train_begin(self, args, state, control, **kwargs):
        self.trained = False

    def on_train_end(self, args, state, control, **kwargs):
        self.trained = True

    def on_evaluate(self, args, state, control, metrics=None, model=None, processing_class=None, **kwargs):
        step = weights_step(args, state, self.trained)
        fresh = step not in self.measured
        if fresh:
            started = time.perf_counter()
            self.measured[step] = self.on_main(lambda: self.measure(model, processing_class, self.precision))
            self.seconds += time.perf_counter() - started
        scores = {f"eval_{name}": value for name, value in self.measured[step].items()}
        metrics.update(scores)
        if fresh and self.log is not None:
            self.log(dict(scores))


def after_training(recipe: Recipe, callback: EvaluateTask | None, trainer, train_seconds: float):
    """(summary.json's "task_metrics", its "best"), read right after training, before a final evaluation."""
    return task_metrics_summary(callback, trainer, train_seconds), best_summary(recipe, trainer)


def task_metrics_summary(callback: EvaluateTask | None, trainer, train_seconds: float) -> dict | None:
    """summary.json's "task_metrics": how often they were measured, their cost, and those of the adapter's weights."""
    if callback is None or not callback.measured:
        return None
    final = callback.measured.get(weights_step(trainer.args, trainer.state, True), callback.measured[max(callback.measured)])
    return {
        "evaluations": len(callback.measured), "seconds": round(callback.seconds, 2),
        "share_of_train_time": round(callback.seconds / max(train_seconds, 1e-9), 4),
        "final": {k: round(v, 6) for k, v in final.items()},
    }


def best_summary(recipe: Recipe, trainer) -> dict | None:
    """Which evaluation's weights the adapter holds, by which metric and value, and why (None: the last weights).
    Read right after training, before a final evaluation adds its record."""
    from peftsft.core.metric_names import direction, higher_is_better

    state, args = trainer.state, trainer.args
    if not args.load_best_model_at_end or state.best_model_checkpoint is None:
        return None
    metric = best_metric(recipe)
    seen = {r["step"]: r[f"eval_{metric}"] for r in state.log_history if f"eval_{metric}" in r}
    word = "highest" if higher_is_better(metric) else "lowest"
    stopped = state.global_step < state.max_steps
    return {
        "step": state.best_global_step, "metric": metric, "value": state.best_metric,
        "direction": direction(metric), "checkpoint": state.best_model_checkpoint, "evaluations": len(seen),
        "why": f"{metric} {state.best_metric:.4g} at step {state.best_global_step} was the {word} of {len(seen)} "
               f"evaluation(s) ({direction(metric)})" + (f"; training stopped early at step {state.global_step}"
                                                          if stopped else ""),
    }
