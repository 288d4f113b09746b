"""Task metrics, tool-call scoring and the trackers' set-up called directly on small fakes: which metrics a run
announces and measures, the hook adding them to the Trainer's, summary.json's "task_metrics" and "best", the recipe
check's message, tool accuracy on hand-made replies, the trackers' problems, settings and runs — no model, no
training, no tracker package needed."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import sys
import types
from types import SimpleNamespace

import pytest

from peftsft.core.config import EvalSection
from peftsft.core.errors import UserError
from peftsft.data.tools import ToolChat, normalize_tools, parse_tool_calls
from peftsft.training import task_metrics, trackers
from peftsft.training.held_out import EvalRow
from peftsft.training.task_metrics import (ChatMetrics, EvaluateTask, after_training, best_summary, check_measurable,
                                           task_metrics_summary)
from peftsft.training.tool_scoring import TOOL_METRICS, expected_calls, predicted_calls, tool_metrics
from tests.unit.test_task_metrics import Clock, General, fakes, scored_rows  # noqa: F401 (fakes: a fixture)

TOOLS = normalize_tools([{"name": "get_weather", "parameters": {"type": "object", "properties": {}}},
                         {"name": "set_timer", "parameters": {"type": "object", "properties": {}}}])
ANSWERS = ["exact_match", "contains_reference", "token_f1", "rouge_l", "bleu"]


def call_row(*calls, tools=TOOLS):
    """A conversation offering `tools` whose last message calls (name, arguments) each."""
    reply = {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": n, "arguments": a}} for n, a in calls]}
    return ToolChat([{"role": "user", "content": "q"}, reply], tools)


def quiet_row(text="Hello!", tools=TOOLS):
    return ToolChat([{"role": "user", "content": "q"}, {"role": "assistant", "content": text}], tools)


def call(name, arguments):
    return f"<tool_call>{json.dumps({'name': name, 'arguments': arguments})}</tool_call>"


TEXT = [{"role": "user", "content": "Capital?"}, {"role": "assistant", "content": "Paris."}]


# ---------------------------------------------------------------------------------------------- tool scoring


def test_expected_calls_are_the_last_assistant_messages_calls_with_json_arguments():
    assert expected_calls(call_row(("get_weather", '{"city": "Oslo"}'), ("set_timer", {"m": 5}))) == [
        ("get_weather", {"city": "Oslo"}), ("set_timer", {"m": 5})]
    assert expected_calls(call_row(("get_weather", "{not json"))) == [("get_weather", "{not json")]
    assert expected_calls(quiet_row()) == []
    assert expected_calls([{"role": "assistant", "content": "x", "tool_calls": None}]) == []


@pytest.mark.parametrize("messages", [None, [], "text", [{"role": "user", "content": "q"}], [{}]])
def test_no_expectation_without_a_last_assistant_message(messages):
    assert expected_calls(messages) is None


def test_predicted_calls_are_names_and_parsed_arguments():
    reply = parse_tool_calls(call("get_weather", {"city": "Oslo"}) + call("set_timer", {}))
    assert predicted_calls(reply) == [("get_weather", {"city": "Oslo"}), ("set_timer", {})]


def test_tool_metrics_on_call_rows_only():
    rows = [call_row(("get_weather", {"city": "Oslo"})), call_row(("get_weather", {"city": "Oslo"})),
            call_row(("get_weather", {}), ("set_timer", {})), call_row(("set_timer", {"m": 1}))]
    predictions = [call("get_weather", {"city": "Oslo"}),  # all right
                   call("get_weather", {"city": "Bergen"}),  # right name, wrong arguments
                   call("set_timer", {}) + call("get_weather", {}),  # right names, wrong order
                   call("set_timer", {"m": 1}) + '<tool_call>{"name": </tool_call>']  # right, plus a broken block
    assert tool_metrics(predictions, rows) == {
        "tool_accuracy": 0.75, "tool_name_accuracy": 0.75, "tool_call_exact": 0.5, "tool_json_valid": 0.75,
        "tool_call_rows": 4, "no_call_rows": 0}


def test_tool_metrics_on_no_call_rows_only_and_rows_without_tools_or_a_reply_skipped():
    rows = [quiet_row(), quiet_row(), quiet_row(), TEXT, ToolChat([{"role": "user", "content": "q"}], TOOLS)]
    predictions = ["Hi!", '<tool_call>{"name": </tool_call>', call("get_weather", {}), call("x", {}), "y"]
    # an invalid block is an attempt at a call too: wrong on a no-call row
    assert tool_metrics(predictions, rows) == {"tool_accuracy": 1 / 3, "no_call_accuracy": 1 / 3,
                                               "tool_call_rows": 0, "no_call_rows": 3}


def test_tool_metrics_balance_call_and_no_call_rows_and_name_their_metrics():
    rows = [call_row(("get_weather", {})), quiet_row()]
    assert tool_metrics([call("get_weather", {})] * 2, rows) == {
        "tool_accuracy": 0.5, "tool_name_accuracy": 1.0, "tool_call_exact": 1.0, "tool_json_valid": 1.0,
        "no_call_accuracy": 0.0, "tool_call_rows": 1, "no_call_rows": 1}
    assert tool_metrics(["", ""], rows)["tool_json_valid"] == 0.0  # no call at all: not valid JSON calls
    assert tool_metrics([], []) == {} and tool_metrics(["x"], [TEXT]) == {}
    assert TOOL_METRICS == ("tool_accuracy", "tool_name_accuracy", "tool_call_exact", "tool_json_valid",
                            "no_call_accuracy")


# ---------------------------------------------------------------------------------------------- what is measured


def recipe_ns(eval_path=None, eval_fraction=0.0, task="chat", early=None, sweep=None, **settings):
    return SimpleNamespace(eval=EvalSection(**settings), task=task,
                           data=SimpleNamespace(eval_path=eval_path, eval_fraction=eval_fraction),
                           training=SimpleNamespace(early_stopping_metric=early),
                           sweep=SimpleNamespace(metric=sweep))


@pytest.fixture
def held_out(monkeypatch):
    """held_out_conversations replaced: the rows it gives, and the calls it got."""
    seen = {"calls": [], "rows": [TEXT, [{"role": "user", "content": "no answer"}], quiet_row(),
                                  call_row(("get_weather", {})), TEXT]}

    def conversations(recipe, path):
        seen["calls"].append((recipe, path))
        return seen["rows"], "somewhere"

    monkeypatch.setattr(task_metrics, "held_out_conversations", conversations)
    return seen


@pytest.mark.parametrize("data", [{"eval_path": "eval.jsonl"}, {"eval_fraction": 0.1}])
def test_chat_metrics_take_the_first_answerable_held_out_rows(held_out, data):
    recipe = recipe_ns(**data, task_rows=3, general_during_training="loss")
    metrics = ChatMetrics.for_recipe(recipe, "GENERAL")
    assert held_out["calls"] == [(recipe, None)]
    assert [r.messages for r in metrics.rows] == [TEXT, quiet_row(), call_row(("get_weather", {}))]
    assert (metrics.settings, metrics.general) == (recipe.eval, "GENERAL")


def test_chat_metrics_need_eval_rows_and_something_to_measure(held_out):
    assert ChatMetrics.for_recipe(recipe_ns(), "GENERAL") is None  # no held-out rows
    assert held_out["calls"] == []
    off = ChatMetrics.for_recipe(recipe_ns(eval_fraction=0.1, general_during_training="off"), "GENERAL")
    assert off.general is None and len(off.rows) == 4
    general_only = ChatMetrics.for_recipe(recipe_ns(eval_fraction=0.1, task_metrics=False), "GENERAL")
    assert general_only.rows == [] and general_only.general == "GENERAL" and len(held_out["calls"]) == 1
    assert ChatMetrics.for_recipe(recipe_ns(eval_fraction=0.1, task_metrics=False), None) is None
    assert ChatMetrics.for_recipe(recipe_ns(eval_fraction=0.1, task_metrics=False,
                                            general_during_training="off"), "GENERAL") is None  # fmt: skip
    held_out["rows"] = [[{"role": "user", "content": "no answer"}]]
    assert ChatMetrics.for_recipe(recipe_ns(eval_fraction=0.1), None) is None  # no answerable row


@pytest.mark.parametrize("rows, general, during, names", [
    ([TEXT], None, "loss", ANSWERS),
    ([quiet_row()], None, "loss", [*ANSWERS, "tool_accuracy", "no_call_accuracy"]),  # its text is a reference
    ([call_row(("get_weather", {}))], None, "loss",
     ["tool_accuracy", "tool_name_accuracy", "tool_call_exact", "tool_json_valid"]),
    ([TEXT, call_row(("get_weather", {})), quiet_row()], None, "loss",
     [*ANSWERS, "tool_accuracy", "tool_name_accuracy", "tool_call_exact", "tool_json_valid", "no_call_accuracy"]),
    ([], "GENERAL", "loss", ["general_loss"]),
    ([TEXT], "GENERAL", "answers", [*ANSWERS, "general_loss", "general_accuracy"]),
])
def test_chat_metrics_announce_the_metrics_their_rows_give(rows, general, during, names):
    assert ChatMetrics([EvalRow(r) for r in rows], EvalSection(general_during_training=during), general).names == names


def test_measure_scores_answers_and_the_general_checks_answers(fakes):
    rows = scored_rows()  # answered "Paris." (right), "Hi" (wrong), a get_weather call (right)
    settings = EvalSection(general_during_training="answers", general_rows=3, task_max_new_tokens=9, task_batch_size=4)
    general = General()  # its answers: right, wrong, right, right
    out = ChatMetrics(rows, settings, general).measure("M", "T", "bf16")
    assert fakes == {"answer_batch": ("M", "T", [r.prompt for r in rows], 9, 4), "autocast": ("M", "bf16")}
    assert general.calls == [("loss", "M", "T", "bf16"), ("answers", "M", "T", "bf16", 3)]
    assert out["exact_match"] == 0.5 and out["tool_accuracy"] == 1.0
    assert (out["task_seconds"], out["general_seconds"], out["general_loss"]) == (1.5, 1.5, 1.25)
    assert out["general_accuracy"] == 0.75
    assert set(out) == {*ChatMetrics(rows, settings, General()).names, "task_seconds", "general_seconds"}
    assert ChatMetrics([], settings, None).measure("M", "T", "bf16") == {}


# ---------------------------------------------------------------------------------------------- the recipe check


@pytest.mark.parametrize("task, early, sweep, names", [
    ("chat", "loss", None, []), ("chat", None, "loss", []), ("chat", "token_f1", None, ["token_f1"]),
    ("classification", "accuracy", "macro_f1", []), ("chat", "general", None, ["general_loss"]),
    ("chat", None, None, []),
])
def test_metrics_this_run_measures_pass_the_check(task, early, sweep, names):
    check_measurable(recipe_ns(task=task, early=early, sweep=sweep), names)


def test_a_metric_not_measured_fails_with_what_is_and_how_to_get_it():
    with pytest.raises(UserError) as info:
        check_measurable(recipe_ns(early="loss", sweep="no_call_accuracy"), ["token_f1", "tool_accuracy"])
    assert str(info.value).startswith("[sweep] metric: 'no_call_accuracy' is not measured on this run's held-out rows")
    assert info.value.hint == ("this run measures: loss, token_f1, tool_accuracy. No-call rows whose reply calls "
                               "nothing needs held-out rows of that kind ([data] eval_path or eval_fraction)")
    with pytest.raises(UserError) as info:
        check_measurable(recipe_ns(task="classification", early="token_f1"), [])
    assert str(info.value).startswith("[training] early_stopping_metric: 'token_f1' is not measured")
    # only the first letter raised: "F1" stays "F1"
    assert info.value.hint.startswith("this run measures: loss, accuracy, macro_f1. Word-overlap F1 with the")
    with pytest.raises(UserError, match="'accuracy' is not measured"):
        check_measurable(recipe_ns(early="accuracy"), ["token_f1"])


# ---------------------------------------------------------------------------------------------- the callback


def test_evaluate_task_adds_prefixed_metrics_and_logs_each_step_once(monkeypatch):
    monkeypatch.setattr(task_metrics, "time", Clock())
    on_main = []
    asked = []

    def measure(model, tokenizer, precision):
        asked.append((model, tokenizer, precision))
        return {"token_f1": 0.5, "task_seconds": 2.0}

    callback = EvaluateTask(measure, "fp16", lambda fn: on_main.append(fn) or fn())
    assert (callback.precision, callback.trained) == ("fp16", False)
    unbound = {}
    callback.on_evaluate(SimpleNamespace(), SimpleNamespace(global_step=1), None, metrics=unbound, model="M",
                         processing_class="T")  # no trainer's log yet: added to its metrics, not logged
    assert unbound == {"eval_token_f1": 0.5, "eval_task_seconds": 2.0} and asked == [("M", "T", "fp16")]
    callback.measured.clear()
    logged = []
    callback.bind(SimpleNamespace(log=logged.append))
    args, state = SimpleNamespace(load_best_model_at_end=True), SimpleNamespace(global_step=6, best_global_step=2)
    callback.on_train_end(args, state, None)
    callback.on_train_begin(args, state, None)  # training again: the current step's weights
    assert callback.trained is False
    metrics = {"eval_loss": 1.0}
    callback.on_evaluate(args, state, None, metrics=metrics)
    assert metrics == {"eval_loss": 1.0, "eval_token_f1": 0.5, "eval_task_seconds": 2.0} and len(on_main) == 2
    assert logged == [{"eval_token_f1": 0.5, "eval_task_seconds": 2.0}] and logged[0] is not metrics
    assert callback.measured == {6: {"token_f1": 0.5, "task_seconds": 2.0}} and callback.seconds == 3.0
    callback.on_evaluate(args, state, None, metrics={})  # the same step again: neither measured nor logged
    assert len(logged) == 1 and len(on_main) == 2 and callback.seconds == 3.0
    callback.on_train_end(args, state, None)  # trained, the best loaded: the best step's weights
    callback.on_evaluate(args, state, None, metrics={})
    assert sorted(callback.measured) == [2, 6] and len(logged) == 2 and callback.seconds == 4.5


# ---------------------------------------------------------------------------------------------- summary.json


def trainer_ns(step=10, max_steps=10, best_step=None, best=None, checkpoint=None, load_best=True, history=()):
    state = SimpleNamespace(global_step=step, max_steps=max_steps, best_global_step=best_step, best_metric=best,
                            best_model_checkpoint=checkpoint, log_history=list(history))
    return SimpleNamespace(state=state, args=SimpleNamespace(load_best_model_at_end=load_best))


def measured_callback(measured: dict, seconds: float) -> EvaluateTask:
    callback = EvaluateTask(None, "fp32", None)
    callback.measured, callback.seconds = measured, seconds
    return callback


def test_task_metrics_summary_gives_the_adapters_weights_metrics_and_their_cost():
    callback = measured_callback({2: {"token_f1": 0.1234567891}, 4: {"token_f1": 0.5}, 6: {"token_f1": 0.25}},
                                 12.3456)  # fmt: skip
    best = trainer_ns(step=6, best_step=4)
    assert task_metrics_summary(callback, best, 100.0) == {
        "evaluations": 3, "seconds": 12.35, "share_of_train_time": 0.1235, "final": {"token_f1": 0.5}}
    last = task_metrics_summary(callback, trainer_ns(step=8, load_best=False), 0.0)  # step 8 not measured: the last
    assert last["final"] == {"token_f1": 0.25} and last["share_of_train_time"] == round(12.3456 / 1e-9, 4)
    assert task_metrics_summary(measured_callback({2: {"f": 0.1234567891}}, 0.0), best, 1.0)["final"] == {
        "f": 0.123457}
    assert task_metrics_summary(None, best, 1.0) is None
    assert task_metrics_summary(measured_callback({}, 0.0), best, 1.0) is None


def test_best_summary_says_which_evaluation_and_why():
    recipe = SimpleNamespace(task="chat", training=SimpleNamespace(early_stopping_metric="token_f1"))
    history = [{"step": 2, "eval_token_f1": 0.2}, {"step": 2, "loss": 1.0}, {"step": 4, "eval_token_f1": 0.51234},
               {"step": 6, "eval_token_f1": 0.3}]
    trainer = trainer_ns(step=6, max_steps=10, best_step=4, best=0.51234, checkpoint="ck-4", history=history)
    assert best_summary(recipe, trainer) == {
        "step": 4, "metric": "token_f1", "value": 0.51234, "direction": "higher is better", "checkpoint": "ck-4",
        "evaluations": 3,
        "why": "token_f1 0.5123 at step 4 was the highest of 3 evaluation(s) (higher is better); training stopped "
               "early at step 6"}
    task, best = after_training(recipe, None, trainer, 1.0)
    assert task is None and best == best_summary(recipe, trainer)


def test_best_summary_by_loss_ran_to_the_end_and_none_without_a_best():
    recipe = SimpleNamespace(task="chat", training=SimpleNamespace(early_stopping_metric=None))
    trainer = trainer_ns(step=10, max_steps=10, best_step=8, best=0.75, checkpoint="ck-8",
                         history=[{"step": 8, "eval_loss": 0.75}])
    summary = best_summary(recipe, trainer)
    assert summary["why"] == "loss 0.75 at step 8 was the lowest of 1 evaluation(s) (lower is better)"
    assert (summary["metric"], summary["direction"], summary["evaluations"]) == ("loss", "lower is better", 1)
    assert best_summary(recipe, trainer_ns(best_step=8, best=0.75, checkpoint="ck-8", load_best=False)) is None
    assert best_summary(recipe, trainer_ns(best_step=8, best=0.75, checkpoint=None)) is None
    callback = measured_callback({8: {"token_f1": 1.0}}, 1.0)
    assert after_training(recipe, callback, trainer, 2.0)[0] == task_metrics_summary(callback, trainer, 2.0)


# ---------------------------------------------------------------------------------------------- trackers


def test_tracker_problems_name_the_unknown_and_the_missing(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    known = ", ".join([*trackers.tracker_names(), "all", "none"])
    assert trackers.tracker_problems(["tensorbord", "zzzzzz", "wandb", "all", "none"]) == [
        "[training] report_to: unknown tracker 'tensorbord' — did you mean 'tensorboard'?",
        f"[training] report_to: unknown tracker 'zzzzzz' (one of: {known})",
        "[training] report_to: 'wandb' needs the wandb package: pip install wandb (or pip install 'peftsft[trackers]')"]
    assert trackers.tracker_problems([]) == []


def test_tracker_problems_pass_a_tracker_not_set_up_here_without_its_package(monkeypatch):
    monkeypatch.setattr(trackers, "tracker_names", lambda: ["tensorboard", "comet_ml"])
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    assert trackers.tracker_problems(["comet_ml"]) == []
    assert trackers.tracker_problems(["tensorboardx"]) == [
        "[training] report_to: unknown tracker 'tensorboardx' — did you mean 'tensorboard'?"]


def reporting(*names):
    return SimpleNamespace(training=SimpleNamespace(report_to=list(names)))


def test_reported_trackers_in_a_fixed_order_and_all_is_those_installed(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else object())
    assert trackers.reported(reporting("wandb", "comet_ml", "tensorboard")) == ["tensorboard", "wandb"]
    assert trackers.reported(reporting("all")) == ["tensorboard", "wandb"]
    assert trackers.reported(reporting("mlflow", "all")) == ["tensorboard", "mlflow", "wandb"]
    assert trackers.reported(reporting("none")) == []


def test_wandb_is_offline_unless_the_environment_says(opened, tmp_path):
    from peftsft.core.rundir import RunDir

    with trackers.tracking(reporting("wandb"), RunDir(tmp_path / "run"), main=False):
        assert os.environ["WANDB_MODE"] == "offline"


@pytest.fixture
def opened(monkeypatch):
    """OPEN's trackers replaced by recorders of what they were opened with, and when they closed."""
    events = []

    def opener(name):
        @contextlib.contextmanager
        def open_run(recipe, params):
            events.append(("open", name, params, {k: os.environ.get(k) for k in ("TENSORBOARD_LOGGING_DIR",
                                                                                  "WANDB_MODE")}))  # fmt: skip
            yield
            events.append(("close", name))
        return open_run

    monkeypatch.setattr(trackers, "OPEN", {n: opener(n) for n in trackers.CLIENTS})
    monkeypatch.setattr(trackers, "recipe_params", lambda recipe: {"p": 1})
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object())
    for key in ("TENSORBOARD_LOGGING_DIR", "WANDB_MODE", "WANDB_DIR", "WANDB_PROJECT", "WANDB_CONSOLE",
                "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(key, raising=False)
    return events


def test_tracking_opens_each_run_on_the_main_process_with_the_settings_and_closes_it(opened, tmp_path, monkeypatch):
    from peftsft.core.rundir import RunDir

    rundir = RunDir(tmp_path / "run")
    monkeypatch.setenv("WANDB_MODE", "online")
    with trackers.tracking(reporting("wandb", "tensorboard"), rundir, main=True):
        assert rundir.trackers_dir.is_dir()
        assert {k: os.environ[k] for k in ("WANDB_DIR", "WANDB_PROJECT", "WANDB_CONSOLE")} == {
            "WANDB_DIR": str(rundir.trackers_dir), "WANDB_PROJECT": "peftsft", "WANDB_CONSOLE": "off"}
        assert opened == [("open", "tensorboard", {"p": 1}, {"TENSORBOARD_LOGGING_DIR": str(
            rundir.trackers_dir / "tensorboard"), "WANDB_MODE": "online"}), ("open", "wandb", {"p": 1}, opened[0][3])]
    assert opened[2:] == [("close", "wandb"), ("close", "tensorboard")]
    assert "TENSORBOARD_LOGGING_DIR" not in os.environ and "WANDB_PROJECT" not in os.environ
    assert os.environ["WANDB_MODE"] == "online"


def test_tracking_elsewhere_opens_no_run_and_its_settings_go_even_on_error(opened, tmp_path):
    from peftsft.core.rundir import RunDir

    rundir = RunDir(tmp_path / "run")
    with pytest.raises(RuntimeError):
        with trackers.tracking(reporting("mlflow"), rundir, main=False):
            assert os.environ["MLFLOW_TRACKING_URI"] == f"sqlite:///{rundir.trackers_dir.resolve()}/mlflow.db"
            raise RuntimeError
    assert opened == [] and not rundir.trackers_dir.exists() and "MLFLOW_TRACKING_URI" not in os.environ
    with trackers.tracking(reporting("none"), rundir, main=True):
        assert opened == [] and not rundir.trackers_dir.exists()


def test_recipe_params_flatten_nested_tables_and_keep_other_values_whole():
    recipe = SimpleNamespace(model_dump=lambda mode: {
        "a": {"b": {"c": 1}, "empty": {}, "none": None, "list": [1, "x"], "nothing": []},
        "data": {"fields": {"q": "question"}, "roles": {"h": "user"}, "sets": [{"path": "p", "fields": {}}]},
        "flag": True, "rate": 0.5, "name": "n"} if mode == "json" else {})
    assert trackers.recipe_params(recipe) == {
        "a.b.c": 1, "a.empty": "{}", "a.list": '[1, "x"]', "a.nothing": "[]", "data.fields": '{"q": "question"}',
        "data.roles": '{"h": "user"}', "data.sets.0.path": "p", "data.sets.0.fields": "{}", "flag": True,
        "rate": 0.5, "name": "n"}


def fake_module(monkeypatch, name, **attributes):
    module = types.ModuleType(name)
    module.__dict__.update(attributes)
    monkeypatch.setitem(sys.modules, name, module)
    return module


def test_tensorboard_gets_the_run_name_the_recipe_and_its_params(monkeypatch):
    written = {}

    class SummaryWriter:
        def __init__(self, log_dir):
            written["log_dir"], written["text"] = log_dir, []

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            written["closed"] = True

        def add_text(self, tag, text):
            written["text"].append((tag, text))

        def add_hparams(self, params, metrics, run_name):
            written["hparams"] = (params, metrics, run_name)

    fake_module(monkeypatch, "torch.utils.tensorboard", SummaryWriter=SummaryWriter)
    monkeypatch.setattr("peftsft.core.config.recipe_to_toml", lambda recipe: "[run]\nname = 'r'\n")
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", "/tb")
    with trackers.OPEN["tensorboard"](SimpleNamespace(run=SimpleNamespace(name="r")), {"a.b": 1}):
        assert written == {"log_dir": "/tb", "closed": True, "hparams": ({"recipe.a.b": 1}, {}, "."), "text": [
            ("run_name", "r"), ("recipe", "```toml\n[run]\nname = 'r'\n```")]}


def test_mlflow_gets_the_run_name_and_params_in_calls_of_a_hundred_cut_to_its_limit(monkeypatch):
    calls = []

    @contextlib.contextmanager
    def start_run(run_name):
        calls.append(("start", run_name))
        yield
        calls.append(("end",))

    fake_module(monkeypatch, "mlflow", set_tracking_uri=lambda uri: calls.append(("uri", uri)), start_run=start_run,
                log_params=lambda params: calls.append(("params", params)))  # fmt: skip
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///x.db")
    params = {f"k{i}": i for i in range(201)} | {"long": "y" * 7000}
    with trackers.OPEN["mlflow"](SimpleNamespace(run=SimpleNamespace(name="r")), params):
        assert calls[:2] == [("uri", "sqlite:///x.db"), ("start", "r")]
    assert [len(c[1]) for c in calls[2:-1]] == [100, 100, 2] and calls[-1] == ("end",)
    assert calls[2][1]["recipe.k0"] == "0" and calls[4][1] == {"recipe.k200": "200", "recipe.long": "y" * 6000}


def test_wandb_opens_an_offline_run_with_the_recipe_and_finishes_it(monkeypatch):
    seen = {}
    run = SimpleNamespace(finish=lambda: seen.setdefault("finished", True))
    fake_module(monkeypatch, "wandb", init=lambda **kw: seen.setdefault("init", kw) and run)
    monkeypatch.setenv("WANDB_PROJECT", "peftsft")
    monkeypatch.setenv("WANDB_DIR", "/w")
    recipe = SimpleNamespace(run=SimpleNamespace(name="r"), model_dump=lambda mode: {"mode": mode})
    with pytest.raises(KeyError):
        with trackers.OPEN["wandb"](recipe, {}):
            assert "finished" not in seen
            raise KeyError
    assert seen == {"finished": True, "init": {"project": "peftsft", "name": "r", "dir": "/w",
                                               "config": {"recipe": {"mode": "json"}}, "reinit": "finish_previous"}}
