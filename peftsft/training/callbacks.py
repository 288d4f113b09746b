"""Trainer callbacks: rich live progress, metrics.jsonl, a NaN/inf guard and graceful Ctrl-C."""

from __future__ import annotations

import json
import math
import signal
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from transformers import TrainerCallback

from peftsft.core.rundir import RunDir


class TokenRate:
    """Train tokens per second since training began, from the trainer's own token counter."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.tokens = 0

    def update(self, tokens_seen: int | None) -> float:
        if tokens_seen is not None:
            self.tokens = tokens_seen
        return self.tokens / max(time.perf_counter() - self.start, 1e-9)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start


class MetricsLog(TrainerCallback):
    """Appends every log event (loss, lr, grad norm, eval loss, tokens/s) to metrics.jsonl."""

    def __init__(self, path: Path, rate: TokenRate, keep_until_step: int | None = None) -> None:
        """On resume, records logged after the checkpoint (`keep_until_step`) are dropped: they will be redone."""
        self.path = path
        self.rate = rate
        self.keep_until_step = keep_until_step
        self.records: list[dict] = []
        self.trained = False

    def on_train_begin(self, args, state, control, **kwargs):
        self.rate.__init__()
        # the main process alone rewrites the file (as it alone appends): with several processes, one of them could
        # read it while another truncates it, and write back nothing
        if self.keep_until_step is not None and state.is_world_process_zero and self.path.is_file():
            old = [json.loads(line) for line in self.path.read_text(encoding="utf-8").splitlines() if line.strip()]
            self.records = [r for r in old if r.get("step", 0) <= self.keep_until_step]
            self.path.write_text("".join(json.dumps(r) + "\n" for r in self.records), encoding="utf-8")
        self.trained = False

    def on_train_end(self, args, state, control, **kwargs):
        self.trained = True

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero:
            return
        step = weights_step(args, state, self.trained)  # a final evaluation of the best weights: the best's step
        record = {"step": step, "max_steps": state.max_steps, "epoch": state.epoch, **(logs or {})}
        record["tokens_per_s"] = round(self.rate.update(state.num_input_tokens_seen), 2)
        record["elapsed_s"] = round(self.rate.elapsed, 3)
        self.records.append(record)
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")


def weights_step(args, state, trained: bool) -> int:
    """The step whose weights the model holds: after training with the best checkpoint loaded, the best step's."""
    if trained and args.load_best_model_at_end and state.best_global_step:
        return state.best_global_step
    return state.global_step


class RichProgress(TrainerCallback):
    """One live line: step, loss, lr, tokens/s and ETA. Off a terminal, prints a line every ~10%."""

    def __init__(self, console: Console, rate: TokenRate) -> None:
        self.console = console
        self.rate = rate
        self.progress: Progress | None = None
        self.task = None
        self._next_print = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss [cyan]{task.fields[loss]}[/] lr {task.fields[lr]} {task.fields[tps]} tok/s"),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self.task = self.progress.add_task("train", total=state.max_steps, loss="-", lr="-", tps="-")
        self.progress.start()

    def on_step_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.update(self.task, completed=state.global_step)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        """One line per evaluation during training, every metric in it (task metrics are added before this runs)."""
        if self.progress is not None and metrics:
            self.console.print(eval_line(state.global_step, metrics), highlight=False)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.progress is None or not logs or "loss" not in logs:
            return
        fields = {
            "loss": f"{logs['loss']:.4f}",
            "lr": f"{logs.get('learning_rate', 0):.2e}",
            "tps": f"{self.rate.update(state.num_input_tokens_seen):.0f}",
        }
        self.progress.update(self.task, **fields)
        if not self.console.is_terminal and state.global_step >= self._next_print:
            self._next_print = state.global_step + max(1, math.ceil(state.max_steps / 10))
            self.console.print(
                f"step {state.global_step}/{state.max_steps}  loss {fields['loss']}  lr {fields['lr']}"
                f"  {fields['tps']} tok/s"
            )

    def on_train_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def eval_line(step: int, logs: dict) -> str:
    """'eval @ step 20: loss 1.234 · tool_accuracy 0.8 · token_f1 0.4567 (task 3.2 s, general 0.4 s)'."""
    timing = {"eval_runtime", "eval_samples_per_second", "eval_steps_per_second", "epoch"}
    shown = {k.removeprefix("eval_"): v for k, v in logs.items()
             if k.startswith("eval_") and k not in timing and not k.endswith("_seconds") and isinstance(v, (int, float))}
    cost = [f"{k.removeprefix('eval_').removesuffix('_seconds')} {v:.1f} s" for k, v in logs.items()
            if k.startswith("eval_") and k.endswith("_seconds")]
    values = " · ".join(f"{k} {v:.4g}" for k, v in shown.items())
    return f"eval @ step {step}: {values}" + (f" ({', '.join(cost)})" if cost else "")


class NonFiniteGuard(TrainerCallback):
    """Stops before the optimizer applies a NaN/inf gradient, so the weights and checkpoints stay good."""

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        bad = [name for name, p in model.named_parameters() if p.grad is not None and not p.grad.isfinite().all()]
        if bad:
            more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
            raise NonFiniteError(state.global_step + 1, f"gradient of {bad[0]}{more}")

    def on_log(self, args, state, control, logs=None, **kwargs):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            raise NonFiniteError(state.global_step, f"loss {loss}")


class NonFiniteError(RuntimeError):
    def __init__(self, step: int, what: str) -> None:
        super().__init__(f"non-finite {what} at step {step}")
        self.step = step


class StopOnInterrupt(TrainerCallback):
    """Ctrl-C finishes the current step, saves a full checkpoint and stops; a second Ctrl-C aborts at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def __enter__(self) -> StopOnInterrupt:
        self._previous = signal.signal(signal.SIGINT, self._on_signal)
        return self

    def __exit__(self, *exc) -> None:
        signal.signal(signal.SIGINT, self._previous)

    def _on_signal(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def on_step_end(self, args, state, control, **kwargs):
        if self.requested:
            control.should_save = True
            control.should_training_stop = True


class SealCheckpoints(TrainerCallback):
    """Marks a checkpoint complete once the Trainer has written all of it (its own files carry no such mark)."""

    def __init__(self, rundir: RunDir) -> None:
        self.rundir = rundir

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if folder.is_dir() and args.should_save:
            self.rundir.seal_checkpoint(folder)
