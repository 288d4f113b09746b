"""The data pipeline's process sharding on its own: how many processes, the shard ranges, the progress meter (a bar
in a terminal, one closing line elsewhere), the results in shard order, an error raised in row order, a killed
worker reported by its exit code, and the tokenizers' thread setting in the children."""

from __future__ import annotations

import io
import multiprocessing
import os
import time
from types import SimpleNamespace

import pytest
from rich.console import Console

from peftsft.data import parallel
from peftsft.data.parallel import Meter, processes_for, run_sharded, shards

# ---------------------------------------------------------------------------------------------- how many processes


def test_the_cores_are_those_this_process_may_use(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 2, 5} if pid == 0 else set(), raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert parallel.available_cores() == 3


def test_without_an_affinity_the_cores_are_the_cpu_count_else_one(monkeypatch):
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    assert parallel.available_cores() == 6
    monkeypatch.setattr(os, "cpu_count", lambda: None)  # undetermined
    assert parallel.available_cores() == 1


@pytest.fixture
def eight_cores(monkeypatch):
    monkeypatch.setattr(parallel, "available_cores", lambda: 8)
    monkeypatch.setattr(multiprocessing, "get_all_start_methods", lambda: ["fork", "spawn", "forkserver"])


@pytest.mark.parametrize(("setting", "rows", "processes"), [
    ("auto", 100_000, 8),  # one per core
    ("auto", 6_000, 3),  # no shard under 2000 rows
    ("auto", 5_999, 2),
    ("auto", 4_000, 2),
    ("auto", 3_999, 1),
    ("auto", 1_999, 1),  # never none
    ("auto", 0, 1),
    (3, 100_000, 3),  # the recipe's count
    ("3", 100_000, 3),
    (12, 100_000, 12),  # more than the cores when asked
    (4, 7_999, 3),
    (1, 100_000, 1),
])
def test_processes_are_the_recipes_count_or_the_cores_with_no_shard_under_the_minimum(eight_cores, setting, rows,
                                                                                       processes):
    assert processes_for(setting, rows) == processes


def test_one_process_where_processes_cannot_be_forked(monkeypatch):
    monkeypatch.setattr(parallel, "available_cores", lambda: 8)
    monkeypatch.setattr(multiprocessing, "get_all_start_methods", lambda: ["spawn"])
    assert processes_for("auto", 100_000) == 1
    assert processes_for(4, 100_000) == 1


@pytest.mark.parametrize(("rows", "processes", "ranges"), [
    (10, 3, [(0, 4), (4, 7), (7, 10)]),  # the first shards take the extra rows
    (11, 3, [(0, 4), (4, 8), (8, 11)]),
    (9, 3, [(0, 3), (3, 6), (6, 9)]),
    (5, 1, [(0, 5)]),
    (2, 4, [(0, 1), (1, 2), (2, 2), (2, 2)]),
    (0, 2, [(0, 0), (0, 0)]),
])
def test_shards_are_contiguous_and_differ_by_at_most_one_row(rows, processes, ranges):
    assert shards(rows, processes) == ranges


# ---------------------------------------------------------------------------------------------- the meter


