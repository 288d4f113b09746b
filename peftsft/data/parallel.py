"""Work on rows spread over forked processes, with one rich progress bar on the main process.

`datasets.Dataset.map(num_proc=...)` does the same sharding, but writes exactly one table per call and draws its own
tqdm bars; a build writes its kept samples and returns what it found in the dropped ones (counts, bad rows, contract
findings) from each process, and shows a single bar. Shards are contiguous and concatenated in order, so the result
is the same for any number of processes.
"""

from __future__ import annotations

import os
import time
import traceback
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any, TypeVar

T = TypeVar("T")
MIN_ROWS_PER_PROCESS = 2000  # below this a fork costs more than it saves


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def processes_for(setting: int | str, rows: int) -> int:
    """How many processes work on `rows` rows: the recipe's count (auto: the cores), never a shard under the minimum;
    one where processes cannot be forked (Windows), as they must inherit the tokenizer and the data."""
    import multiprocessing

    if "fork" not in multiprocessing.get_all_start_methods():
        return 1
    wanted = available_cores() if setting == "auto" else int(setting)
    return max(1, min(wanted, rows // MIN_ROWS_PER_PROCESS))


def shards(rows: int, processes: int) -> list[tuple[int, int]]:
    """`processes` contiguous [start, end) ranges covering `rows`, sizes differing by at most one."""
    step, extra = divmod(rows, processes)
    bounds = [0]
    for index in range(processes):
        bounds.append(bounds[-1] + step + (index < extra))
    return list(zip(bounds, bounds[1:]))


class Meter:
    """Rows done out of `total`: a rich bar in a terminal, one closing line elsewhere (logs, pipes, CI); none
    without a console."""

    def __init__(self, console, label: str, total: int | None, unit: str = "rows"):
        self.console, self.label, self.total, self.unit = console, label, total, unit
        self.done, self.started, self._bar, self._task = 0, time.perf_counter(), None, None

    def __enter__(self) -> Meter:
        if self.console is not None and self.console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
            from rich.progress import TimeRemainingColumn

            self._bar = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                console=self.console, transient=True,
            )
            self._task = self._bar.add_task(self.label, total=self.total, rate="")
            self._bar.start()
        return self

    def update(self, done: int) -> None:
        self.done = done
        if self._bar is not None:
            self._bar.update(self._task, completed=done, rate=f"{self.rate():,.0f} {self.unit}/s")

    def advance(self, rows: int) -> None:
        self.update(self.done + rows)

    def rate(self) -> float:
        return self.done / max(time.perf_counter() - self.started, 1e-9)

    def __exit__(self, kind, *_) -> None:
        if self._bar is not None:
            self._bar.stop()
        seconds = time.perf_counter() - self.started
        if kind is None and seconds >= 1.0 and self.console is not None:  # a long step says so, also off a terminal
            self.console.print(
                f"{self.label}: {self.done:,} {self.unit} in {seconds:.1f}s ({self.rate():,.0f} {self.unit}/s)",
                highlight=False, markup=False,
            )


def run_sharded(work: Callable[[int, int, int, Callable[[int], None]], T], rows: int, processes: int, meter: Meter) -> list[T]:
    """`work(shard, start, end, advance)` over `processes` contiguous shards of `rows`; the results in shard order.

    Each shard runs in a forked process (which inherits the tokenizer and the data as they are) and reports rows
    done through `advance`. An error in a shard stops the shards after it and is raised here, as the first one in
    row order would be by a single process.
    """
    if processes <= 1 or rows == 0:
        return [work(0, 0, rows, meter.advance)]
    import multiprocessing
    from multiprocessing.connection import wait

    context = multiprocessing.get_context("fork")
    done = context.Array("q", processes, lock=False)  # each slot written by one process only
    children, pipes = [], []
    with _tokenizers_serial_in_children():
        for index, (start, end) in enumerate(shards(rows, processes)):
            receive, send = context.Pipe(duplex=False)
            child = context.Process(target=_shard, args=(work, start, end, done, index, send), daemon=True)
            child.start()
            send.close()
            children.append(child)
            pipes.append(receive)
    results: list[Any] = [None] * processes
    pending = dict(enumerate(pipes))
    try:
        while pending:
            for pipe in wait(list(pending.values()), timeout=0.2):
                index = pipes.index(pipe)
                if index not in pending:  # stopped by an earlier shard's error answered in this same batch
                    continue
                results[index] = _receive(pipe, children[index])
                del pending[index]
                if isinstance(results[index], _Failed):
                    for later in range(index + 1, processes):  # what they find comes after this error
                        children[later].terminate()
                        pending.pop(later, None)
            meter.update(sum(done))
    finally:
        for child in children:
            if child.is_alive():
                child.terminate()
            child.join()
    for result in results:
        if isinstance(result, _Failed):
            result.raise_()
    return results


class _Failed:
    def __init__(self, error: BaseException | None, text: str):
        self.error, self.text = error, text

    def raise_(self):
        if self.error is not None:
            raise self.error
        raise RuntimeError(f"a data worker process failed:\n{self.text}")


def _shard(work, start: int, end: int, done, index: int, pipe) -> None:
    def advance(n: int) -> None:
        done[index] += n

    try:
        result = work(index, start, end, advance)
    except BaseException as exc:  # noqa: BLE001 - every failure goes back to the main process
        result = _Failed(exc, traceback.format_exc())
    try:
        pipe.send(result)
    except Exception:  # noqa: BLE001 - an error that does not pickle still goes back, as text
        pipe.send(_Failed(None, result.text if isinstance(result, _Failed) else traceback.format_exc()))
    pipe.close()


def _receive(pipe, child) -> Any:
    try:
        return pipe.recv()
    except EOFError:  # killed (out of memory, a signal) before it could answer
        child.join()
        return _Failed(None, f"exit code {child.exitcode}")


@contextmanager
def _tokenizers_serial_in_children():
    """Children tokenize on one thread each (the processes are the parallelism) and without the fork warning."""
    before = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = before
