"""One sweep trial: its values drawn from the [sweep] space, its recipe, its pruning, and how it is judged."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from peftsft.core.config import Recipe
from peftsft.core.config_sweep import SPACE, Span
from peftsft.core.metric_names import best_metric, canonical
from peftsft.core.rundir import RunDir


def sweep_metric(recipe: Recipe) -> str:
    """What the sweep optimises: [sweep] metric, else the metric that picks a run's best checkpoint."""
    return canonical(recipe.sweep.metric) if recipe.sweep.metric else best_metric(recipe)


def suggest(trial, name: str, space: Span | list) -> Any:
    """A value for one [sweep] key, drawn by the study's sampler (TPE)."""
    whole = SPACE[name][1]
    if isinstance(space, list):
        return trial.suggest_categorical(name, space)
    if whole:
        return trial.suggest_int(name, int(space.low), int(space.high), step=int(space.step or 1), log=space.log)
    return trial.suggest_float(name, space.low, space.high, step=space.step, log=space.log)


def trial_overrides(params: dict[str, Any], trials_dir: Path, number: int) -> list[str]:
    """`--set` overrides that make the recipe this trial's: its values, and its own run dir under the sweep dir."""
    values = [f"{SPACE[name][0]}={json.dumps(value)}" for name, value in params.items()]
    return [*values, f"run.output_dir={json.dumps(str(trials_dir))}", f"run.name=\"trial-{number:03d}\""]


def trial_value(summary: dict, metric: str) -> float:
    """The trial's result: the metric of its final weights (the best checkpoint's where the run keeps the best)."""
    return float(summary["eval"][metric])


def general_excess(summary: dict) -> float | None:
    """How far past [eval] max_general_regression the general check moved (≤ 0: within it); None without one."""
    general = summary.get("general")
    if not general:
        return None
    limit, change = general["max_general_regression"], general["change"]
    return max(change["loss_relative"] - limit, -change["accuracy"] - limit)


class PruneTrial(TrainerCallback):
    """Reports the metric at every evaluation during training to the trial; when the pruner says stop, training
    ends after that evaluation, the run dir is marked stopped, and the trial raises optuna.TrialPruned."""

    def __init__(self, trial, metric: str, rundir: RunDir) -> None:
        self.trial, self.metric, self.rundir = trial, metric, rundir
        self.pruned_at: int | None = None
        self.training = False

    def on_train_begin(self, args, state, control, **kwargs):
        self.training = True

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if not self.training or self.pruned_at is not None:  # the final evaluation after training is not reported
            return
        value = metrics[f"eval_{self.metric}"]
        self.trial.report(value, state.global_step)
        if self.trial.should_prune():
            self.pruned_at = state.global_step
            control.should_training_stop = True

    def on_train_end(self, args, state, control, **kwargs):
        """After the run's own callbacks have seen the end of training (progress, trackers, metrics.jsonl closed)."""
        import optuna

        self.training = False
        if self.pruned_at is not None:
            why = f"pruned by the sweep at step {self.pruned_at}: {self.metric} worse than the median of earlier trials"
            self.rundir.write_status("stopped", why)
            raise optuna.TrialPruned(why)
