"""The held-out rows `eval` reads and how their answers are scored, called directly: which rows answer metrics and
tool metrics see, and where the rows come from (a --data file, the recipe's eval_path or a Hub id, its seeded split)
with the file reading faked where only its arguments matter — no model loaded."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from peftsft.core.config import DatasetSpec, DataSection
from peftsft.core.errors import UserError
from peftsft.training import held_out
from peftsft.training.held_out import EvalRow, held_out_conversations
from tests.conftest import write_jsonl


def chat(question: str, answer: str) -> list[dict]:
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


def test_answer_metrics_see_the_rows_with_a_text_reference_and_tool_metrics_every_row(monkeypatch):
    seen = {}
    monkeypatch.setattr(held_out, "answer_metrics", lambda p, r: seen.setdefault("answers", (p, r)) and {"a": 1.0})
    monkeypatch.setattr(held_out, "tool_metrics", lambda p, c: seen.setdefault("tools", (p, c)) and {"t": 0.5})
    rows = [EvalRow(chat("A?", "a.")), EvalRow("plain text"), EvalRow(chat("B?", "b.")),
            EvalRow([{"role": "user", "content": "C?"}, {"role": "assistant", "content": None,
                                                          "tool_calls": [{"function": {"name": "f"}}]}])]
    assert held_out.score_answers(["pa", "pt", "pb", "pc"], rows) == {"a": 1.0, "t": 0.5}
    assert seen["answers"] == (["pa", "pb"], ["a.", "b."])
    assert seen["tools"] == (["pa", "pt", "pb", "pc"], [r.messages for r in rows])


def recipe_for(data: DataSection, seed: int = 7):
    return SimpleNamespace(data=data, training=SimpleNamespace(seed=seed))


@pytest.fixture
def reads(monkeypatch):
    """load_conversations faked: each call's (paths, data section) recorded, rows named after their file."""
    calls = []

    def load_conversations(paths, data, stats):
        calls.append((paths, data))
        return [chat(f"{p}#{i}?", "a.") for p in paths for i in range(4)]

    import peftsft.data.build

    monkeypatch.setattr(peftsft.data.build, "load_conversations", load_conversations)
    return calls


def test_an_eval_path_without_a_suffix_is_a_hub_dataset_read_as_is(reads):
    data = DataSection(datasets=[DatasetSpec(path="train.jsonl")], eval_path="org/held-out", on_bad_row="skip")
    conversations, where = held_out_conversations(recipe_for(data), None)
    assert where == "org/held-out" and len(conversations) == 4
    assert reads == [(["org/held-out"], data)]  # the recipe's own [data] section: its format, fields and roles


def test_a_data_file_is_read_with_the_recipes_bad_row_rule_alone(reads):
    data = DataSection(datasets=[DatasetSpec(path="train.jsonl", format="alpaca")], on_bad_row="skip")
    _, where = held_out_conversations(recipe_for(data), "held.jsonl")
    [(paths, section)] = reads
    assert where == "held.jsonl" and paths == ["held.jsonl"]
    assert section.on_bad_row == "skip" and [d.path for d in section.datasets] == ["held.jsonl"]
    assert section.datasets[0].format == DatasetSpec(path="x").format  # not the training file's format


def test_the_eval_split_shuffles_all_training_datasets_together(reads):
    data = DataSection(datasets=[DatasetSpec(path="a.jsonl"), DatasetSpec(path="b.jsonl")], eval_fraction=0.5)
    conversations, where = held_out_conversations(recipe_for(data, seed=3), None)
    assert reads == [(["a.jsonl", "b.jsonl"], data)]
    import random

    order = [chat(f"{p}#{i}?", "a.") for p in ("a.jsonl", "b.jsonl") for i in range(4)]
    random.Random(3).shuffle(order)
    assert conversations == order[:4] and where == "eval_fraction 0.5 of the training data"


def test_the_eval_split_rounds_its_share_to_the_nearest_row(reads):
    data = DataSection(datasets=[DatasetSpec(path="a.jsonl"), DatasetSpec(path="b.jsonl")], eval_fraction=0.3)
    assert len(held_out_conversations(recipe_for(data), None)[0]) == 2  # 8 * 0.3 = 2.4


def test_an_eval_file_that_moved_is_named_and_a_data_file_suggested(tmp_path, reads):
    data = DataSection(datasets=[DatasetSpec(path="train.jsonl")], eval_path=str(tmp_path / "gone.jsonl"))
    with pytest.raises(UserError) as info:
        held_out_conversations(recipe_for(data), None)
    assert info.value.message == f"the run's eval_path is gone: {tmp_path / 'gone.jsonl'}"
    assert reads == []


def test_a_data_file_needs_no_recipe(tmp_path):
    path = write_jsonl(tmp_path / "held.jsonl", [{"messages": chat("A?", "a.")}])
    assert held_out_conversations(None, str(path)) == ([chat("A?", "a.")], str(path))