class Clock:
    def __init__(self, now: float = 100.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(parallel.time, "perf_counter", clock)
    return clock


def plain_console() -> Console:
    return Console(file=io.StringIO(), force_terminal=False, width=200)


def test_a_new_meter_holds_its_settings_and_starts_at_zero(clock):
    console = plain_console()
    meter = Meter(console, "reading a.jsonl", 50, unit="pairs")
    assert (meter.console, meter.label, meter.total, meter.unit) == (console, "reading a.jsonl", 50, "pairs")
    assert (meter.done, meter.started, meter._bar, meter._task) == (0, 100.0, None, None)
    assert Meter(None, "x", None).unit == "rows"


def test_the_meter_counts_rows_advanced_and_their_rate(clock):
    with Meter(None, "x", 10) as meter:
        meter.advance(3)
        meter.advance(4)
        assert meter.done == 7
        meter.update(5)  # the total done so far, not an increment
        assert meter.done == 5
        clock.now = 102.0
        assert meter.rate() == 2.5
        clock.now = 100.0  # no time yet: no division by zero
        assert meter.rate() == 5 / 1e-9


def test_off_a_terminal_there_is_no_bar_and_a_long_step_closes_with_one_line(clock):
    console = plain_console()
    with Meter(console, "normalising a.jsonl", 3000) as meter:
        assert meter._bar is None and meter._task is None
        meter.update(2500)
        clock.now = 101.25
    assert console.file.getvalue() == "normalising a.jsonl: 2,500 rows in 1.2s (2,000 rows/s)\n"


def test_a_step_of_exactly_one_second_says_so_in_its_unit(clock):
    console = plain_console()
    with Meter(console, "tokenizing", None, unit="samples") as meter:
        meter.advance(1234)
        clock.now = 101.0
    assert console.file.getvalue() == "tokenizing: 1,234 samples in 1.0s (1,234 samples/s)\n"


def test_the_closing_line_is_printed_as_it_is_neither_markup_nor_highlighted(clock):
    console = Console(file=io.StringIO(), force_terminal=False, color_system="standard", width=200)
    with Meter(console, "reading [b]data[/b].jsonl", None) as meter:
        meter.advance(3000)
        clock.now = 102.0
    assert console.file.getvalue() == "reading [b]data[/b].jsonl: 3,000 rows in 2.0s (1,500 rows/s)\n"


def test_a_short_step_a_failed_step_and_no_console_print_nothing(clock):
    console = plain_console()
    with Meter(console, "quick", 10) as meter:
        meter.advance(10)
        clock.now = 100.99
    clock.now = 100.0
    with pytest.raises(KeyError), Meter(console, "failing", 10) as meter:
        clock.now = 105.0
        raise KeyError("x")
    assert console.file.getvalue() == ""
    clock.now = 100.0
    with Meter(None, "no console", 10) as meter:  # no console to print on, and no error
        meter.advance(10)
        clock.now = 110.0
    assert meter.done == 10


def test_in_a_terminal_the_meter_is_a_transient_rich_bar_of_the_label_total_and_rate(clock):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.progress import TimeRemainingColumn

    console = Console(file=io.StringIO(), force_terminal=True, width=200)
    with Meter(console, "normalising a.jsonl", 40, unit="rows") as meter:
        bar = meter._bar
        assert isinstance(bar, Progress) and bar.console is console
        assert bar.live.transient and bar.live.is_started
        assert [type(c) for c in bar.columns] == [TextColumn, BarColumn, MofNCompleteColumn, TextColumn,
                                                  TimeElapsedColumn, TimeRemainingColumn]
        assert [bar.columns[0].text_format, bar.columns[3].text_format] == ["{task.description}", "{task.fields[rate]}"]
        task = bar.tasks[0]
        assert meter._task == task.id
        assert (task.description, task.total, task.completed, task.fields) == ("normalising a.jsonl", 40, 0, {"rate": ""})
        clock.now = 102.0
        meter.advance(30)
        assert (task.completed, task.fields) == (30, {"rate": "15 rows/s"})
        meter.update(4000)
        assert (task.completed, task.fields) == (4000, {"rate": "2,000 rows/s"})
    assert not bar.live.is_started  # stopped on the way out


# ---------------------------------------------------------------------------------------------- running shards


class Updates:
    """A meter that records what it is told."""

    def __init__(self):
        self.updates: list[int] = []
        self.advanced: list[int] = []

    def update(self, done: int) -> None:
        self.updates.append(done)

    def advance(self, rows: int) -> None:
        self.advanced.append(rows)


@pytest.mark.parametrize(("rows", "processes"), [(5, 1), (5, 0), (0, 3)])
def test_one_process_or_no_rows_run_in_this_process_as_one_shard(rows, processes):
    meter = Updates()
    calls = []

    def work(shard, start, end, advance):
        calls.append((shard, start, end, os.getpid()))
        advance(end - start)
        return "result"

    assert run_sharded(work, rows, processes, meter) == ["result"]
    assert calls == [(0, 0, rows, os.getpid())]
    assert meter.advanced == [rows]


def test_forked_shards_return_in_shard_order_report_their_rows_and_restore_the_tokenizer_setting(monkeypatch):
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "true")
    meter = Updates()

    def work(shard, start, end, advance):
        time.sleep(0.03 * (3 - shard))  # the last shard answers first
        advance(end - start)
        return shard, start, end, os.environ.get("TOKENIZERS_PARALLELISM"), os.getpid()

    results = run_sharded(work, 7, 3, meter)
    assert [r[:4] for r in results] == [(0, 0, 3, "false"), (1, 3, 5, "false"), (2, 5, 7, "false")]
    assert len({r[4] for r in results} | {os.getpid()}) == 4  # each in its own process
    assert meter.updates[-1] == 7 and meter.updates == sorted(meter.updates)
    assert os.environ["TOKENIZERS_PARALLELISM"] == "true"


