"""The training skeleton every task fills in: set up → decide the levers → train → finish, around one RunDir.

A task (chat SFT, classification, preference) supplies what differs — how its model and data are loaded, which
trainer it builds, what it saves and reports — as a `Task`; this module does what every run does, once: the run
dir opened (or resumed), the process group, the seed, the levers decided and applied, the guards (NaN, Ctrl-C),
metrics.jsonl and the progress display, the adapter written atomically, loss.png and summary.json.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from rich.console import Console

from peftsft.core.config import Recipe, gradient_accumulation
from peftsft.core.machine import memory_available
from peftsft.core.rundir import RunDir, checkpoint_step, is_main_process, write_dir
from peftsft.levers import Levers, decide_levers, training
from peftsft.training.callbacks import MetricsLog, NonFiniteGuard, RichProgress, SealCheckpoints, StopOnInterrupt
from peftsft.training.callbacks import TokenRate
from peftsft.training.distributed import console_for, on_main, process_state
from peftsft.training.report import plot_loss
from peftsft.training.runs import open_run_dir, run_summary, train_guarded
from peftsft.training.sharding import engine_summary, gathered_state, is_sharded, saving_from
from peftsft.training.task_metrics import EvaluateTask, after_training, check_measurable
from peftsft.training.trackers import tracking


@dataclass
class Session:
    """One run's context, handed to every step of a task."""

    recipe: Recipe
    console: Console
    device: str
    state: Any  # accelerate's PartialState
    rundir: RunDir
    checkpoint: Path | None  # the checkpoint a resumed run continues from


@dataclass
class Prepared:
    """What a task's setup hands to the skeleton: the model with its strategy applied, and the data."""

    model: Any
    tokenizer: Any
    train_ds: Any
    eval_ds: Any | None
    stats: Any  # the data statistics (an object with as_dict())
    source: Any  # models.ModelSource
    strategy: Any
    params: dict  # strategy.trainable_summary
    longest_sample: int | None = None  # tokens, for the memory plan behind the levers
    extra: dict[str, Any] = field(default_factory=dict)  # the task's own (labels, contract, scores before…)
    measure: Any | None = None  # what every evaluation measures beyond the loss (training.task_metrics.ChatMetrics)


class Task(Protocol):
    name: str

    def setup(self, session: Session) -> Prepared:
        """Load the model, apply the strategy, build the data."""

    def before_training(self, session: Session, prepared: Prepared, levers: Levers) -> None:
        """What the task measures on the untrained model (with its adapter off)."""

    def trainer(self, session: Session, prepared: Prepared, levers: Levers, callbacks: list):
        """The trainer (TRL's or transformers'), built from the levers' arguments."""

    def score(self, session: Session, prepared: Prepared, levers: Levers) -> dict:
        """The tuned model's forward passes (samples, scores): on the main process, or on every process where the
        model is sharded (each one gathers the layers from the others)."""

    def save(self, session: Session, prepared: Prepared, directory: Path) -> None:
        """Write the adapter (and whatever loads with it) into `directory`."""

    def finish(self, session: Session, prepared: Prepared, trainer, levers: Levers, train_seconds: float,
               scores: dict) -> dict:  # fmt: skip
        """Main process, after the adapter is saved: writes samples and scores; returns summary.json's task keys."""

    def report(self, session: Session, prepared: Prepared, summary: dict) -> None:
        """Main process, last: what the task prints about the finished run."""


