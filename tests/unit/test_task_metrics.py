"""Task metrics at every evaluation: logged at the step whose weights they measured, shown, the best checkpoint
picked by any of them (and kept as the adapter), summary.json saying which and why; the recipe keys checked."""

from __future__ import annotations

import io
import json

import pytest
import torch
from rich.console import Console

from peftsft.core.errors import UserError
from peftsft.training.recipe import load_recipe

SETTINGS = ["data.eval_fraction=0.25", "training.eval_steps=2", "training.save_steps=2", "training.max_steps=6",
            "training.precision=\"fp32\"", "eval.task_max_new_tokens=4", "eval.task_rows=4"]  # fmt: skip


@pytest.fixture(scope="module")
def metrics_run(tmp_path_factory, tiny_model_dir):
    """A 6-step run evaluating every 2 steps, checkpoints kept, the best picked by exact_match; its output."""
    from peftsft.artifacts.tasks import run
    from tests.conftest import write_tiny_recipe

    recipe = load_recipe(write_tiny_recipe(tmp_path_factory.mktemp("task-metrics"), tiny_model_dir),
                         [*SETTINGS, "training.early_stopping_metric=\"exact_match\""])  # fmt: skip
    shown = io.StringIO()
    summary = run(recipe, Console(file=shown, width=200))
    records = [json.loads(line) for line in (recipe.run_dir / "metrics.jsonl").read_text().splitlines()]
    return recipe, summary, records, shown.getvalue()


def adapter_weights(folder):
    from safetensors.torch import load_file

    return load_file(folder / "adapter_model.safetensors")


def test_task_metrics_are_logged_once_per_evaluation_at_its_step(metrics_run):
    recipe, summary, records, _ = metrics_run
    steps = [r["step"] for r in records if "eval_general_loss" in r]
    assert steps == [2, 4, 6]
    for record in (r for r in records if "eval_general_loss" in r):
        assert {"eval_exact_match", "eval_token_f1", "eval_rouge_l", "eval_bleu", "eval_task_seconds",
                "eval_general_seconds"} <= record.keys()
        assert record["eval_task_seconds"] > 0 and record["eval_general_seconds"] > 0
    assert summary["task_metrics"]["evaluations"] == 3 and summary["task_metrics"]["seconds"] > 0


