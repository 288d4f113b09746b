"""`peftsft sweep`: trials of a recipe with values drawn from its [sweep] space by Optuna's TPE sampler, each trial a
run (workflows.run) in its own run dir under the sweep dir, pruned on its metric at every evaluation.

The study lives in SQLite inside the sweep dir, so a sweep that was stopped (Ctrl-C, a crash) continues where it was
when run again: finished trials are kept, an interrupted one is run again with its values. At the end: a results
table, plots and the best trial's recipe, ready to `run` (sweep_results.py).
"""

from __future__ import annotations

import gc
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from peftsft.core.config import Recipe, recipe_to_toml
from peftsft.core.config_sweep import SweepSection
from peftsft.core.errors import TrainingStopped, UserError
from peftsft.core.metric_names import higher_is_better
from peftsft.core.rundir import RunDir, write_text
from peftsft.training.recipe import load_recipe
from peftsft.workflows.run import run
from peftsft.workflows.sweep_results import SweepDir, describe_trial, write_results
from peftsft.workflows.sweep_trial import PruneTrial, general_excess, suggest, sweep_metric, trial_overrides
from peftsft.workflows.sweep_trial import trial_value


@dataclass
class SweepRequest:
    recipe: str
    overrides: list[str] = field(default_factory=list)
    trials: int | None = None  # None: [sweep] trials
    resume: bool = False  # insist on continuing a stored sweep (one is continued anyway when present)
    overwrite: bool = False  # start over, deleting the sweep dir
    verbose: bool = False  # show each trial's training output


class TrialFailed(Exception):
    """A trial whose training stopped on its own (non-finite loss): recorded as failed, the sweep goes on."""


def sweep(request: SweepRequest, console: Console) -> dict:
    """Run the missing trials of the sweep, then write its results; returns results.json's contents."""
    optuna = _optuna()
    recipe = load_recipe(request.recipe, request.overrides)
    if not recipe.sweep.space():
        raise UserError(f"{request.recipe}: [sweep] names nothing to search",
                        hint="add keys under [sweep], e.g. learning_rate = {low = 1e-5, high = 1e-3, log = true} "
                        "and r = [8, 16] (`peftsft validate --explain` lists them)")  # fmt: skip
    folder = SweepDir(Path(recipe.run.output_dir) / f"{recipe.run.name}-sweep")
    open_sweep_dir(folder, recipe, request, console)
    metric = sweep_metric(recipe)
    study = load_study(optuna, folder, recipe, metric)
    requeue_interrupted(optuna, study)
    remaining = (request.trials or recipe.sweep.trials) - len(finished(optuna, study))
    console.print(f"sweep {folder.path}: {len(finished(optuna, study))} trial(s) done, {max(remaining, 0)} to run; "
                  f"optimising {metric} ({'higher' if higher_is_better(metric) else 'lower'} is better)")  # fmt: skip
    trial_console = console if request.verbose else Console(quiet=True)
    objective = lambda trial: run_trial(trial, request, recipe, folder, metric, trial_console)  # noqa: E731
    report = lambda study, trial: console.print(describe_trial(trial, metric), highlight=False)  # noqa: E731
    try:
        if remaining > 0:
            study.optimize(objective, n_trials=remaining, catch=(TrialFailed,), callbacks=[report])
    except TrainingStopped as exc:
        write_results(study, folder, metric, lambda params: best_recipe(request, recipe, params), console)
        raise TrainingStopped(f"sweep interrupted: {exc.message}",
                              hint="run the same command again to continue the sweep", exit_code=exc.exit_code) from None
    return write_results(study, folder, metric, lambda params: best_recipe(request, recipe, params), console)


