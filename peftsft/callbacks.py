"""Trainer callbacks: a rich live progress display and a metrics.jsonl log."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from transformers import TrainerCallback


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

    def __init__(self, path: Path, rate: TokenRate) -> None:
        self.path = path
        self.rate = rate
        self.records: list[dict] = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.rate.__init__()

    def on_log(self, args, state, control, logs=None, **kwargs):
        record = {"step": state.global_step, "epoch": state.epoch, **(logs or {})}
        record["tokens_per_s"] = round(self.rate.update(state.num_input_tokens_seen), 2)
        record["elapsed_s"] = round(self.rate.elapsed, 3)
        self.records.append(record)
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")


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
