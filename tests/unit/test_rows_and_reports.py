"""Small units of the data and evaluation paths, each against the behaviour users see: dataset files read row by row
(.json, .csv) with the file:line of every row and the errors that name it; Alpaca and prompt-completion rows as chat
messages; tool schemas and calls as the templates render them; replay's share and spread; the data contract's
examples and end-of-turn counts under masking = "all"; held-out rows for `eval`; a resumed recipe's differences;
answer metrics."""

from __future__ import annotations

import json
import random
from types import SimpleNamespace

import numpy as np
import pytest

from peftsft.core.config import DatasetSpec, DataSection
from peftsft.core.errors import UserError
from peftsft.data.formats import Mapping, RowError, to_messages
from peftsft.data.rows import read_rows
from tests.conftest import write_jsonl

# ---------------------------------------------------------------------------------------------- .json files


def test_a_json_dataset_is_a_list_whose_rows_are_named_by_their_index(tmp_path):
    path = tmp_path / "rows.json"
    path.write_text(json.dumps([{"text": "a"}, 5, {"text": "b"}]), encoding="utf-8")
    rows = list(read_rows(path))
    assert [row.data for row in rows] == [{"text": "a"}, {"_invalid": 5}, {"text": "b"}]
    assert [row.where for row in rows] == [f"{path}[0]", f"{path}[1]", f"{path}[2]"]


def test_a_json_dataset_that_does_not_parse_names_the_file_and_the_json_error(tmp_path):
    path = tmp_path / "rows.json"
    path.write_text('[{"text": "a"},', encoding="utf-8")
    with pytest.raises(UserError) as info:
        list(read_rows(path))
    assert info.value.message.startswith(f"{path}: cannot read dataset: Expecting value")
    assert info.value.hint == "a .json dataset is a list of objects"


def test_a_json_dataset_that_is_not_a_list_says_to_use_a_list_or_jsonl(tmp_path):
    path = tmp_path / "rows.json"
    path.write_text('{"text": "a"}', encoding="utf-8")
    with pytest.raises(UserError) as info:
        list(read_rows(path))
    assert info.value.message == f"{path}: a .json dataset must be a list of objects"
    assert info.value.hint == "or use .jsonl, one per line"


def test_a_utf16_json_dataset_is_refused_as_a_dataset(tmp_path):
    path = tmp_path / "rows.json"
    path.write_bytes('[{"text": "a"}]'.encode("utf-16"))
    with pytest.raises(UserError) as info:
        list(read_rows(path))
    assert info.value.message.startswith(f"{path}: cannot read dataset: the file is UTF-16-encoded")


# ---------------------------------------------------------------------------------------------- .csv files


def test_csv_rows_are_keyed_by_the_header_and_named_by_the_line_they_start_on(tmp_path):
    path = tmp_path / "rows.csv"
    # a byte-order mark (Excel writes one), a quoted field over two lines with a CRLF kept inside it
    path.write_bytes(b'\xef\xbb\xbfprompt,completion\r\nhi,"two\r\nlines"\r\nbye,ok\r\n"a ""quote""",x\r\n')
    rows = list(read_rows(path))
    assert [row.data for row in rows] == [
        {"prompt": "hi", "completion": "two\r\nlines"}, {"prompt": "bye", "completion": "ok"},
        {"prompt": 'a "quote"', "completion": "x"},
    ]
    assert [row.where for row in rows] == [f"{path}:2", f"{path}:4", f"{path}:5"]