def test_each_logged_value_is_the_metric_of_that_steps_weights(metrics_run, tiny_model_dir):
    """The checkpoint of step s, scored again from disk, gives the value logged at step s."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from peftsft.training.general_check import GeneralCheck

    recipe, _, records, _ = metrics_run
    logged = {r["step"]: r["eval_general_loss"] for r in records if "eval_general_loss" in r}
    tokenizer = AutoTokenizer.from_pretrained(recipe.run_dir / "adapter")
    check = GeneralCheck.for_recipe(recipe)
    for step, value in logged.items():
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, torch_dtype=torch.float32)
        model = PeftModel.from_pretrained(base, str(recipe.run_dir / "checkpoints" / f"checkpoint-{step}"))
        assert check.loss(model, tokenizer) == pytest.approx(value, rel=1e-4), f"step {step}"
    assert len(set(logged.values())) == 3  # the weights changed between evaluations: a shifted step would show


def test_best_checkpoint_by_a_task_metric_is_the_adapter_and_summary_says_why(metrics_run):
    recipe, summary, records, _ = metrics_run
    values = [(r["step"], r["eval_exact_match"]) for r in records if "eval_exact_match" in r]
    best_value = max(v for _, v in values)
    best_step = next(s for s, v in values if v == best_value)  # the first of equals: a tie is no improvement
    best = summary["best"]
    assert best["step"] == best_step < summary["steps"]  # not the last weights: keeping them would show
    assert (best["metric"], best["value"], best["direction"]) == ("exact_match", best_value, "higher is better")
    assert best["checkpoint"].endswith(f"checkpoint-{best_step}") and "exact_match" in best["why"]
    kept = adapter_weights(recipe.run_dir / "checkpoints" / f"checkpoint-{best_step}")
    final = adapter_weights(recipe.run_dir / "adapter")
    last = adapter_weights(recipe.run_dir / "checkpoints" / f"checkpoint-{summary['steps']}")
    assert all(torch.equal(kept[k], final[k]) for k in kept)
    assert not all(torch.equal(last[k], final[k]) for k in last)
    assert summary["task_metrics"]["final"]["exact_match"] == best_value  # the adapter's own scores
    assert summary["eval"]["exact_match"] == best_value


def test_the_final_evaluation_is_recorded_at_the_best_step_not_the_last(metrics_run):
    _, summary, records, _ = metrics_run
    after = [r for r in records if r.get("eval_loss") is not None]
    assert [r["step"] for r in after] == [2, 4, 6, summary["best"]["step"]]
    assert after[-1]["eval_loss"] == pytest.approx(next(r["eval_loss"] for r in after if r["step"] == 2))


def test_progress_display_shows_every_evaluation_with_its_task_metrics(metrics_run):
    shown = metrics_run[3]
    lines = [line for line in shown.splitlines() if line.startswith("eval @ step")]
    assert [line.split(":")[0] for line in lines] == ["eval @ step 2", "eval @ step 4", "eval @ step 6"]
    assert all("exact_match" in line and "general_loss" in line and "task" in line for line in lines)


def test_best_by_a_lower_is_better_metric_picks_the_lowest(tmp_path, tiny_model_dir):
    """general_loss: lower is better (a rule that treated every metric but `loss` as higher-is-better fails)."""
    from peftsft.artifacts.tasks import run
    from tests.conftest import write_tiny_recipe

    recipe = load_recipe(write_tiny_recipe(tmp_path, tiny_model_dir),
                         [*SETTINGS, "eval.task_metrics=false", "training.early_stopping_metric=\"general\""])
    summary = run(recipe, Console(quiet=True))
    records = map(json.loads, (recipe.run_dir / "metrics.jsonl").read_text().splitlines())
    values = {r["step"]: r["eval_general_loss"] for r in records if "eval_general_loss" in r}
    assert len(set(values.values())) == len(values) == 3
    assert summary["best"]["step"] == min(values, key=values.get)
    assert summary["best"]["metric"] == "general_loss" and summary["best"]["direction"] == "lower is better"


# ---------------------------------------------------------------------------------------------- what is measured


def test_chat_metrics_measure_exactly_the_metrics_they_announce(tiny_model_dir):
    """Tool rows and text rows: `names` (checked before training) is what `measure` returns."""
    from transformers import AutoModelForCausalLM

    from transformers import AutoTokenizer

    from peftsft.core.config import DataSection, EvalSection
    from peftsft.data.templates import apply_template
    from peftsft.data.tools import ToolChat, normalize_tools
    from peftsft.training.held_out import EvalRow
    from peftsft.training.task_metrics import ChatMetrics

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    apply_template(tokenizer, DataSection(template="hermes"))
    tool = normalize_tools([{"name": "get_weather", "description": "Weather.", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}])
    call = {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}]}
    rows = [EvalRow(ToolChat([{"role": "user", "content": "Weather in Oslo?"}, call], tool)),
            EvalRow(ToolChat([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}], tool)),
            EvalRow([{"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris."}])]
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    metrics = ChatMetrics(rows, EvalSection(task_max_new_tokens=3), None)
    measured = metrics.measure(model, tokenizer, "fp32")
    assert set(measured) - {"task_seconds"} == set(metrics.names)
    assert {"tool_accuracy", "no_call_accuracy", "tool_name_accuracy", "token_f1"} <= set(metrics.names)
    assert "general_loss" not in metrics.names


def test_rows_are_capped_and_the_general_check_can_be_off(tiny_recipe):
    from peftsft.training.general_check import GeneralCheck
    from peftsft.training.task_metrics import ChatMetrics

    recipe = load_recipe(tiny_recipe(), ["data.eval_fraction=0.5", "eval.task_rows=3"])
    metrics = ChatMetrics.for_recipe(recipe, GeneralCheck.for_recipe(recipe))
    assert len(metrics.rows) == 3 and "general_loss" in metrics.names
    off = load_recipe(tiny_recipe(), ["data.eval_fraction=0.5", "eval.task_metrics=false",
                                      "eval.general_during_training=\"off\""])
    assert ChatMetrics.for_recipe(off, GeneralCheck.for_recipe(off)) is None
    assert ChatMetrics.for_recipe(load_recipe(tiny_recipe()), None) is None  # no eval data: nothing to measure


def test_a_metric_the_held_out_rows_cannot_give_fails_before_training(tiny_recipe):
    from peftsft.artifacts.tasks import run

    recipe = load_recipe(tiny_recipe(), [*SETTINGS, "training.early_stopping_metric=\"no_call_accuracy\""])
    with pytest.raises(UserError, match="'no_call_accuracy' is not measured on this run's held-out rows"):
        run(recipe, Console(quiet=True))
    assert not (recipe.run_dir / "metrics.jsonl").exists()


@pytest.mark.parametrize("override, message", [
    ("training.early_stopping_metric=\"tool_acuracy\"", "unknown metric 'tool_acuracy' — did you mean 'tool_accuracy'?"),
    ("training.early_stopping_metric=\"macro_f1\"", "'macro_f1' is not measured in chat runs"),
    ("training.early_stopping_metric=\"general_accuracy\"", "needs [eval] general_during_training = \"answers\""),
    ("sweep.metric=\"token_f1\"", "'token_f1' is a task metric: set [eval] task_metrics = true"),
])
def test_named_metrics_are_checked_with_the_fix(tiny_recipe, override, message):
    overrides = ["data.eval_fraction=0.25", "training.eval_steps=2", "eval.task_metrics=false", override]
    with pytest.raises(UserError) as info:
        load_recipe(tiny_recipe(), overrides)
    assert any(message in problem for problem in info.value.problems), info.value.problems


def test_early_stopping_metric_alone_keeps_the_best_and_needs_evaluations(tiny_recipe):
    from peftsft.training.arguments import trainer_arguments
    from tests.conftest import decide

    recipe = load_recipe(tiny_recipe(), ["data.eval_fraction=0.25", "training.eval_steps=2",
                                         "training.early_stopping_metric=\"token_f1\""])
    args = trainer_arguments(recipe, "cpu", True, decide(recipe))
    assert args["load_best_model_at_end"] and args["metric_for_best_model"] == "eval_token_f1"
    assert args["greater_is_better"] is True and args["save_strategy"] == "best"
    with pytest.raises(UserError, match="early_stopping_metric needs eval_steps"):
        load_recipe(tiny_recipe(), ["data.eval_fraction=0.25", "training.early_stopping_metric=\"loss\""])


# ---------------------------------------------------------------------------------------------- measure, on fakes


class Clock:
    """time.perf_counter for task_metrics: each reading 1.5 s after the last (from 100)."""

    def __init__(self):
        self.now = 98.5

    def perf_counter(self):
        self.now += 1.5
        return self.now


class General:
    """A general check that records how it was called."""

    def __init__(self):
        self.calls = []

    def loss(self, model, tokenizer, precision):
        self.calls.append(("loss", model, tokenizer, precision))
        return 1.25

    def answers(self, model, tokenizer, precision, rows):
        self.calls.append(("answers", model, tokenizer, precision, rows))
        return None, [True, False, True, True]


@pytest.fixture
def fakes(monkeypatch):
    """answer_batch, autocast and the clock of task_metrics replaced by recorders; what they saw."""
    import contextlib

    from peftsft.training import task_metrics

    seen = {}

    def answer_batch(model, tokenizer, prompts, sampling, batch_size):
        seen["answer_batch"] = (model, tokenizer, prompts, sampling.max_new_tokens, batch_size)
        return ["Paris.", "Hi", "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {}}\n</tool_call>"]

    @contextlib.contextmanager
    def autocast(model, precision):
        seen["autocast"] = (model, precision)
        yield

    monkeypatch.setattr(task_metrics, "answer_batch", answer_batch)
    monkeypatch.setattr(task_metrics, "autocast", autocast)
    monkeypatch.setattr(task_metrics, "time", Clock())
    return seen


def scored_rows():
    from peftsft.data.tools import ToolChat, normalize_tools
    from peftsft.training.held_out import EvalRow

    tool = normalize_tools([{"name": "get_weather", "parameters": {"type": "object", "properties": {}}}])
    call = {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "get_weather", "arguments": {}}}]}
    return [EvalRow([{"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris."}]),
            EvalRow([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]),
            EvalRow(ToolChat([{"role": "user", "content": "Weather?"}, call], tool))]


def test_measure_answers_the_rows_with_the_settings_and_scores_them_without_counts(fakes):
    from peftsft.core.config import EvalSection
    from peftsft.training.task_metrics import ChatMetrics

    rows = scored_rows()
    settings = EvalSection(task_max_new_tokens=7, task_batch_size=2, general_during_training="off")
    out = ChatMetrics(rows, settings, None).measure("MODEL", "TOKENIZER", "bf16")
    assert fakes["answer_batch"] == ("MODEL", "TOKENIZER", [r.prompt for r in rows], 7, 2)
    assert fakes["autocast"] == ("MODEL", "bf16")
    assert out["exact_match"] == 0.5 and out["contains_reference"] == 0.5  # of the two text rows
    assert out["tool_name_accuracy"] == 1.0 and out["task_seconds"] == 1.5
    assert not {"tool_call_rows", "no_call_rows"} & set(out)
    assert set(out) == {*ChatMetrics(rows, settings, None).names, "task_seconds"}


@pytest.mark.parametrize("during, accuracy", [("loss", False), ("answers", True)])
def test_measure_adds_the_general_checks_loss_and_asked_for_its_accuracy(fakes, during, accuracy):
    from peftsft.core.config import EvalSection
    from peftsft.training.task_metrics import ChatMetrics

    general = General()
    out = ChatMetrics([], EvalSection(general_during_training=during, general_rows=5), general).measure(
        "MODEL", "TOKENIZER", "fp16")
    assert out == {"general_loss": 1.25, "general_seconds": 1.5, **({"general_accuracy": 0.75} if accuracy else {})}
    assert "answer_batch" not in fakes
    assert general.calls == [("loss", "MODEL", "TOKENIZER", "fp16")] + (
        [("answers", "MODEL", "TOKENIZER", "fp16", 5)] if accuracy else [])


def test_measure_times_each_part_apart(fakes):
    from peftsft.core.config import EvalSection
    from peftsft.training.task_metrics import ChatMetrics

    out = ChatMetrics(scored_rows(), EvalSection(general_during_training="loss"), General()).measure("M", "T", "fp32")
    assert (out["task_seconds"], out["general_seconds"], out["general_loss"]) == (1.5, 1.5, 1.25)


# ---------------------------------------------------------------------------------------------- the callback


def test_evaluate_task_measures_each_step_once_and_logs_only_once_bound(monkeypatch):
    from types import SimpleNamespace

    from peftsft.training import task_metrics
    from peftsft.training.task_metrics import EvaluateTask

    monkeypatch.setattr(task_metrics, "time", Clock())
    measured = []

    def measure(model, tokenizer, precision):
        measured.append((model, tokenizer, precision))
        return {"token_f1": 0.5}

    callback = EvaluateTask(measure, "bf16", lambda fn: fn())
    assert (callback.measured, callback.seconds, callback.trained, callback.log) == ({}, 0.0, False, None)
    args = SimpleNamespace(load_best_model_at_end=True)
    state = SimpleNamespace(global_step=4, best_global_step=2)
    metrics = {"eval_loss": 1.0}
    callback.on_evaluate(args, state, None, metrics=metrics, model="M", processing_class="T")  # not bound: no log
    assert metrics == {"eval_loss": 1.0, "eval_token_f1": 0.5} and callback.measured == {4: {"token_f1": 0.5}}
    assert callback.seconds == 1.5 and measured == [("M", "T", "bf16")]
    logged = []
    callback.bind(SimpleNamespace(log=logged.append))
    callback.on_evaluate(args, state, None, metrics={}, model="M", processing_class="T")  # step 4 again: not re-measured
    assert len(measured) == 1 and logged == []
    callback.on_train_end(args, state, None)  # the best step's weights loaded: step 2, measured and logged
    callback.on_evaluate(args, state, None, metrics={}, model="M", processing_class="T")
    assert sorted(callback.measured) == [2, 4] and logged == [{"eval_token_f1": 0.5}] and callback.seconds == 3.0