def test_an_error_in_a_shard_stops_the_shards_after_it_and_is_raised(monkeypatch):
    def work(shard, start, end, advance):
        if shard == 1:
            raise ValueError(f"bad row {start + 1}")
        if shard == 2:
            time.sleep(20)  # stopped, not waited for
        return shard

    began = time.perf_counter()
    with pytest.raises(ValueError, match="^bad row 4$"):
        run_sharded(work, 9, 3, Updates())
    assert time.perf_counter() - began < 10


def test_an_error_is_raised_in_row_order_not_in_arrival_order():
    def work(shard, start, end, advance):
        if shard == 0:
            time.sleep(0.12)
            raise ValueError("first in row order")
        if shard == 1:
            time.sleep(0.06)
            raise RuntimeError("first to arrive")
        return shard  # answers before the error after it: nothing left to stop

    with pytest.raises(ValueError, match="^first in row order$"):
        run_sharded(work, 6, 3, Updates())


def test_answers_that_arrive_together_after_an_error_are_not_read_twice(monkeypatch):
    """Every shard has answered before the main process looks: the first shard's error stops the later shards, whose
    answers came in the same batch — they are left unread, and the first error in row order is raised."""
    from multiprocessing import connection

    real = connection.wait

    def all_at_once(objects, timeout=None):
        while len(real(objects, timeout=5)) < len(objects):
            time.sleep(0.01)
        return list(objects)  # in shard order, as one batch

    monkeypatch.setattr(connection, "wait", all_at_once)

    def work(shard, start, end, advance):
        if shard < 2:
            raise ValueError(f"shard {shard}")
        return shard

    with pytest.raises(ValueError, match="^shard 0$"):
        run_sharded(work, 6, 3, Updates())


def test_progress_is_refreshed_every_fifth_of_a_second_while_shards_run(monkeypatch):
    from multiprocessing import connection

    timeouts = []
    real = connection.wait

    def wait(objects, timeout=None):
        timeouts.append(timeout)
        return real(objects, timeout=timeout)

    monkeypatch.setattr(connection, "wait", wait)
    assert run_sharded(lambda shard, start, end, advance: shard, 4, 2, Updates()) == [0, 1]
    assert timeouts and set(timeouts) == {0.2}


def test_a_worker_killed_before_it_answers_is_reported_with_its_exit_code():
    def work(shard, start, end, advance):
        if shard == 1:
            os._exit(3)  # as if killed: no answer
        return shard

    with pytest.raises(RuntimeError, match="^a data worker process failed:\nexit code 3$"):
        run_sharded(work, 4, 2, Updates())


def test_receiving_from_a_worker_that_closed_without_answering_waits_for_it_and_names_its_exit_code():
    joined = []

    class Pipe:
        def recv(self):
            raise EOFError

    child = SimpleNamespace(exitcode=-9, join=lambda: joined.append(True))
    failed = parallel._receive(Pipe(), child)
    assert isinstance(failed, parallel._Failed) and (failed.error, failed.text) == (None, "exit code -9")
    assert joined == [True]
    answered = SimpleNamespace(recv=lambda: [1, 2])
    assert parallel._receive(answered, child) == [1, 2]


def test_a_failure_raises_its_error_or_names_the_worker_failure_with_its_text():
    error = KeyError("k")
    with pytest.raises(KeyError) as raised:
        parallel._Failed(error, "ignored").raise_()
    assert raised.value is error
    with pytest.raises(RuntimeError) as raised:
        parallel._Failed(None, "Traceback: boom").raise_()
    assert str(raised.value) == "a data worker process failed:\nTraceback: boom"


@pytest.mark.parametrize("before", [None, "true", ""])
def test_children_tokenize_serially_and_the_setting_is_put_back(monkeypatch, before):
    if before is None:
        monkeypatch.delenv("TOKENIZERS_PARALLELISM", raising=False)
    else:
        monkeypatch.setenv("TOKENIZERS_PARALLELISM", before)
    with parallel._tokenizers_serial_in_children():
        assert os.environ["TOKENIZERS_PARALLELISM"] == "false"
    assert os.environ.get("TOKENIZERS_PARALLELISM") == before
    with pytest.raises(OSError), parallel._tokenizers_serial_in_children():
        raise OSError("during the fork")
    assert os.environ.get("TOKENIZERS_PARALLELISM") == before
