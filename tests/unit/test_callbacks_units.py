"""peftsft.training.callbacks driven hook by hook without a Trainer: metrics.jsonl's records (and their trimming on
resume), the progress display's lines, the eval line, the NaN guard, Ctrl-C's handler and the checkpoint seal."""

from __future__ import annotations

import io
import json
import signal
from types import SimpleNamespace

import pytest
import torch
from rich.console import Console
from transformers import TrainerControl, TrainerState

from peftsft.training import callbacks
from peftsft.training.callbacks import (MetricsLog, NonFiniteError, NonFiniteGuard, RichProgress, SealCheckpoints,
                                        StopOnInterrupt, TokenRate, eval_line, weights_step)


class Clock:
    """time.perf_counter for callbacks: readings set by hand."""

    def __init__(self, now: float = 100.0):
        self.now = now

    def perf_counter(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(callbacks, "time", clock)
    return clock


def state_at(step: int, max_steps: int = 20, **fields) -> TrainerState:
    state = TrainerState()
    state.global_step, state.max_steps = step, max_steps
    for key, value in fields.items():
        setattr(state, key, value)
    return state


ARGS = SimpleNamespace(load_best_model_at_end=False)
BEST = SimpleNamespace(load_best_model_at_end=True)


# ---------------------------------------------------------------------------------------------- tokens per second


def test_token_rate_is_the_last_count_over_the_time_since_it_began(clock):
    rate = TokenRate()
    assert (rate.start, rate.tokens) == (100.0, 0)
    clock.now = 104.0
    assert rate.elapsed == 4.0
    assert rate.update(1000) == 250.0 and rate.tokens == 1000
    clock.now = 105.0
    assert rate.update(None) == 200.0 and rate.tokens == 1000  # no count from the trainer: the last one stays


def test_token_rate_at_the_first_instant_divides_by_a_nanosecond_not_zero(clock):
    assert TokenRate().update(3) == pytest.approx(3e9)


# ---------------------------------------------------------------------------------------------- the weights' step


@pytest.mark.parametrize("args, trained, best, step", [
    (BEST, True, 4, 4),  # trained, the best loaded: its step
    (BEST, False, 4, 10),  # during training: the current step
    (ARGS, True, 4, 10),  # the best not loaded at the end
    (BEST, True, None, 10),  # no best known
    (BEST, True, 0, 10),
])
def test_the_weights_step_is_the_best_ones_only_once_trained_with_it_loaded(args, trained, best, step):
    assert weights_step(args, state_at(10, best_global_step=best), trained) == step


# ---------------------------------------------------------------------------------------------- metrics.jsonl


def test_metrics_log_appends_each_log_with_its_step_epoch_tokens_and_time(tmp_path, clock):
    path = tmp_path / "metrics.jsonl"
    rate = TokenRate()
    log = MetricsLog(path, rate)
    assert (log.path, log.rate, log.keep_until_step, log.records, log.trained) == (path, rate, None, [], False)
    clock.now = 90.0
    log.on_train_begin(ARGS, state_at(0), None)  # the rate restarts with training
    assert rate.start == 90.0 and not path.exists()
    clock.now = 93.0
    log.on_log(ARGS, state_at(3, 12, epoch=0.25, num_input_tokens_seen=1000), None, logs={"loss": 1.5})
    clock.now = 98.0
    log.on_log(ARGS, state_at(4, 12, epoch=0.5, num_input_tokens_seen=None), None, logs=None)
    first = {"step": 3, "max_steps": 12, "epoch": 0.25, "loss": 1.5, "tokens_per_s": 333.33, "elapsed_s": 3.0}
    second = {"step": 4, "max_steps": 12, "epoch": 0.5, "tokens_per_s": 125.0, "elapsed_s": 8.0}
    assert [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] == [first, second]
    assert log.records == [first, second]


def test_metrics_log_rounds_the_rate_and_the_elapsed_time(tmp_path, clock):
    log = MetricsLog(tmp_path / "metrics.jsonl", TokenRate())
    clock.now = 100.1234567
    log.on_log(ARGS, state_at(1, num_input_tokens_seen=7), None, logs={})
    assert (log.records[0]["tokens_per_s"], log.records[0]["elapsed_s"]) == (56.7, 0.123)


def test_metrics_log_writes_nothing_off_the_main_process(tmp_path):
    path = tmp_path / "metrics.jsonl"
    log = MetricsLog(path, TokenRate())
    log.on_log(ARGS, state_at(1, is_world_process_zero=False), None, logs={"loss": 1.0})
    assert log.records == [] and not path.exists()


def test_metrics_log_records_a_final_evaluation_at_the_best_step_once_trained(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl", TokenRate())
    state = state_at(10, best_global_step=4)
    log.on_log(BEST, state, None, logs={"eval_loss": 1.0})
    log.on_train_end(BEST, state, None)
    assert log.trained is True
    log.on_log(BEST, state, None, logs={"eval_loss": 0.5})
    assert [r["step"] for r in log.records] == [10, 4]
    log.on_train_begin(BEST, state, None)  # a new training: the current step again
    assert log.trained is False


def write_records(path, steps):
    path.write_text("".join(json.dumps({"step": s} if s is not None else {"loss": 1}) + "\n\n" for s in steps),
                    encoding="utf-8")


def test_on_resume_records_after_the_checkpoint_are_dropped_from_the_file(tmp_path):
    path = tmp_path / "metrics.jsonl"
    write_records(path, [1, 2, 3, None, 4])  # a record without a step counts as step 0; blank lines skipped
    log = MetricsLog(path, TokenRate(), keep_until_step=2)
    log.trained = True
    log.on_train_begin(ARGS, state_at(2), None)
    kept = [{"step": 1}, {"step": 2}, {"loss": 1}]
    assert log.records == kept and log.trained is False
    assert path.read_text(encoding="utf-8") == '{"step": 1}\n{"step": 2}\n{"loss": 1}\n'


def test_on_resume_only_the_main_process_rewrites_and_a_missing_file_is_fine(tmp_path):
    path = tmp_path / "metrics.jsonl"
    write_records(path, [1, 2, 3])
    before = path.read_text(encoding="utf-8")
    log = MetricsLog(path, TokenRate(), keep_until_step=1)
    log.on_train_begin(ARGS, state_at(1, is_world_process_zero=False), None)
    assert log.records == [] and path.read_text(encoding="utf-8") == before
    MetricsLog(path, TokenRate()).on_train_begin(ARGS, state_at(1), None)  # not a resume: kept as it is
    assert path.read_text(encoding="utf-8") == before
    missing = MetricsLog(tmp_path / "none.jsonl", TokenRate(), keep_until_step=1)
    missing.on_train_begin(ARGS, state_at(1), None)
    assert missing.records == [] and not (tmp_path / "none.jsonl").exists()


def test_on_resume_from_step_zero_keeps_only_records_without_a_step(tmp_path):
    path = tmp_path / "metrics.jsonl"
    write_records(path, [0, 1, None])
    log = MetricsLog(path, TokenRate(), keep_until_step=0)
    log.on_train_begin(ARGS, state_at(0), None)
    assert log.records == [{"step": 0}, {"loss": 1}]


# ---------------------------------------------------------------------------------------------- the progress display


def progress(**console) -> tuple[RichProgress, io.StringIO]:
    shown = io.StringIO()
    return RichProgress(Console(file=shown, width=200, **console), TokenRate()), shown


def test_progress_off_a_terminal_prints_a_line_every_tenth_and_the_bar_at_the_end(clock):
    display, shown = progress(force_terminal=False)
    assert (display.progress, display.task, display._next_print) == (None, None, 0)
    state = state_at(0, 20, num_input_tokens_seen=0)
    display.on_train_begin(ARGS, state, None)
    for step in range(1, 21):
        clock.now = 100.0 + step
        state.global_step, state.num_input_tokens_seen = step, 50 * step
        display.on_step_end(ARGS, state, None)
        display.on_log(ARGS, state, None, logs={"loss": 1 / step, "learning_rate": 2e-4})
    display.on_train_end(ARGS, state, None)
    assert display.progress is None
    lines = shown.getvalue().splitlines()
    assert lines[:2] == ["step 1/20  loss 1.0000  lr 2.00e-04  50 tok/s",
                         "step 3/20  loss 0.3333  lr 2.00e-04  50 tok/s"]
    assert [line.split()[1] for line in lines[:-1]] == [f"{s}/20" for s in range(1, 20, 2)]
    assert lines[-1].startswith("train ━") and lines[-1].endswith(" 20/20 loss 0.0500 lr 2.00e-04 50 tok/s 0:00:00")


def test_progress_prints_every_step_when_there_are_fewer_than_ten(clock):
    display, shown = progress(force_terminal=False)
    state = state_at(0, 3, num_input_tokens_seen=None)
    display.on_train_begin(ARGS, state, None)
    for step in (1, 2, 3):
        state.global_step = step
        display.on_log(ARGS, state, None, logs={"loss": 2.0})  # no learning rate logged: 0
    display.on_train_end(ARGS, state, None)
    assert shown.getvalue().splitlines()[:3] == [f"step {s}/3  loss 2.0000  lr 0.00e+00  0 tok/s" for s in (1, 2, 3)]


def test_progress_lines_are_a_tenth_of_the_steps_apart_rounded_up(clock):
    display, shown = progress(force_terminal=False)
    state = state_at(0, 110)
    display.on_train_begin(ARGS, state, None)
    for step in range(1, 24):
        state.global_step = step
        display.on_log(ARGS, state, None, logs={"loss": 1.0})
    display.on_train_end(ARGS, state, None)
    assert [line.split()[1] for line in shown.getvalue().splitlines()[:-1]] == ["1/110", "12/110", "23/110"]


def test_progress_ignores_logs_without_a_loss_and_shows_dashes_until_one(clock):
    display, shown = progress(force_terminal=False)
    state = state_at(0, 4)
    display.on_log(ARGS, state, None, logs={"loss": 1.0})  # before training: nothing to update
    display.on_step_end(ARGS, state, None)
    display.on_evaluate(ARGS, state, None, metrics={"eval_loss": 1.0})
    display.on_train_end(ARGS, state, None)
    assert shown.getvalue() == ""
    display.on_train_begin(ARGS, state, None)
    display.on_log(ARGS, state, None, logs={"eval_loss": 1.0})
    display.on_log(ARGS, state, None, logs=None)
    state.global_step = 2
    display.on_step_end(ARGS, state, None)
    display.on_train_end(ARGS, state, None)
    line = shown.getvalue()
    assert line.startswith("train ━") and line.endswith(" 2/4 loss - lr - - tok/s -:--:--\n"), line


def test_progress_on_a_terminal_prints_no_step_lines(clock):
    display, shown = progress(force_terminal=True, color_system=None)
    state = state_at(1, 2)
    display.on_train_begin(ARGS, state, None)
    display.on_log(ARGS, state, None, logs={"loss": 3.0})
    display.on_train_end(ARGS, state, None)
    assert "step 1/2" not in shown.getvalue() and "loss 3.0000" in shown.getvalue()


def test_progress_prints_each_evaluation_plainly_during_training(clock):
    display, shown = progress(force_terminal=False, color_system="standard")
    state = state_at(5, 10)
    display.on_train_begin(ARGS, state, None)
    display.on_evaluate(ARGS, state, None, metrics={})  # nothing measured: no line
    display.on_evaluate(ARGS, state, None, metrics={"eval_loss": 1.5, "eval_task_seconds": 2.0})
    assert shown.getvalue() == "eval @ step 5: loss 1.5 (task 2.0 s)\n"  # not highlighted: no colour codes
    display.on_train_end(ARGS, state, None)


# ---------------------------------------------------------------------------------------------- the eval line


def test_the_eval_line_shows_each_metric_then_the_cost_of_each_part():
    logs = {"eval_loss": 1.23456, "eval_tool_accuracy": 0.8, "eval_token_f1": 0.456789, "eval_runtime": 3.0,
            "eval_samples_per_second": 9.0, "eval_steps_per_second": 1.0, "epoch": 2.0, "eval_epoch": 2.0,
            "eval_task_seconds": 3.21, "eval_general_seconds": 0.44, "eval_note": "text", "loss": 9.0,
            "train_seconds": 5.0}
    assert eval_line(20, logs) == (
        "eval @ step 20: loss 1.235 · tool_accuracy 0.8 · token_f1 0.4568 · epoch 2 (task 3.2 s, general 0.4 s)")


def test_the_eval_line_without_costs_has_no_parentheses_and_counts_ints():
    assert eval_line(3, {"eval_loss": 2, "eval_flag": True}) == "eval @ step 3: loss 2 · flag 1"
    assert eval_line(3, {}) == "eval @ step 3: "


# ---------------------------------------------------------------------------------------------- the NaN guard


def test_the_guard_names_the_first_bad_gradient_and_how_many_more():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    for p in model.parameters():
        p.grad = torch.full_like(p, float("nan"))
    model[1].bias.grad = None  # no gradient: not checked
    with pytest.raises(NonFiniteError, match=r"^non-finite gradient of 0.weight and 2 more at step 8$") as info:
        NonFiniteGuard().on_pre_optimizer_step(None, state_at(7), None, model=model)
    assert info.value.step == 8
    model[0].bias.grad = torch.zeros(2)
    with pytest.raises(NonFiniteError, match=r"^non-finite gradient of 0.weight and 1 more at step 8$"):
        NonFiniteGuard().on_pre_optimizer_step(None, state_at(7), None, model=model)
    model[1].weight.grad = torch.zeros(1, 2)
    with pytest.raises(NonFiniteError, match=r"^non-finite gradient of 0.weight at step 8$"):
        NonFiniteGuard().on_pre_optimizer_step(None, state_at(7), None, model=model)


def test_the_guard_lets_a_finite_or_missing_loss_pass():
    guard = NonFiniteGuard()
    for logs in (None, {}, {"loss": 0.0}, {"eval_loss": float("nan")}):
        guard.on_log(None, state_at(1), None, logs=logs)
    with pytest.raises(NonFiniteError, match=r"^non-finite loss nan at step 1$") as info:
        guard.on_log(None, state_at(1), None, logs={"loss": float("nan")})
    assert info.value.step == 1


# ---------------------------------------------------------------------------------------------- Ctrl-C


def test_ctrl_c_handler_is_installed_for_the_block_and_the_previous_one_restored():
    before = signal.getsignal(signal.SIGINT)
    interrupt = StopOnInterrupt()
    assert (interrupt.requested, interrupt._previous) == (False, None)
    with interrupt as entered:
        assert entered is interrupt and interrupt._previous is before
        assert signal.getsignal(signal.SIGINT) == interrupt._on_signal
        signal.raise_signal(signal.SIGINT)  # the first: a request, no exception
        assert interrupt.requested is True
        control = TrainerControl()
        interrupt.on_step_end(None, None, control)
        assert control.should_save is True and control.should_training_stop is True
    assert signal.getsignal(signal.SIGINT) is before


# ---------------------------------------------------------------------------------------------- the checkpoint seal


def test_a_saved_checkpoint_is_sealed_only_where_it_exists_and_this_process_saves(tmp_path):
    sealed = []
    seal = SealCheckpoints(SimpleNamespace(seal_checkpoint=sealed.append))
    (tmp_path / "checkpoint-4").mkdir()
    seal.on_save(SimpleNamespace(output_dir=str(tmp_path), should_save=True), state_at(4), None)
    seal.on_save(SimpleNamespace(output_dir=str(tmp_path), should_save=False), state_at(4), None)
    seal.on_save(SimpleNamespace(output_dir=str(tmp_path), should_save=True), state_at(6), None)
    assert sealed == [tmp_path / "checkpoint-4"]