def test_a_csv_field_past_the_limit_is_malformed_at_the_line_of_its_row(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text("text\nshort\n" + "x" * 200_000 + "\n", encoding="utf-8")
    with pytest.raises(UserError) as info:
        list(read_rows(path))
    assert info.value.message.startswith(f"{path}:3: malformed CSV: field larger than field limit")


def test_a_csv_dataset_in_a_legacy_code_page_names_the_line_and_byte(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_bytes("text\nok\ncaf\u00e9\n".encode("cp1252"))
    with pytest.raises(UserError) as info:
        list(read_rows(path))
    assert info.value.message.startswith(f"{path}:3: cannot read dataset: not UTF-8 (byte 0xe9 at offset 11)")


def test_a_utf16_csv_dataset_is_refused_by_its_byte_order_mark(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_bytes("text\nhi\n".encode("utf-16"))
    with pytest.raises(UserError) as info:
        list(read_rows(path))
    assert info.value.message.startswith(f"{path}: cannot read dataset: the file is UTF-16-encoded")


def test_only_the_head_of_a_csv_is_sniffed_for_utf16(tmp_path):
    """NUL bytes in a cell past the first 200 bytes are data, not a sign of UTF-16."""
    path = tmp_path / "rows.csv"
    path.write_bytes(b"text\n" + b"y" * 300 + b"\n" + b"\x00" * 1000 + b"\n")
    assert [len(row.data["text"]) for row in read_rows(path)] == [300, 1000]


def test_a_csv_file_that_cannot_be_opened_is_a_user_error(tmp_path):
    from peftsft.data.rows import _csv_rows

    with pytest.raises(UserError, match=r"rows\.csv: cannot read dataset: \[Errno 2\] No such file"):
        list(_csv_rows(tmp_path / "rows.csv"))


# ---------------------------------------------------------------------------------------------- tools in data files


def tool_rows(tools_column: str, values: list) -> list[dict]:
    rows = []
    for value in values:
        row = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
        if value is not None:
            row[tools_column] = value
        rows.append(row)
    return rows


def test_the_first_row_with_tools_skips_empty_tools_and_bad_rows(tmp_path):
    from peftsft.data.templates import first_row_with_tools

    path = write_jsonl(tmp_path / "train.jsonl", [*tool_rows("tools", ["", "[]", [], None]), "{not json",
                                                   *tool_rows("tools", [[{"name": "f"}]])])
    assert first_row_with_tools(DataSection(datasets=[DatasetSpec(path=str(path))])) == f"{path}:6"


def test_the_eval_file_is_searched_with_the_first_datasets_fields(tmp_path):
    from peftsft.data.templates import first_row_with_tools

    train = write_jsonl(tmp_path / "train.jsonl", tool_rows("functions", [None, None]))
    held = write_jsonl(tmp_path / "eval.jsonl", [*tool_rows("tools", [[{"name": "f"}]]),
                                                 *tool_rows("functions", ['[{"name": "f"}]'])])
    spec = DatasetSpec(path=str(train), fields={"tools": "functions"})
    assert first_row_with_tools(DataSection(datasets=[spec], eval_path=str(held))) == f"{held}:2"
    assert first_row_with_tools(DataSection(datasets=[spec])) is None
    no_datasets = DataSection(eval_path=str(held))  # the eval file alone: its own column names
    assert first_row_with_tools(no_datasets) == f"{held}:1"
    # a dataset's own row comes before the eval file's
    train = write_jsonl(tmp_path / "train.jsonl", tool_rows("functions", [None, '[{"name": "g"}]']))
    assert first_row_with_tools(DataSection(datasets=[spec], eval_path=str(held))) == f"{train}:2"


def test_hub_ids_and_missing_files_are_skipped_and_later_files_still_searched(tmp_path):
    from peftsft.data.templates import first_row_with_tools

    found = write_jsonl(tmp_path / "b.jsonl", tool_rows("tools", [None, [{"name": "f"}]]))
    specs = [DatasetSpec(path="org/dataset"), DatasetSpec(path=str(tmp_path / "gone.jsonl")), DatasetSpec(path=str(found))]
    assert first_row_with_tools(DataSection(datasets=specs)) == f"{found}:2"


def test_the_search_reads_limit_rows_of_each_file_then_moves_on(tmp_path):
    from peftsft.data.templates import first_row_with_tools

    late = write_jsonl(tmp_path / "late.jsonl", tool_rows("tools", [None, None, [{"name": "f"}]]))
    data = DataSection(datasets=[DatasetSpec(path=str(late))])
    assert first_row_with_tools(data, limit=1) is None  # rows 0 and 1 read
    assert first_row_with_tools(data, limit=2) == f"{late}:3"
    other = write_jsonl(tmp_path / "other.jsonl", tool_rows("tools", [[{"name": "g"}]]))
    both = DataSection(datasets=[DatasetSpec(path=str(late)), DatasetSpec(path=str(other))])
    assert first_row_with_tools(both, limit=1) == f"{other}:1"
    # the default: the first 1,001 rows of a file (indices 0..1000)
    lines = [json.dumps(row) for row in tool_rows("tools", [None])] * 1001
    big = write_jsonl(tmp_path / "big.jsonl", [*lines, *tool_rows("tools", [[{"name": "f"}]])])
    assert first_row_with_tools(DataSection(datasets=[DatasetSpec(path=str(big))])) is None
    bigger = write_jsonl(tmp_path / "bigger.jsonl", [*lines[:1000], *tool_rows("tools", [[{"name": "f"}]])])
    assert first_row_with_tools(DataSection(datasets=[DatasetSpec(path=str(bigger))])) == f"{bigger}:1001"


# ---------------------------------------------------------------------------------------------- formats

ALPACA = Mapping(fields={"instruction": "task", "input": "context", "output": "answer", "history": "past",
                         "system": "persona"})  # fmt: skip


def test_an_alpaca_row_with_renamed_columns_becomes_history_then_the_prompt_and_its_answer():
    row = {"task": "Translate.", "context": "bonjour", "answer": "hello", "past": [["Hi", "Hey!"], ("Name?", "Pip.")],
           "persona": "Be brief."}
    assert to_messages(row, "alpaca", ALPACA) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hey!"},
        {"role": "user", "content": "Name?"}, {"role": "assistant", "content": "Pip."},
        {"role": "user", "content": "Translate.\n\nbonjour"}, {"role": "assistant", "content": "hello"},
    ]


@pytest.mark.parametrize("extra", [{}, {"input": None}, {"input": "  "}, {"history": []}, {"history": None}])
def test_an_alpaca_row_without_input_or_history_is_one_exchange(extra):
    row = {"instruction": "Say hi.", "output": "Hi!", **extra}
    assert to_messages(row, "alpaca") == [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi!"}]


@pytest.mark.parametrize("row, message", [
    ({"task": 1, "answer": "a"}, "task must be a string (got int)"),
    ({"task": "t", "answer": ["x"]}, "answer must be a string (got list)"),
    ({"task": "t", "answer": "a", "context": 3}, "context must be a string (got int)"),
    ({"task": "t", "answer": "a", "past": "[not json"}, "'past' is a string that is not a JSON list"),
    ({"task": "t", "answer": "a", "past": {"q": "a"}}, "'past' must be a non-empty list"),
    ({"task": "t", "answer": "a", "past": [["only one"]]}, "past[0] must be a [instruction, output] pair"),
    ({"task": "t", "answer": "a", "past": [["q", "a", "extra"]]}, "past[0] must be a [instruction, output] pair"),
    ({"task": "t", "answer": "a", "past": ["qa"]}, "past[0] must be a [instruction, output] pair"),
    ({"task": "t", "answer": "a", "past": [["q", "a"], [1, "a"]]}, "history[1][0] must be a string (got int)"),
    ({"task": "t", "answer": "a", "past": [["q", None]]}, "history[0][1] must be a string (got NoneType)"),
])  # fmt: skip
def test_a_bad_alpaca_row_names_its_column(row, message):
    with pytest.raises(RowError) as info:
        to_messages(row, "alpaca", ALPACA)
    assert str(info.value) == message


PROMPT_COMPLETION = Mapping(fields={"prompt": "question", "completion": "reply", "system": "persona"})


def test_a_prompt_completion_row_with_text_columns_is_a_user_turn_and_its_reply():
    row = {"question": "2 + 2?", "reply": "4", "persona": "Be exact."}
    assert to_messages(row, "prompt_completion", PROMPT_COMPLETION) == [
        {"role": "system", "content": "Be exact."}, {"role": "user", "content": "2 + 2?"},
        {"role": "assistant", "content": "4"},
    ]


def test_a_prompt_completion_row_with_message_lists_keeps_every_turn():
    row = {"question": [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}],
           "reply": [{"role": "assistant", "content": "A1"}, {"role": "user", "content": "Q2"},
                     {"role": "assistant", "content": "A2"}]}  # fmt: skip
    assert to_messages(row, "prompt_completion", PROMPT_COMPLETION) == [
        {"role": "system", "content": "S"}, {"role": "user", "content": "Q"}, {"role": "assistant", "content": "A1"},
        {"role": "user", "content": "Q2"}, {"role": "assistant", "content": "A2"},
    ]


@pytest.mark.parametrize("row, message", [
    ({"question": 5, "reply": "a"}, "question must be a string (got int)"),
    ({"question": "q", "reply": 5}, "reply must be a string (got int)"),
    ({"question": [5], "reply": "a"}, "question[0] is not an object"),
    ({"question": "q", "reply": ["a"]}, "reply[0] is not an object"),
])  # fmt: skip
def test_a_bad_prompt_completion_row_names_its_column(row, message):
    with pytest.raises(RowError) as info:
        to_messages(row, "prompt_completion", PROMPT_COMPLETION)
    assert str(info.value) == message


# ---------------------------------------------------------------------------------------------- tools


def test_a_call_as_text_is_the_hermes_block_with_unicode_kept():
    from peftsft.data.tools import call_text

    text = call_text({"name": "find_café", "arguments": {"city": "Zürich"}, "id": "ignored"})
    assert text == '<tool_call>\n{"name": "find_café", "arguments": {"city": "Zürich"}}\n</tool_call>'


def test_tool_schemas_are_normalised_to_openai_functions():
    from peftsft.data.tools import normalize_tools

    bare = {"name": "f", "description": "Does f.", "parameters": '{"type": "object", "properties": {"x": {}}}'}
    wrapped = {"type": "function", "function": {"name": "g", "description": 3}}
    assert normalize_tools([bare, wrapped]) == [
        {"type": "function", "function": {"name": "f", "description": "Does f.",
                                          "parameters": {"type": "object", "properties": {"x": {}}}}},
        {"type": "function", "function": {"name": "g", "parameters": {"type": "object", "properties": {}}}},
    ]  # fmt: skip


@pytest.mark.parametrize("item, message", [
    ({"name": ""}, '[0] needs a function name ({"name": ..., "parameters": {...}})'),
    ({"function": {"description": "no name"}}, '[0] needs a function name ({"name": ..., "parameters": {...}})'),
    ("f", '[0] needs a function name ({"name": ..., "parameters": {...}})'),
    ({"name": 3}, '[0] needs a function name ({"name": ..., "parameters": {...}})'),
    ({"name": "f", "parameters": "{not json"}, "[0].parameters is a string that is not JSON"),
    ({"name": "f", "parameters": [1]}, "[0].parameters must be a JSON schema object"),
])  # fmt: skip
def test_a_bad_tool_schema_says_what_is_wrong(item, message):
    from peftsft.data.tools import ToolsError, _schema

    with pytest.raises(ToolsError) as info:
        _schema(item, 0)
    assert str(info.value) == message


# ---------------------------------------------------------------------------------------------- replay


def test_replay_count_is_zero_without_a_share_and_the_share_of_all_rows_with_one():
    from peftsft.data.replay import replay_count

    assert replay_count(24, 0.0) == 0 and replay_count(0, 0.5) == 0
    assert replay_count(8, 0.5) == 8 and replay_count(30, 0.25) == 10 and replay_count(4, 0.8) == 16


def test_a_single_replay_row_sits_in_the_middle_of_the_task_rows():
    from peftsft.data.replay import interleave_order

    assert interleave_order(4, 1).tolist() == [0, 1, 4, 2, 3]
    assert interleave_order(1, 4).tolist() == [1, 2, 0, 3, 4]  # the lone task row at 0.5: after 0.125, 0.375
    assert interleave_order(1, 1).tolist() == [0, 1]
    assert interleave_order(3, 0).tolist() == [0, 1, 2] and interleave_order(0, 2).tolist() == [0, 1]


def chat_row(question: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def test_a_replay_pool_without_rows_says_to_point_at_chat_data(tiny_recipe, tokenizer, tmp_path):
    from peftsft.data.build import build_datasets
    from peftsft.training.recipe import load_recipe

    pool = write_jsonl(tmp_path / "pool.jsonl", ["{broken"])
    recipe = load_recipe(tiny_recipe(), ["data.cache=false", "data.replay=0.2", f"data.replay_path='{pool}'",
                                         "data.on_bad_row=\"skip\""])
    with pytest.raises(UserError) as info:
        build_datasets(tokenizer, recipe.data, 7)
    assert info.value.message == f"[data] replay_path: no rows in {pool}"
    assert info.value.hint == "point replay_path at chat data, or unset it"


def test_replay_stats_report_the_share_asked_and_the_pools_bad_rows(tiny_recipe, tokenizer, tmp_path):
    from peftsft.data.build import build_datasets
    from peftsft.training.recipe import load_recipe

    pool = write_jsonl(tmp_path / "pool.jsonl", [chat_row("What is 1 + 1?", "2."), "{broken", chat_row("Hi?", "Hi!")])
    recipe = load_recipe(tiny_recipe(), ["data.cache=false", "data.replay=0.2", f"data.replay_path='{pool}'",
                                         "data.on_bad_row=\"skip\""])
    train, _, stats = build_datasets(tokenizer, recipe.data, 7)
    assert stats.replay == {"share": 0.2, "pool": str(pool), "pool_rows": 2, "task_rows": 24, "replay_rows": 6,
                            "actual_share": 0.2}
    assert len(train) == 30 and stats.train_rows == 30
    assert stats.bad_rows.total == 1 and stats.bad_rows[0].startswith(f"{pool}:2: malformed JSON")


# ---------------------------------------------------------------------------------------------- data contract


def test_a_contract_example_is_the_first_that_holds_a_needle():
    from peftsft.data.contract import _first

    checks = {"examples": ["a.jsonl:1: supervised text outside any reply", "a.jsonl:2: 1 reply(ies) without '<E>'",
                           "a.jsonl:3: 2 reply(ies) without '<E>'"]}  # fmt: skip
    assert _first(checks, ("without", "does not end")) == "a.jsonl:2: 1 reply(ies) without '<E>'"
    assert _first(checks, ("tool schema",)) == "" and _first({}, ("without",)) == ""


def encoded(text: str, ends: list[int], truncated: bool = False):
    from peftsft.data.masking import Encoded

    starts = [0, *ends[:-1]]
    return Encoded(input_ids=list(range(len(ends))), labels=list(range(len(ends))), truncated=truncated, text=text,
                   offsets=list(zip(starts, ends)))


def test_masking_all_counts_each_reply_closed_by_an_end_of_turn_in_the_tokenized_text():
    from peftsft.data.contract import ReplyChecks

    checks, replies = ReplyChecks(), [{"role": "assistant"}] * 2
    checks._close_all(encoded("u<E>a<E>", [1, 4, 5, 8]), replies, "<E>", "f:1")
    checks._close_all(encoded("u<E>a<E>b<E>", [1, 4, 5, 8, 12]), replies, "<E>", "f:2")  # at most one per reply
    assert (checks.replies, checks.closed, checks.unclosed, checks.examples) == (4, 4, 0, [])


def test_masking_all_notes_replies_whose_end_of_turn_was_not_tokenized():
    from peftsft.data.contract import ReplyChecks

    checks, replies = ReplyChecks(), [{"role": "assistant"}] * 3
    checks._close_all(encoded("u<E>a<E>b<E>", [1, 4, 5, 8, 9]), replies, "<E>", "f:1")  # the text past 9 is cut
    assert (checks.replies, checks.closed, checks.unclosed) == (3, 2, 1)
    assert checks.examples == ["f:1: 1 reply(ies) without '<E>'"]
    checks._close_all(encoded("ab", [1, 2]), replies, None, "f:2")  # no end-of-turn marker: none closed
    checks._close_all(encoded("", []), replies[:1], "<E>", "f:3")  # nothing tokenized
    assert (checks.replies, checks.closed, checks.unclosed) == (7, 2, 5)
    assert checks.examples[1:] == ["f:2: 3 reply(ies) without None", "f:3: 1 reply(ies) without '<E>'"]


def test_masking_all_excuses_a_truncated_sample():
    from peftsft.data.contract import ReplyChecks

    checks = ReplyChecks()
    checks._close_all(encoded("u<E>a", [1, 4, 5], truncated=True), [{"role": "assistant"}] * 2, "<E>", "f:1")
    assert (checks.replies, checks.closed, checks.unclosed, checks.examples) == (2, 1, 0, [])


# ---------------------------------------------------------------------------------------------- held-out rows


def persona_data(tmp_path, n: int = 12):
    return write_jsonl(tmp_path / "train.jsonl", [chat_row(f"Question {i}?", f"Answer {i}.") for i in range(n)])


def recipe_for(data: DataSection, seed: int = 7):
    return SimpleNamespace(data=data, training=SimpleNamespace(seed=seed))


def questions(conversations) -> list[str]:
    return [c[0]["content"] for c in conversations]


def test_held_out_rows_are_the_given_file_read_with_the_recipes_bad_row_rule(tmp_path):
    from peftsft.training.held_out import held_out_conversations

    path = write_jsonl(tmp_path / "held.jsonl", [chat_row("A?", "a."), "{broken", chat_row("B?", "b.")])
    recipe = recipe_for(DataSection(on_bad_row="skip"))
    conversations, where = held_out_conversations(recipe, str(path))
    assert questions(conversations) == ["A?", "B?"] and where == str(path)
    with pytest.raises(UserError, match=r"held\.jsonl:2: malformed JSON"):
        held_out_conversations(None, str(path))  # no recipe: a bad row fails
    good = write_jsonl(tmp_path / "good.jsonl", [chat_row("C?", "c.")])
    assert held_out_conversations(None, str(good)) == ([chat_row("C?", "c.")["messages"]], str(good))


def test_held_out_rows_are_the_recipes_eval_file(tmp_path):
    from peftsft.training.held_out import held_out_conversations

    train, held = persona_data(tmp_path), write_jsonl(tmp_path / "eval.jsonl", [chat_row("E?", "e.")])
    recipe = recipe_for(DataSection(datasets=[DatasetSpec(path=str(train))], eval_path=str(held)))
    conversations, where = held_out_conversations(recipe, None)
    assert questions(conversations) == ["E?"] and where == str(held)
    held.unlink()
    with pytest.raises(UserError) as info:
        held_out_conversations(recipe, None)
    assert info.value.message == f"the run's eval_path is gone: {held}" and info.value.hint == "pass --data FILE.jsonl"


def test_held_out_rows_are_the_seeded_eval_split_of_the_training_rows(tmp_path):
    from peftsft.training.held_out import held_out_conversations

    train = persona_data(tmp_path, 12)
    recipe = recipe_for(DataSection(datasets=[DatasetSpec(path=str(train))], eval_fraction=0.25), seed=7)
    conversations, where = held_out_conversations(recipe, None)
    order = [f"Question {i}?" for i in range(12)]
    random.Random(7).shuffle(order)
    assert questions(conversations) == order[:3] and where == "eval_fraction 0.25 of the training data"
    other, _ = held_out_conversations(recipe_for(recipe.data, seed=8), None)
    assert questions(other) != order[:3]
    tiny = recipe_for(DataSection(datasets=[DatasetSpec(path=str(train))], eval_fraction=0.01))
    assert len(held_out_conversations(tiny, None)[0]) == 1  # at least one row


def test_without_held_out_data_eval_says_to_pass_a_file(tmp_path):
    from peftsft.training.held_out import held_out_conversations

    no_eval = recipe_for(DataSection(datasets=[DatasetSpec(path=str(persona_data(tmp_path)))]))
    for recipe in (None, no_eval):
        with pytest.raises(UserError) as info:
            held_out_conversations(recipe, None)
        assert info.value.message == "no held-out data to evaluate on"
        assert info.value.hint == "pass --data FILE.jsonl (chat rows with a reference answer)"


# ---------------------------------------------------------------------------------------------- resume


def test_recipe_differences_are_dotted_keys_in_order_with_both_values():
    from peftsft.training.resume import recipe_differences

    old = {"a": 1, "b": {"lr": 0.1, "deep": {"x": 1}}, "gone": True, "same": {"k": 1}, "table": {"x": 1}}
    new = {"a": 2, "b": {"lr": 0.2, "deep": {"x": 2}}, "added": "v", "same": {"k": 1}, "table": 5}
    assert recipe_differences(old, new) == [
        "a: 1 → 2", "added: None → 'v'", "b.deep.x: 1 → 2", "b.lr: 0.1 → 0.2", "gone: True → None",
        "table: {'x': 1} → 5",
    ]
    assert recipe_differences({"x": {"y": 1}}, {"x": {}}) == ["x.y: 1 → None"]
    assert recipe_differences(old, old) == []


# ---------------------------------------------------------------------------------------------- answer metrics


def test_answer_metrics_are_means_over_the_answers():
    from peftsft.training.scoring import answer_metrics

    metrics = answer_metrics(["Paris", "the cat sat", "It is Rome."], ["paris", "a cat sat down", "Rome"])
    assert metrics["exact_match"] == pytest.approx(1 / 3)
    assert metrics["contains_reference"] == pytest.approx(2 / 3)
    # the cat sat | a cat sat down: 2 common words, precision 2/3, recall 2/4; It is Rome | Rome: 1/3 and 1/1
    assert metrics["token_f1"] == pytest.approx((1 + 4 / 7 + 1 / 2) / 3)
    assert metrics["rouge_l"] == pytest.approx((1 + 4 / 7 + 1 / 2) / 3)
    assert 0 < metrics["bleu"] < 100 and set(metrics) == {"exact_match", "contains_reference", "token_f1", "rouge_l",
                                                          "bleu"}  # fmt: skip
    assert answer_metrics([], []) == {}


def test_bleu_of_short_exact_answers_is_full_despite_having_no_four_grams():
    from peftsft.training.scoring import answer_metrics

    assert answer_metrics(["Paris is nice", "Rome"], ["Paris is nice", "Rome"])["bleu"] == pytest.approx(100.0)


def test_the_replay_rows_drawn_follow_the_seed(tiny_recipe, tokenizer, tmp_path):
    from peftsft.data.build import build_datasets
    from peftsft.training.recipe import load_recipe

    pool = write_jsonl(tmp_path / "pool.jsonl", [chat_row(f"What is {i} + 1?", f"{i + 1}.") for i in range(12)])
    recipe = load_recipe(tiny_recipe(), ["data.cache=false", "data.replay=0.2", f"data.replay_path='{pool}'"])
    drawn = [[tuple(ids) for ids in build_datasets(tokenizer, recipe.data, seed)[0]["input_ids"]] for seed in (7, 7, 8)]
    assert drawn[0] == drawn[1] != drawn[2]