def run_trial(trial, request: SweepRequest, recipe: Recipe, folder: SweepDir, metric: str, console: Console) -> float:
    """The objective: one run with the trial's values; its metric, the general check as a constraint if asked."""
    params = {name: suggest(trial, name, space) for name, space in recipe.sweep.space().items()}
    trial_recipe = load_recipe(request.recipe, [*request.overrides,
                                                *trial_overrides(params, folder.trials_dir, trial.number)])
    trial_recipe.sweep = SweepSection()  # a trial is a plain run
    rundir = RunDir(trial_recipe.run_dir)
    trial.set_user_attr("run_dir", str(rundir.path))
    callbacks = [PruneTrial(trial, metric, rundir)] if recipe.sweep.prune else []
    started = time.perf_counter()
    try:
        summary = run(trial_recipe, console, overwrite=True, callbacks=callbacks)
    except TrainingStopped as exc:
        if exc.exit_code == 130:  # Ctrl-C: the sweep stops here, and this trial reruns when it resumes
            raise
        trial.set_user_attr("failed", exc.message)
        raise TrialFailed(exc.message) from None
    finally:
        trial.set_user_attr("seconds", round(time.perf_counter() - started, 1))
        gc.collect()  # the trial's model and trainer, before the next one loads
    excess = general_excess(summary)
    if excess is not None:
        trial.set_user_attr("general_excess", round(excess, 4))
    if recipe.sweep.general_must_not_regress:
        trial.set_constraint("general_regression", excess if excess is not None else 0.0)
    return trial_value(summary, metric)


def open_sweep_dir(folder: SweepDir, recipe: Recipe, request: SweepRequest, console: Console) -> None:
    """Create the sweep dir, or continue the sweep stored in it (the same recipe), or start over (--overwrite)."""
    text = recipe_to_toml(recipe.model_copy(update={"sweep": recipe.sweep.model_copy(update={"trials": 1})}))
    stored = folder.study_file.is_file()
    if stored and request.overwrite:
        shutil.rmtree(folder.path)
        stored = False
    elif stored and folder.recipe_file.is_file() and folder.recipe_file.read_text(encoding="utf-8") != text:
        raise UserError(f"{folder.path} holds a sweep of a different recipe (its sweep.toml differs)",
                        hint="pass --overwrite to start this sweep over, or --set run.name=<another name>")
    elif request.resume and not stored:
        raise UserError(f"nothing to resume: {folder.study_file} does not exist", hint="run without --resume")
    folder.trials_dir.mkdir(parents=True, exist_ok=True)
    write_text(folder.recipe_file, text)
    if stored:
        console.print(f"continuing the sweep stored in {folder.study_file}")


def load_study(optuna, folder: SweepDir, recipe: Recipe, metric: str):
    """The study in the sweep dir's SQLite file (created on the first run), with TPE and the median pruner."""
    s = recipe.sweep
    pruner = optuna.pruners.MedianPruner(n_startup_trials=s.prune_startup_trials, n_warmup_steps=s.prune_warmup_steps)
    study = optuna.create_study(study_name="peftsft-sweep", storage=folder.storage, load_if_exists=True,
                                direction="maximize" if higher_is_better(metric) else "minimize",
                                pruner=pruner if s.prune else optuna.pruners.NopPruner())  # fmt: skip
    # seeded by the trials already run: a resumed sweep draws new values, not the first session's again
    seed = (recipe.training.seed if s.seed is None else s.seed) + len(study.trials)
    study.sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=s.startup_trials)
    study.set_user_attr("metric", metric)
    return study


def finished(optuna, study) -> list:
    """Trials that count toward --trials: complete, pruned, or failed on their own (not interrupted)."""
    done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    failed = optuna.trial.TrialState.FAIL
    return [t for t in study.trials if t.state in done or (t.state == failed and "failed" in t.user_attrs)]


def requeue_interrupted(optuna, study) -> None:
    """Trials cut short (Ctrl-C, a killed process: left running) are marked failed and queued again, once."""
    state = optuna.trial.TrialState
    retried = {t.user_attrs.get("retry_of") for t in study.trials}
    for t in study.trials:
        if t.state == state.RUNNING:
            study.tell(t.number, state=state.FAIL)
        cut_short = t.state == state.RUNNING or (t.state == state.FAIL and "failed" not in t.user_attrs)
        if cut_short and t.number not in retried and t.params:
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})


def best_recipe(request: SweepRequest, recipe: Recipe, params: dict) -> str:
    """The best trial's recipe as TOML: the sweep's recipe with its values, named <name>-best, no [sweep]."""
    overrides = [*request.overrides, *trial_overrides(params, Path(recipe.run.output_dir), 0)]
    best = load_recipe(request.recipe, overrides)
    best.run.name, best.sweep = f"{recipe.run.name}-best", SweepSection()
    return recipe_to_toml(best)


def _optuna():
    try:
        import optuna
    except ImportError:
        raise UserError("`peftsft sweep` needs Optuna, which is not installed",
                        hint="pip install 'peftsft[sweep]' (or pip install optuna)") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the sweep prints one line per trial itself
    return optuna
