"""The general check's pieces called directly, with the model's loss and answers faked: the memory the plan sets aside,
the shipped rows, autocast per precision, what `score` returns, base vs tuned in `compare`, summary.json's share of
training time, the end-of-run line and warning; and the held-out rows `eval` reads — no model loaded or trained."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from rich.console import Console

from peftsft.core.config import EvalSection, Recipe
from peftsft.core.errors import UserError
from peftsft.training import general_check
from peftsft.training.general_check import CheckRow, GeneralCheck
from tests.conftest import write_jsonl


def recipe_of(**sections) -> Recipe:
    return Recipe.model_validate({"data": {"datasets": [{"path": "train.jsonl"}]}, **sections})


def chat(question: str, answer: str) -> list[dict]:
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


# ---------------------------------------------------------------------------------------------- memory and rows


def test_the_memory_set_aside_is_logits_the_head_copy_and_one_answer_batchs_cache():
    from peftsft.levers.memory import Dims

    dims = Dims(layers=3, hidden=64, intermediate=256, heads=4, kv_heads=2, head_dim=16, vocab=1000)
    logits = 2**25 * 10  # scoring's logits budget: bf16 + fp32 copy + fp32 softmax
    head = 1000 * 64 * 2
    assert general_check.memory_bytes(dims) == logits + head + 64 * 96 * 3 * 2 * 2 * 16 * 4
    assert general_check.memory_bytes(dims, answer_tokens=10) == logits + head + 64 * 10 * 3 * 2 * 2 * 16 * 4


def test_the_shipped_rows_skip_blank_lines_and_default_their_category(tmp_path, monkeypatch):
    path = tmp_path / "check.jsonl"
    path.write_text(
        json.dumps({"messages": chat("2 + 2?", "4."), "expect": ["4", "four"], "category": "arithmetic"}) + "\n\n  \n"
        + json.dumps({"messages": chat("Sky?", "Blue."), "expect": ["blue"]}) + "\n",
        encoding="utf-8",
    )
    monkeypatch.setattr(general_check, "CHECK_SET", path)
    assert general_check.shipped_rows() == [
        CheckRow(chat("2 + 2?", "4."), ("4", "four"), "arithmetic"),
        CheckRow(chat("Sky?", "Blue."), ("blue",), "general"),
    ]


def test_the_real_shipped_set_is_32_questions_with_accepted_answers():
    rows = general_check.shipped_rows()
    assert len(rows) == 32
    assert rows[0] == CheckRow(chat("What is the capital of Russia?", "The capital of Russia is Moscow."), ("Moscow",),
                               "facts")
    assert all(isinstance(r.expect, tuple) and r.expect and r.messages[-1]["role"] == "assistant" for r in rows)


def test_a_rows_prompt_is_every_turn_but_the_reference():
    row = CheckRow([{"role": "system", "content": "s"}, *chat("q", "a")], ("a",))
    assert row.prompt == [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}]
    assert row.category == "general"


@pytest.mark.parametrize("precision", ["fp32", "no", "", "tf32"])
def test_autocast_is_a_no_op_outside_bf16_and_fp16(precision):
    with general_check.autocast(torch.nn.Linear(1, 1), precision):
        assert not torch.is_autocast_enabled("cpu")


@pytest.mark.parametrize(("precision", "dtype"), [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_autocast_runs_at_the_runs_precision_on_the_models_device(precision, dtype):
    with general_check.autocast(torch.nn.Linear(1, 1), precision):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == dtype


# ---------------------------------------------------------------------------------------------- the check's rows


def test_a_check_holds_the_shipped_rows_then_general_path_rows_and_names_both(tmp_path):
    path = write_jsonl(tmp_path / "mine.jsonl", [{"messages": chat("Who am I?", "Pip.")}])
    check = GeneralCheck(EvalSection(general_path=str(path)), max_length=128)
    assert check.max_length == 128 and check.settings.general_path == str(path)
    assert len(check.rows) == 33 and check.rows[:32] == general_check.shipped_rows()
    assert check.rows[32] == CheckRow(chat("Who am I?", "Pip."), ("Pip.",), "user")
    assert check.sources == ["peftsft general set", str(path)]


def test_a_check_without_general_path_is_the_shipped_set_alone():
    check = GeneralCheck(EvalSection())
    assert check.max_length == 512 and len(check.rows) == 32 and check.sources == ["peftsft general set"]


def bad_general_path(tmp_path) -> str:
    path = tmp_path / "mine.jsonl"
    path.write_text(json.dumps({"messages": chat("Who?", "Pip.")}) + "\n{not json\n", encoding="utf-8")
    return str(path)


def test_a_bad_general_path_row_fails_by_default_and_is_skipped_when_asked(tmp_path):
    path = bad_general_path(tmp_path)
    with pytest.raises(UserError):
        GeneralCheck(EvalSection(general_path=path))
    assert len(GeneralCheck(EvalSection(general_path=path), on_bad_row="skip").rows) == 33


def test_the_check_for_a_recipe_follows_its_eval_and_data_sections(tmp_path):
    path = bad_general_path(tmp_path)
    recipe = recipe_of(eval={"general_path": path, "max_general_regression": 0.25},
                       data={"datasets": [{"path": "train.jsonl"}], "max_length": 96, "on_bad_row": "skip"})
    check = GeneralCheck.for_recipe(recipe)
    assert check.settings is recipe.eval and check.max_length == 96 and len(check.rows) == 33


def test_no_check_when_the_recipe_turns_it_off_and_the_defaults_without_a_recipe():
    assert GeneralCheck.for_recipe(recipe_of(eval={"general_check": False})) is None
    check = GeneralCheck.for_recipe(None)
    assert check.settings == EvalSection() and check.max_length == 512 and len(check.rows) == 32


# ---------------------------------------------------------------------------------------------- score, loss, answers

ROWS = [
    CheckRow(chat("Capital of Russia?", "Moscow."), ("Moscow",)),
    CheckRow(chat("2 + 2?", "2 + 2 = 4."), ("4", "four")),
    CheckRow([{"role": "system", "content": "Be brief."}, *chat("Bees make?", "They make honey.")], ("honey",)),
    CheckRow(chat("Opposite of hot?", "Cold."), ("cold",)),
]


@pytest.fixture
def faked(monkeypatch):
    """A check of ROWS whose loss and answers are faked; `calls` records what they were asked, under which autocast."""
    calls = {}

    def assistant_loss(model, tokenizer, conversations, max_length, batch_size):
        calls["loss"] = dict(model=model, tokenizer=tokenizer, conversations=conversations, max_length=max_length,
                             batch_size=batch_size, autocast=autocast_dtype())
        return {"eval_loss": 1.234567, "perplexity": 3.4}

    def answer_batch(model, tokenizer, conversations, sampling, batch_size):
        calls["answers"] = dict(model=model, tokenizer=tokenizer, conversations=conversations, sampling=sampling,
                                batch_size=batch_size, autocast=autocast_dtype())
        return ["It is Moscow.", "four", "They make honey.", "warm"][: len(conversations)]

    monkeypatch.setattr(general_check, "assistant_loss", assistant_loss)
    monkeypatch.setattr(general_check, "answer_batch", answer_batch)
    check = GeneralCheck(EvalSection(general_max_new_tokens=7), max_length=77)
    check.rows = list(ROWS)
    return check, calls


def autocast_dtype():
    return torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None


MODEL = torch.nn.Linear(1, 1)


def test_the_loss_scores_every_rows_reference_in_batches_of_8_at_the_runs_precision(faked):
    check, calls = faked
    assert check.loss(MODEL, "tok", "bf16") == 1.234567
    assert calls["loss"] == dict(model=MODEL, tokenizer="tok", conversations=[r.messages for r in ROWS], max_length=77,
                                 batch_size=8, autocast=torch.bfloat16)
    check.loss(MODEL, "tok")
    assert calls["loss"]["autocast"] is None


def test_answers_are_greedy_replies_to_the_prompts_right_when_they_contain_an_accepted_answer(faked):
    check, calls = faked
    assert check.answers(MODEL, "tok", "fp16") == (
        ["It is Moscow.", "four", "They make honey.", "warm"], [True, True, True, False])
    asked = calls["answers"]
    assert asked["model"] is MODEL and asked["tokenizer"] == "tok" and asked["batch_size"] == 64
    assert asked["conversations"] == [r.prompt for r in ROWS] and asked["autocast"] == torch.float16
    assert asked["sampling"] == general_check.Sampling(max_new_tokens=7) and asked["sampling"].temperature == 0.0
    check.answers(MODEL, "tok")
    assert calls["answers"]["autocast"] is None


def test_answers_of_the_first_rows_when_limited(faked):
    check, calls = faked
    assert check.answers(MODEL, "tok", limit=2) == (["It is Moscow.", "four"], [True, True])
    assert calls["answers"]["conversations"] == [ROWS[0].prompt, ROWS[1].prompt]


def test_a_score_gives_loss_right_and_exact_answers_and_its_seconds(faked, monkeypatch):
    check, calls = faked
    clock = iter([100.0, 112.3456])
    monkeypatch.setattr(general_check, "time", SimpleNamespace(perf_counter=lambda: next(clock)))
    # exact: "four" is an accepted answer, "They make honey." the reference (after a system turn);
    # "It is Moscow." only contains one
    assert check.score(MODEL, "tok", "bf16") == {
        "loss": 1.2346, "accuracy": 0.75, "exact_match": 0.5, "right": 3, "rows": 4, "seconds": 12.35,
        "answers": ["It is Moscow.", "four", "They make honey.", "warm"], "right_answers": [True, True, True, False],
    }
    assert calls["loss"]["autocast"] == torch.bfloat16 and calls["answers"]["autocast"] == torch.bfloat16
    assert calls["loss"]["tokenizer"] == "tok" and calls["answers"]["tokenizer"] == "tok"


def test_a_score_rounds_its_shares_to_4_places(faked, monkeypatch):
    check, _ = faked
    check.rows = ROWS[:3]  # 2 of 3 right, 1 of 3 exact
    monkeypatch.setattr(general_check, "answer_batch", lambda *a, **k: ["It is Moscow.", "2 + 2 = 4.", "wax"])
    scored = check.score(MODEL, "tok")
    assert (scored["accuracy"], scored["exact_match"], scored["right"], scored["rows"]) == (0.6667, 0.3333, 2, 3)


# ---------------------------------------------------------------------------------------------- compare


def scored(loss, accuracy, exact, right, seconds, answers, right_answers) -> dict:
    return {"loss": loss, "accuracy": accuracy, "exact_match": exact, "right": right, "rows": 4, "seconds": seconds,
            "answers": answers, "right_answers": right_answers}


BASE = scored(2.0, 0.75, 0.5, 3, 1.234, ["Moscow", "4", "wax", "cold"], [True, True, False, True])
TUNED = scored(2.5, 0.5, 0.25, 2, 2.345, ["Paris", "4", "honey", "hot"], [False, True, True, False])


def compared(base=BASE, tuned=TUNED, limit=0.1) -> dict:
    check = GeneralCheck(EvalSection(max_general_regression=limit))
    check.rows = list(ROWS)
    return check.compare(base, tuned)


def test_compare_gives_both_scores_the_change_the_verdict_and_every_answer_side_by_side():
    assert compared() == {
        "base": {"loss": 2.0, "accuracy": 0.75, "exact_match": 0.5, "right": 3, "rows": 4, "seconds": 1.234},
        "tuned": {"loss": 2.5, "accuracy": 0.5, "exact_match": 0.25, "right": 2, "rows": 4, "seconds": 2.345},
        "change": {"loss": 0.5, "loss_relative": 0.25, "accuracy": -0.25, "exact_match": -0.25},
        "regressed": True, "max_general_regression": 0.1, "seconds": 3.58, "sources": ["peftsft general set"],
        "answers": [
            {"prompt": "Capital of Russia?", "expect": ["Moscow"], "base": "Moscow", "tuned": "Paris",
             "base_right": True, "tuned_right": False},
            {"prompt": "2 + 2?", "expect": ["4", "four"], "base": "4", "tuned": "4", "base_right": True,
             "tuned_right": True},
            {"prompt": "Bees make?", "expect": ["honey"], "base": "wax", "tuned": "honey", "base_right": False,
             "tuned_right": True},
            {"prompt": "Opposite of hot?", "expect": ["cold"], "base": "cold", "tuned": "hot", "base_right": True,
             "tuned_right": False},
        ],
    }


def test_compare_rounds_the_change_to_4_places():
    base = scored(3.0, 0.66666, 0.33333, 2, 1.0, [], [])
    tuned = scored(3.123456, 0.77777, 0.44444, 2, 1.0, [], [])
    assert compared(base, tuned, limit=0.5)["change"] == {
        "loss": 0.1235, "loss_relative": 0.0412, "accuracy": 0.1111, "exact_match": 0.1111}


@pytest.mark.parametrize(("tuned_loss", "tuned_accuracy", "regressed"), [
    (2.5, 0.75, False),  # loss up exactly the limit (25%): not past it
    (2.5001, 0.75, True),  # loss up past it
    (2.0, 0.5, False),  # accuracy down exactly the limit
    (2.0, 0.49, True),  # accuracy down past it
    (1.0, 1.0, False),  # better on both
])
def test_forgetting_is_a_loss_rise_or_an_accuracy_fall_past_the_limit(tuned_loss, tuned_accuracy, regressed):
    base = scored(2.0, 0.75, 0.5, 3, 1.0, [], [])
    tuned = scored(tuned_loss, tuned_accuracy, 0.5, 3, 1.0, [], [])
    assert compared(base, tuned, limit=0.25)["regressed"] is regressed


def test_a_base_loss_of_zero_makes_any_rise_a_huge_relative_one_not_a_division_error():
    result = compared(scored(0.0, 1.0, 1.0, 4, 1.0, [], []), scored(0.001, 1.0, 1.0, 4, 1.0, [], []))
    assert result["change"]["loss_relative"] == round(0.001 / 1e-9, 4) and result["regressed"] is True


# ---------------------------------------------------------------------------------------------- summary and display


def test_summary_json_keeps_all_but_the_answers_and_adds_the_share_of_training_time():
    result = compared()
    out = general_check.for_summary(result, train_seconds=7.0)
    assert out == {**{k: v for k, v in result.items() if k != "answers"}, "share_of_train_time": round(3.58 / 7, 4)}
    assert "answers" in result  # the result itself keeps them for samples.md


def test_summary_json_has_no_share_without_a_training_time():
    result = compared()
    assert "share_of_train_time" not in general_check.for_summary(result)
    assert "share_of_train_time" not in general_check.for_summary(result, 0.0)


def test_the_end_of_run_line_gives_loss_right_answers_limit_and_seconds():
    assert general_check.describe(compared()) == (
        "general check: loss 2.000 → 2.500 (+25.0%), right 3/4 → 2/4 (limit 10%), 3.6 s")


def display(result) -> str:
    console = Console(record=True, width=400, force_terminal=False, color_system=None)
    general_check.report(console, result, recipe_of(training={"learning_rate": 1e-3, "max_steps": 5}), 40)
    return console.export_text()


def test_the_end_of_run_display_warns_when_the_model_forgot():
    result = compared()
    text = display(result)
    expected = general_check.forgetting_warning(result, recipe_of(training={"learning_rate": 1e-3, "max_steps": 5}), 40)
    assert text.startswith(general_check.describe(result) + "\nwarning: " + expected.splitlines()[0])
    assert text == general_check.describe(result) + "\nwarning: " + expected + "\n"
    assert "[data] replay" in text  # the warning's brackets print as text, not as rich markup


def test_the_end_of_run_display_highlights_nothing_but_the_warnings_label():
    console = Console(record=True, width=400, force_terminal=True, color_system="standard")
    result = compared()
    recipe = recipe_of(training={"learning_rate": 1e-3, "max_steps": 5})
    general_check.report(console, result, recipe, 40)
    first, label, warning = console.export_text(styles=True).partition("\x1b[1;33mwarning:\x1b[0m ")
    assert first == general_check.describe(result) + "\n" and label  # no number coloured by rich's highlighter
    assert warning == general_check.forgetting_warning(result, recipe, 40) + "\n"


def test_the_end_of_run_display_is_one_line_within_the_limit():
    result = compared(TUNED, TUNED)
    assert display(result) == general_check.describe(result) + "\n"