def train(task: Task, recipe: Recipe, console: Console, overwrite: bool = False, resume: str | bool | None = None,
          force: bool = False, callbacks: Sequence = ()) -> dict:  # fmt: skip
    """Train per the recipe (or resume its run from a checkpoint); returns summary.json's contents. `callbacks`:
    more Trainer callbacks (a sweep's pruner), after the run's own, so they see every evaluation's task metrics."""
    from transformers import set_seed

    from peftsft.models import pick_device

    device = pick_device(recipe.training.device)
    state = process_state(device)
    gradient_accumulation(recipe.training, state.num_processes)  # a global batch this launch cannot split fails now
    console = console_for(state, console)
    rundir = RunDir(recipe.run_dir)
    checkpoint = on_main(state, lambda: open_run_dir(recipe, rundir, console, overwrite, resume, force))
    state.wait_for_everyone()
    set_seed(recipe.training.seed)
    if recipe.model.trust_remote_code:
        console.print("[bold yellow]warning:[/] trust_remote_code = true: code shipped with the model will run")
    session = Session(recipe, console, device, state, rundir, checkpoint)

    # the memory plan counts the weights: automatic checkpointing weighs it against the memory available before they
    # load, as `peftsft plan` does (after loading, the weights would count twice)
    available = memory_available(device)
    prepared = task.setup(session)
    levers = decide_levers(recipe, device, prepared.model, prepared.longest_sample, available)
    console.print(f"speed: {levers.describe()}")
    task.before_training(session, prepared, levers)

    rate = TokenRate()
    keep = checkpoint_step(checkpoint) if checkpoint else None
    metrics = MetricsLog(rundir.metrics_file, rate, keep_until_step=keep)
    interrupt = StopOnInterrupt()
    evaluate = task_evaluation(recipe, prepared, levers, state)
    callbacks = [metrics, *evaluate, RichProgress(console, rate), NonFiniteGuard(), interrupt, SealCheckpoints(rundir),
                 *callbacks]  # fmt: skip
    build = lambda: task.trainer(session, prepared, levers, callbacks)  # noqa: E731
    with tracking(recipe, rundir, is_main_process()), training(levers, prepared.model, build) as trainer:
        for callback in evaluate:
            callback.bind(trainer)
        result = train_guarded(trainer, interrupt, checkpoint, rundir)
        train_seconds = rate.elapsed
        measured, best = after_training(recipe, next(iter(evaluate), None), trainer, train_seconds)
        eval_metrics = trainer.evaluate() if prepared.eval_ds is not None else {}
    release_training_memory(trainer, prepared.model)
    sharded = is_sharded(prepared.model)
    adapter_state = gathered_state(prepared.model)  # every process takes part; whole tensors on the main one
    score = lambda: task.score(session, prepared, levers)  # noqa: E731
    scores = score() if sharded else on_main(state, score)

    def finish() -> dict:
        with saving_from(prepared.model, adapter_state):
            write_dir(rundir.adapter_dir, lambda tmp: task.save(session, prepared, tmp))
        extra = task.finish(session, prepared, trainer, levers, train_seconds, scores)
        plot_loss(metrics.records, rundir.loss_plot)
        summary = run_summary(
            recipe, trainer, result, eval_metrics, task=task.name, model_spec=prepared.source.spec,
            strategy_name=prepared.strategy.name, params=prepared.params, device=device, train_seconds=train_seconds,
            stats=prepared.stats,
        )
        summary.update(
            world_size=state.num_processes,
            global_batch_size=trainer.args.train_batch_size * trainer.args.gradient_accumulation_steps
            * state.num_processes,
            engine=engine_summary(trainer),
            levers=levers.as_dict(),
            best=best,
            eval={k.removeprefix("eval_"): v for k, v in eval_metrics.items() if isinstance(v, (int, float))},
            task_metrics=measured,
            **extra,
        )
        rundir.write_summary(summary)
        task.report(session, prepared, summary)
        return summary

    summary = on_main(state, finish)
    state.wait_for_everyone()
    return summary


def task_evaluation(recipe: Recipe, prepared: Prepared, levers: Levers, state) -> list[EvaluateTask]:
    """The callback that adds the task's metrics to every evaluation (none without eval data or anything to measure);
    a metric the recipe names that this run cannot measure fails here, before training."""
    check_measurable(recipe, prepared.measure.names if prepared.measure else [])
    if prepared.measure is None or prepared.eval_ds is None:
        return []
    # as the scores after training: split weights need every process in each forward, whole ones the main alone
    everywhere = lambda fn: fn() if is_sharded(prepared.model) else on_main(state, fn)  # noqa: E731
    return [EvaluateTask(prepared.measure.measure, levers.precision, everywhere)]


def release_training_memory(trainer, model) -> None:
    """What only training needs — gradients, optimizer states, the accelerator's references — freed before the
    task scores the tuned model, so scoring stays inside training's peak (the plan counts the larger of the two)."""
    import gc

    model.zero_grad(set_to_none=True)
    trainer.accelerator.free_memory()
    trainer.optimizer = trainer.lr_scheduler = None
    gc.collect()


def adapter_off(model):
    """A context in which `model` answers as its base: the adapter disabled (peft), or as it is (full/freeze
    strategies change no weight before training)."""
    import contextlib

    return model.disable_adapter() if hasattr(model, "disable_adapter") else contextlib.nullcontext()
