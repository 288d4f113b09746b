"""Unit tests of rows read as chat messages: format detection, each parser's output and error messages, tool
schemas and tool calls normalised, and calls to functions a row does not offer refused."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from peftsft.data.formats import Mapping, RowError, detect_format, row_tools, to_messages
from peftsft.data.tools import ToolsError, normalize_tool_calls, normalize_tools

USER, REPLY = {"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}


# ---------------------------------------------------------------------------------------------- tools


def test_a_bare_schema_becomes_an_openai_function_with_default_parameters():
    assert normalize_tools({"name": "f", "description": "does f"}) == [
        {"type": "function", "function": {"name": "f", "description": "does f",
                                          "parameters": {"type": "object", "properties": {}}}}]
    assert normalize_tools([{"type": "function", "function": {"name": "g", "description": 3,
                                                              "parameters": '{"type": "object"}'}}]) == [
        {"type": "function", "function": {"name": "g", "parameters": {"type": "object"}}}]
    assert normalize_tools(np.array([{"name": "h", "parameters": {}}])) == [
        {"type": "function", "function": {"name": "h", "parameters": {}}}]
    assert normalize_tools(None) == [] and normalize_tools("") == []


@pytest.mark.parametrize(("value", "message"), [
    ("[", "is not valid JSON (Expecting value: line 1 column 2 (char 1))"),
    (3, "must be a list of tool schemas (got int)"),
    ([{"name": "f"}, {"name": ""}], '[1] needs a function name ({"name": ..., "parameters": {...}})'),
    (["f"], '[0] needs a function name ({"name": ..., "parameters": {...}})'),
    ([{"function": {"name": 5}}], '[0] needs a function name ({"name": ..., "parameters": {...}})'),
    ([{"name": "f", "parameters": "{"}], "[0].parameters is a string that is not JSON"),
    ([{"name": "f", "parameters": [1]}], "[0].parameters must be a JSON schema object"),
])
def test_a_bad_tool_schema_says_which_and_what(value, message):
    with pytest.raises(ToolsError) as caught:
        normalize_tools(value)
    assert str(caught.value) == message


def test_calls_are_openai_calls_with_their_json_arguments_parsed():
    assert normalize_tool_calls('{"name": "f", "arguments": "{\\"x\\": 1}"}') == [
        {"type": "function", "function": {"name": "f", "arguments": {"x": 1}}}]
    assert normalize_tool_calls([{"type": "function", "function": {"name": "g", "arguments": "not json"}},
                                 {"name": "h", "parameters": {"y": 2}}, {"name": "i"}]) == [
        {"type": "function", "function": {"name": "g", "arguments": "not json"}},
        {"type": "function", "function": {"name": "h", "arguments": {"y": 2}}},
        {"type": "function", "function": {"name": "i", "arguments": {}}}]


@pytest.mark.parametrize(("calls", "message"), [
    ("{", "is a string that is not JSON"),
    ([], "must be a non-empty list of calls"),
    (5, "must be a non-empty list of calls"),
    ([{"name": "f"}, {"arguments": {}}], "[1] needs a function name"),
    (["f"], "[0] needs a function name"),
])
def test_bad_calls_say_which_and_what(calls, message):
    with pytest.raises(ToolsError) as caught:
        normalize_tool_calls(calls)
    assert str(caught.value) == message


def test_a_rows_tools_column_or_legacy_functions_column_are_its_schemas():
    schema = {"type": "function", "function": {"name": "f", "parameters": {}}}
    assert row_tools({"tools": [{"name": "f", "parameters": {}}]}) == [schema]
    assert row_tools({"functions": [{"name": "f", "parameters": {}}]}) == [schema]
    assert row_tools({"fns": [{"name": "f", "parameters": {}}], "functions": "x"}, Mapping(fields={"tools": "fns"})) == [schema]
    assert row_tools({"messages": []}) == []
    with pytest.raises(RowError, match=r"^'functions' must be a list of tool schemas \(got int\)$"):
        row_tools({"functions": 3})


def test_a_reply_calling_a_function_the_row_does_not_offer_is_refused():
    row = {"messages": [USER, {"role": "assistant", "content": None, "tool_calls": [{"name": "g"}]}],
           "tools": [{"name": "f"}, {"name": "h"}]}
    with pytest.raises(RowError) as caught:
        to_messages(row, "messages")
    assert str(caught.value) == ("a reply calls 'g', which the row's tools do not offer (f, h): add its schema to the "
                                 "row's tools or fix the call's name")
    row["tools"] = [{"name": "g"}]
    chat = to_messages(row, "messages")
    assert chat.tools[0]["function"]["name"] == "g"
    assert chat[1] == {"role": "assistant", "content": "",
                       "tool_calls": [{"type": "function", "function": {"name": "g", "arguments": {}}}]}


# ---------------------------------------------------------------------------------------------- formats


@pytest.mark.parametrize(("row", "fmt"), [
    ({"messages": [USER, REPLY]}, "messages"),
    ({"messages": [{"from": "human", "value": "Q?"}]}, "sharegpt"),
    ({"conversations": [USER]}, "messages"),
    ({"conversations": [{"from": "human", "value": "Q?"}]}, "sharegpt"),
    ({"conversations": [["x"]]}, "sharegpt"),
    ({"messages": []}, "messages"),
    ({"instruction": "i", "output": "o"}, "alpaca"),
    ({"prompt": "p", "completion": "c"}, "prompt_completion"),
    ({"prompt": "p", "completion": "c", "label": 1}, "prompt_completion"),
    ({"text": "t"}, "text"),
])
def test_the_format_is_told_by_the_rows_columns(row, fmt):
    assert detect_format(row) == fmt


def test_mapped_columns_tell_the_format():
    mapping = Mapping(fields={"messages": "chat", "role": "speaker"})
    assert detect_format({"chat": [{"speaker": "user", "content": "Q?"}]}, mapping) == "messages"
    mapping = Mapping(fields={"from": "who", "value": "said"})
    assert detect_format({"messages": [{"who": "human", "said": "Q?"}]}, mapping) == "sharegpt"


def test_preference_rows_and_unknown_rows_are_refused_saying_why():
    with pytest.raises(RowError) as caught:
        detect_format({"prompt": "p", "completion": "c", "label": True})
    assert str(caught.value) == ('a row of prompt + completion + a true/false label (unpaired_preference) is preference '
                                 'data, not chat data: set task = "preference" in the recipe')
    with pytest.raises(RowError) as caught:
        detect_format({"prompt": "p", "chosen": "a", "rejected": "b"})
    assert str(caught.value) == ('a row of chosen + rejected answers (preference) is preference data, not chat data: '
                                 'set task = "preference" in the recipe')
    with pytest.raises(RowError) as caught:
        detect_format({"chosen": "a", "q": 1})
    assert str(caught.value) == (
        "cannot tell the format of a row with keys ['chosen', 'q']; expected 'messages' (OpenAI), 'conversations' "
        "(ShareGPT), 'instruction' + 'output' (Alpaca), 'prompt' + 'completion', or 'text' — or set format and "
        "fields for this dataset in the recipe")


def test_an_unknown_format_or_a_missing_column_is_refused():
    with pytest.raises(RowError, match=r"^unsupported format 'xml'$"):
        to_messages({"text": "t"}, "xml")
    with pytest.raises(RowError) as caught:
        to_messages({"q": "t"}, "alpaca", Mapping(fields={"instruction": "q"}))
    assert str(caught.value) == "missing column 'output' (alpaca format); the row has ['q']"


def test_plain_text_is_returned_as_it_is_and_empty_text_refused():
    assert to_messages({"body": " t "}, "auto", Mapping(fields={"text": "body"})) == " t "
    with pytest.raises(RowError, match=r"^'body' is empty$"):
        to_messages({"body": "  "}, "text", Mapping(fields={"text": "body"}))


def test_sharegpt_turns_map_their_roles_and_keep_tool_names():
    row = {"conversations": [{"from": "human", "value": "Q?"}, {"from": "gpt", "value": "A."},
                             {"from": "observation", "value": "r", "name": "f", "tool_call_id": 7}]}
    row["conversations"].append({"from": "human", "value": "more?"})
    row["conversations"].append({"from": "bot", "value": "B."})
    assert to_messages(row, "auto") == [USER, REPLY, {"role": "tool", "content": "r", "name": "f"},
                                        {"role": "user", "content": "more?"}, {"role": "assistant", "content": "B."}]


def test_a_sharegpt_function_call_turn_becomes_a_structured_call():
    row = {"conversations": [{"from": "human", "value": "Q?"},
                             {"from": "function_call", "value": '{"name": "f", "arguments": {"x": 1}}'}],
           "tools": '[{"name": "f"}]'}
    assert to_messages(row, "sharegpt")[1] == {
        "role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {"name": "f",
                                                                                             "arguments": {"x": 1}}}]}
    row["conversations"][1]["value"] = "plain words"
    assert to_messages(row, "sharegpt")[1] == {"role": "assistant", "content": "plain words"}


def test_openai_legacy_function_call_becomes_a_tool_call():
    row = {"messages": [USER, {"role": "assistant", "content": None, "function_call": {"name": "f", "arguments": "{}"}},
                        {"role": "function", "content": "out", "name": "f"}, REPLY]}
    assert to_messages(row, "messages")[1:3] == [
        {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {"name": "f",
                                                                                             "arguments": {}}}]},
        {"role": "tool", "content": "out", "name": "f"}]


@pytest.mark.parametrize(("messages", "message"), [
    ([USER, "x"], "messages[1] is not an object"),
    ([USER, {"role": "robot", "content": "x"}],
     "messages[1].role: unknown role 'robot'; expected one of system, user, assistant, tool — map it with roles = "
     "{...} in the recipe"),
    ([USER, {"role": "assistant", "content": 5}], "messages[1].content must be a string (got int)"),
    ([USER, {"role": "assistant", "content": None, "tool_calls": [{"arguments": {}}]}],
     "messages[1].tool_calls: [0] needs a function name"),
    ("[1,", "'messages' is a string that is not a JSON list"),
    ([], "'messages' must be a non-empty list"),
    ([REPLY], "the conversation starts with an assistant reply: no user turn before it to answer"),
    ([USER], "the conversation has no assistant turn to learn from"),
])
def test_a_bad_message_list_says_which_turn_and_what(messages, message):
    with pytest.raises(RowError) as caught:
        to_messages({"messages": messages}, "messages")
    assert str(caught.value) == message


def test_content_parts_are_joined_and_a_system_column_goes_first():
    row = {"messages": '[{"role": "user", "content": [{"type": "text", "text": "Q"}, {"type": "text", "text": "?"}]},'
                       ' {"role": "assistant", "content": "A."}]', "sys": "Be brief."}
    assert to_messages(row, "messages", Mapping(fields={"system": "sys"})) == [
        {"role": "system", "content": "Be brief."}, USER, REPLY]
    row["sys"] = "  "
    assert to_messages(row, "messages", Mapping(fields={"system": "sys"})) == [USER, REPLY]
    own = {"messages": [{"role": "system", "content": "Own."}, USER, REPLY], "system": "Other."}
    assert to_messages(own, "messages")[0] == {"role": "system", "content": "Own."}


def test_alpaca_history_input_and_system_make_the_conversation():
    row = {"instruction": "Do", "input": "this", "output": "Done.", "history": [["Hi", "Hello"]], "system": "S"}
    assert to_messages(row, "alpaca") == [
        {"role": "system", "content": "S"}, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Do\n\nthis"}, {"role": "assistant", "content": "Done."}]
    assert to_messages({"instruction": "Do", "input": "  ", "output": "Done."}, "alpaca")[0]["content"] == "Do"
    with pytest.raises(RowError, match=r"^history\[0\] must be a \[instruction, output\] pair$"):
        to_messages({"instruction": "Do", "output": "Done.", "history": [["a"]]}, "alpaca")
    with pytest.raises(RowError, match=r"^history\[0\]\[1\] must be a string \(got int\)$"):
        to_messages({"instruction": "Do", "output": "Done.", "history": [["a", 1]]}, "alpaca")


def test_a_prompt_completion_row_of_text_or_turns():
    assert to_messages({"prompt": "Q?", "completion": "A."}, "prompt_completion") == [USER, REPLY]
    assert to_messages({"prompt": [USER], "completion": [REPLY], "system": "S"}, "prompt_completion") == [
        {"role": "system", "content": "S"}, USER, REPLY]
    with pytest.raises(RowError, match=r"^ask must be a string \(got int\)$"):
        to_messages({"ask": 1, "completion": "A."}, "prompt_completion", Mapping(fields={"prompt": "ask"}))
    with pytest.raises(RowError, match=r"^'said' must be a non-empty list$"):
        to_messages({"prompt": "Q?", "said": []}, "prompt_completion", Mapping(fields={"completion": "said"}))


# ---------------------------------------------------------------------------------------------- previews


class PieceTokenizer:
    """Token i decodes to PIECES[i]: text that rich would read as markup, emoji or numbers to highlight."""

    PIECES = [":smile: ", "[b]1[/b] ", "2 ", "x"]

    def decode(self, ids):
        return "".join(self.PIECES[i] for i in ids)


def preview_console():
    from rich.console import Console

    return Console(record=True, width=120, force_terminal=True, color_system="standard")


def test_a_sample_preview_counts_its_tokens_and_marks_the_supervised_ones_literally():
    from peftsft.data.preview import print_sample

    console = preview_console()
    sample = {"input_ids": [0, 1, 2, 3, 3], "labels": [-100, 1, 2, -100, 3]}
    print_sample(console, PieceTokenizer(), sample, "train 1", markers=True)
    ansi = console.export_text(styles=True, clear=False)
    assert ansi.splitlines()[1] == ":smile: [[[b]1[/b] 2 ]]x[[x]]"  # no markup, emoji or highlighting
    assert console.export_text() == "── train 1 (5 tokens, 3 supervised)\n:smile: [[[b]1[/b] 2 ]]x[[x]]\n"


def test_a_sample_preview_in_a_terminal_colours_the_supervised_tokens():
    from peftsft.data.preview import print_sample

    console = preview_console()
    print_sample(console, PieceTokenizer(), {"input_ids": [0, 1, 3], "labels": [-100, 1, 3]}, "t", markers=False)
    ansi = console.export_text(styles=True, clear=False)
    assert ansi.splitlines()[0].startswith("\x1b[1m── t\x1b[0m")
    assert ansi.splitlines()[1] == "\x1b[2m:smile: \x1b[0m\x1b[1;32m[b]1[/b] x\x1b[0m"
    assert console.export_text().splitlines() == ["── t (3 tokens, 2 supervised)", ":smile: [b]1[/b] x"]


# ---------------------------------------------------------------------------------------------- whole datasets


def chat(question: str, column: str = "messages") -> dict:
    return {column: [{"role": "user", "content": question}, {"role": "assistant", "content": "A."}]}


def test_conversations_are_read_per_path_with_their_datasets_mapping_and_other_files_like_the_first(tmp_path):
    from peftsft.core.config import DatasetSpec, DataSection
    from peftsft.data.build import DataStats, load_conversations
    from tests.conftest import write_jsonl

    mapped = write_jsonl(tmp_path / "mapped.jsonl", [chat("M1?", "chat"), chat("M2?", "chat")])
    plain = write_jsonl(tmp_path / "plain.jsonl", [chat("P?")])
    held = write_jsonl(tmp_path / "held.jsonl", [chat("H?", "chat")])
    data = DataSection(datasets=[DatasetSpec(path=str(mapped), fields={"messages": "chat"}),
                                 DatasetSpec(path=str(plain))])
    stats = DataStats()
    conversations = load_conversations([str(plain), str(held), str(mapped)], data, stats)
    assert [c[0]["content"] for c in conversations] == ["P?", "H?", "M1?", "M2?"]
    assert conversations[0] == chat("P?")["messages"] and stats.rows == 4
    assert stats.sources == []  # read for evaluation: not a training source


def stats_for_preview(**changes):
    from peftsft.data.build import DataStats
    from peftsft.data.rows import BadRows

    stats = DataStats(rows=12, train_rows=9, eval_rows=2, truncated=1, dropped_unsupervised=1, tokens=400,
                      supervised_tokens=100, template={"name": "chatml", "end_of_turn": "<|im_end|>"}, cache="miss",
                      sources=[{"path": "[a].jsonl", "format": "messages", "rows": 12, "bad": 1, "train": 9}],
                      lengths={"min": 10, "p50": 20, "max": 40, "histogram": [2, 0, 4]},
                      packing={"enabled": True, "rows": 3, "efficiency": 0.8123},
                      bad_rows=BadRows([f"f.jsonl:{i}: bad [x]" for i in range(7)]))
    for key, value in changes.items():
        setattr(stats, key, value)
    return stats


def test_data_stats_show_sources_lengths_shares_packing_template_cache_and_bad_rows():
    from peftsft.data.preview import print_stats

    console = preview_console()
    print_stats(console, stats_for_preview())
    lines = [line.rstrip() for line in console.export_text().splitlines()]
    assert lines[:3] == ["                 data", " dataset    format    rows  bad  train", " [a].jsonl  messages  12    1    9"]
    assert lines[3:13] == [
        " samples            9 train, 2 eval (12 rows read)",
        " bad rows           7 skipped",
        " tokens per sample  min 10, p50 20, max 40",
        " length histogram   10 ▅ █ 40 tokens",
        " truncated          1 (cut at max_length)",
        " dropped            1 with nothing supervised",
        " supervised share   25.0% of 400 tokens",
        " packing            on: 3 rows, 81.2% efficiency (non-pad share of max_length rows)",
        " template           chatml (end of turn '<|im_end|>')",
        " cache              miss"]
    assert lines[13:] == [f"skipped f.jsonl:{i}: bad [x]" for i in range(5)]


def test_data_stats_without_bad_rows_lengths_or_packing_say_so_and_show_the_replay():
    from peftsft.data.preview import print_stats
    from peftsft.data.rows import BadRows

    console = preview_console()
    replay = {"replay_rows": 3, "actual_share": 0.25, "pool": "pool.jsonl"}
    print_stats(console, stats_for_preview(bad_rows=BadRows(), lengths={}, packing={}, tokens=0, supervised_tokens=0,
                                           replay=replay))
    lines = [line.rstrip() for line in console.export_text().splitlines()]
    assert " bad rows           none" in lines and " length histogram   n/a" in lines
    assert " packing            n/a" in lines and " supervised share   0.0% of 0 tokens" in lines
    assert " tokens per sample" in lines and " cache              miss" in lines
    assert lines[-1] == " replay             3 general rows (25.0% of training) from pool.jsonl"


def test_packing_off_says_what_packing_would_give():
    from peftsft.data.preview import _packing_line

    assert _packing_line({"enabled": False, "rows": 2, "efficiency": 0.5}) == (
        "off (packing would give 2 rows, 50.0% efficiency (non-pad share of max_length rows))")


def test_a_sparkline_scales_counts_to_the_tallest_bar():
    from peftsft.data.preview import _sparkline

    assert _sparkline([1, 7, 0, 14], 3, 9) == "3 ▁▅ █ 9 tokens"
    assert _sparkline([], 3, 9) == "n/a"


class Columns(dict):
    """A dataset's columns, as much of a `datasets.Dataset` as the counts read."""

    @property
    def column_names(self):
        return list(self)

    def __len__(self):
        return len(next(iter(self.values())))


def test_preference_counts_say_pairs_or_kto_answers_and_what_the_cut_dropped():
    from peftsft.data.preview import preference_counts

    pairs = Columns({"prompt_ids": [[1]] * 3})
    assert preference_counts(SimpleNamespace(checks={}), pairs) == "3 pairs"
    kto = Columns({"label": [True, False, True]})
    assert preference_counts(SimpleNamespace(checks={"identical_after_cut": 2}), kto) == (
        "2 desirable and 1 undesirable answers (2 dropped: max_length cut both answers to the same tokens)")


# ---------------------------------------------------------------------------------------------- splitting and mixing


def test_an_eval_file_is_read_like_the_first_dataset_without_its_counts():
    from peftsft.core.config import DatasetSpec, DataSection
    from peftsft.data.build import eval_spec

    first = DatasetSpec(path="a.jsonl", format="alpaca", fields={"output": "out"}, samples=5)
    spec = eval_spec(DataSection(datasets=[first, DatasetSpec(path="b.jsonl")]), "held.jsonl")
    assert (spec.path, spec.format, spec.fields, spec.samples, spec.weight) == ("held.jsonl", "alpaca",
                                                                                {"output": "out"}, None, None)
    assert eval_spec(DataSection(datasets=[]), "held.jsonl") == DatasetSpec(path="held.jsonl")


def test_the_eval_split_is_the_eval_files_rows_or_a_seeded_fraction():
    import random

    from peftsft.core.config import DataSection
    from peftsft.data.build import split

    items = SimpleNamespace(source=np.array([0, 0, 1, -1, 0, 1, -1, 0, 0, 0]))
    train, evals = split(items, DataSection(eval_path="held.jsonl"), 3)
    assert train.tolist() == [0, 1, 2, 4, 5, 7, 8, 9] and evals.tolist() == [3, 6]
    train, evals = split(items, DataSection(eval_fraction=0.0), 3)
    assert train.tolist() == [0, 1, 2, 4, 5, 7, 8, 9] and evals.tolist() == []
    train, evals = split(items, DataSection(eval_fraction=0.25), 3)
    order = [0, 1, 2, 4, 5, 7, 8, 9]
    permutation = list(range(8))
    random.Random(3).shuffle(permutation)
    assert evals.tolist() == [order[i] for i in permutation[:2]] and train.tolist() == [order[i] for i in permutation[2:]]
    assert len(split(items, DataSection(eval_fraction=0.01), 3)[1]) == 1


def test_rows_are_mixed_per_dataset_by_samples_or_weight_and_counted():
    from peftsft.core.config import DatasetSpec
    from peftsft.data.build import DataStats, mix

    source = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    specs = [DatasetSpec(path="a", samples=5), DatasetSpec(path="b", weight=0.5), DatasetSpec(path="c")]
    stats = DataStats(sources=[{}, {}, {}])
    mixed = mix(np.arange(9), source, specs, 4, stats)
    assert [s["train"] for s in stats.sources] == [5, 1, 4]
    assert mixed[:3].tolist() == [0, 1, 2] and set(mixed[3:5].tolist()) <= {0, 1, 2}  # a whole copy, then 2 drawn
    assert mixed[5] in (3, 4) and mixed[6:].tolist() == [5, 6, 7, 8]
    assert mix(np.arange(9), source, specs, 4, DataStats(sources=[{}, {}, {}])).tolist() == mixed.tolist()
    assert mix(np.arange(9), source, [], 4, DataStats()).tolist() == []


def test_drawing_more_than_a_group_repeats_it_whole_then_a_seeded_remainder():
    import random

    from peftsft.data.build import draw

    group = np.array([10, 11, 12])
    assert draw(group, 3, random.Random(1)).tolist() == [10, 11, 12]
    picked = draw(group, 7, random.Random(1))
    rest = random.Random(1).sample(range(3), 1)
    assert picked.tolist() == [10, 11, 12, 10, 11, 12, group[rest[0]]]
    assert draw(group, 2, random.Random(5)).tolist() == [group[i] for i in random.Random(5).sample(range(3), 2)]
    assert draw(group[:0], 4, random.Random(1)).tolist() == []


def test_an_empty_training_set_says_where_the_rows_went():
    from peftsft.core.errors import UserError
    from peftsft.data.build import DataStats, refuse_empty
    from peftsft.data.rows import BadRows

    stats = DataStats(rows=5, bad_rows=BadRows(["x"], total=3), dropped_unsupervised=2)
    refuse_empty(1, stats)
    with pytest.raises(UserError) as caught:
        refuse_empty(0, stats)
    assert caught.value.message == "the training dataset is empty after filtering"
    assert caught.value.hint == ("5 rows read, 3 bad, 2 with nothing to learn (no reply token left after truncation: "
                                 "raise [data] max_length?)")


def test_length_summary_gives_percentiles_mean_and_a_histogram():
    from peftsft.data.build import histogram, length_summary

    assert length_summary(np.array([], dtype=np.int64)) == {}
    summary = length_summary(np.array([30, 10, 20, 40, 10, 11, 12, 13, 14, 100]))
    assert summary == {"min": 10, "p50": 14, "p90": 100, "max": 100, "mean": 26.0,
                       "histogram": [6, 1, 1, 1, 0, 0, 0, 0, 0, 1]}
    assert histogram(np.array([5, 5, 5]), bins=4) == [3, 0, 0, 0]
    assert length_summary(np.array([7]))["mean"] == 7.0 and length_summary(np.array([1, 2]))["mean"] == 1.5


def test_data_stats_round_trip_through_their_dict_with_every_bad_row_counted():
    from peftsft.data.build import DataStats
    from peftsft.data.rows import BadRows

    stats = DataStats(rows=3, tokens=8, supervised_tokens=3, bad_rows=BadRows([f"b{i}" for i in range(12)], total=40))
    out = stats.as_dict()
    assert out["bad_rows"] == 40 and out["bad_row_examples"] == [f"b{i}" for i in range(10)]
    assert out["supervised_share"] == 0.375 and DataStats().as_dict()["supervised_share"] == 0.0
    back = DataStats.from_dict({**out, "bad_rows": list(stats.bad_rows), "bad_total": 40, "unknown": 1})
    assert back.rows == 3 and list(back.bad_rows) == list(stats.bad_rows) and back.bad_rows.total == 40
    assert DataStats.from_dict({"bad_rows": ["a", "b"]}).bad_rows.total == 2


# ---------------------------------------------------------------------------------------------- items


def test_rows_of_a_dataset_are_parsed_counted_and_their_bad_rows_skipped(tmp_path):
    from peftsft.core.config import DatasetSpec, DataSection
    from peftsft.data.build import DataStats
    from peftsft.data.items import load_items
    from tests.conftest import write_jsonl

    path = write_jsonl(tmp_path / "a.jsonl", [chat("Q1?"), "{broken", {"messages": [REPLY]}, chat("Q2?")])
    stats = DataStats(rows=1)
    items = load_items(DatasetSpec(path=str(path)), 2, DataSection(on_bad_row="skip"), stats)
    assert [(i.content[0]["content"], i.where, i.source) for i in items] == [("Q1?", f"{path}:1", 2),
                                                                              ("Q2?", f"{path}:4", 2)]
    assert stats.rows == 4 and stats.bad_rows.total == 2
    assert stats.bad_rows[1] == (f"{path}:3: the conversation starts with an assistant reply: no user turn before "
                                 "it to answer")
    assert stats.sources == [{"path": str(path), "format": "messages (detected)", "rows": 3, "bad": 2}]
    load_items(DatasetSpec(path=str(path), format="messages"), -1, DataSection(on_bad_row="skip"), stats)
    assert len(stats.sources) == 1 and stats.rows == 7


def test_a_given_format_is_kept_and_a_bad_row_fails_by_default(tmp_path):
    from peftsft.core.config import DatasetSpec, DataSection
    from peftsft.core.errors import UserError
    from peftsft.data.build import DataStats
    from peftsft.data.items import load_items
    from tests.conftest import write_jsonl

    path = write_jsonl(tmp_path / "a.jsonl", [chat("Q1?")])
    stats = DataStats()
    load_items(DatasetSpec(path=str(path), format="messages"), 0, DataSection(), stats)
    assert stats.sources == [{"path": str(path), "format": "messages", "rows": 1, "bad": 0}]
    bad = write_jsonl(tmp_path / "b.jsonl", [{"messages": [REPLY]}])
    with pytest.raises(UserError, match=rf"^{bad}:1: the conversation starts with an assistant reply"):
        load_items(DatasetSpec(path=str(bad)), 0, DataSection(), DataStats())


def test_a_row_value_json_cannot_hold_names_the_row():
    from peftsft.core.errors import UserError
    from peftsft.data.items import _json

    assert _json("tëxt", "f:1") == '"tëxt"' and _json([USER], "f:1") == '[{"role": "user", "content": "Q?"}]'
    with pytest.raises(UserError, match=r"^f:2: a value in this row cannot be stored as JSON: "):
        _json([{"role": "user", "content": b"x"}], "f:2")


def write_samples(path, first_ids):
    import pyarrow as pa

    from peftsft.data.arrow import SAMPLES, writing

    with writing(path, SAMPLES) as writer:
        writer.write_table(pa.Table.from_pylist([{"input_ids": [i], "labels": [i]} for i in first_ids], SAMPLES))


def test_replay_samples_are_interleaved_evenly_among_the_task_samples_in_one_file(tmp_path):
    from peftsft.data.arrow import open_files
    from peftsft.data.build import interleave_files

    write_samples(tmp_path / "t0.arrow", [0, 1])
    write_samples(tmp_path / "t1.arrow", [2, 3, 4, 5])
    write_samples(tmp_path / "r0.arrow", [100, 101])
    names = interleave_files(tmp_path, ["t0.arrow", "t1.arrow"], ["r0.arrow"], 6, 2)
    assert names == ["train-mixed.arrow"]
    mixed = open_files([tmp_path / "train-mixed.arrow"])
    assert [row[0] for row in mixed["input_ids"]] == [0, 1, 100, 2, 3, 4, 101, 5]
    assert mixed["labels"] == mixed["input_ids"]


def test_tool_rows_need_a_template_that_renders_tool_schemas(monkeypatch):
    from peftsft.core.errors import UserError
    from peftsft.data import build

    items = SimpleNamespace(has_tools=np.array([False, True, True, False]), where=lambda p: f"f.jsonl:{p + 1}")
    monkeypatch.setattr(build, "supports_tool_schemas", lambda tokenizer: tokenizer == "TOOLS")
    build.refuse_dropped_tools("TOOLS", items, np.array([0, 1, 2]), "chatml")
    build.refuse_dropped_tools("PLAIN", items, np.array([0, 3]), "chatml")
    with pytest.raises(UserError) as caught:
        build.refuse_dropped_tools("PLAIN", items, np.array([3, 2, 1]), "chatml")
    assert caught.value.message == ("f.jsonl:3: 2 row(s) offer tools, but the chat template (chatml) does not render "
                                    "tool schemas: they would be dropped from every prompt")
    assert caught.value.hint == ('set [data] template = "hermes" (ChatML with <tool_call> blocks), or a .jinja file '
                                 "that uses `tools`")


ALPACA = Mapping(fields={"instruction": "ask", "input": "ctx", "output": "out", "history": "past"})


@pytest.mark.parametrize(("row", "message"), [
    ({"ask": 1, "out": "o"}, "ask must be a string (got int)"),
    ({"ask": "i", "ctx": 2, "out": "o"}, "ctx must be a string (got int)"),
    ({"ask": "i", "out": None}, "out must be a string (got NoneType)"),
    ({"ask": "i", "out": "o", "past": "nope"}, "'past' is a string that is not a JSON list"),
    ({"ask": "i", "out": "o", "past": [[3, "a"]]}, "history[0][0] must be a string (got int)"),
])
def test_a_bad_mapped_alpaca_row_names_the_column(row, message):
    with pytest.raises(RowError) as caught:
        to_messages(row, "alpaca", ALPACA)
    assert str(caught.value) == message


def test_an_alpaca_row_keeps_every_history_pair_and_a_missing_input_adds_nothing():
    row = {"ask": "Do", "out": "Done.", "past": [["H1", "A1"], ["H2", "A2"]]}
    assert [m["content"] for m in to_messages(row, "alpaca", ALPACA)] == ["H1", "A1", "H2", "A2", "Do", "Done."]


@pytest.mark.parametrize(("row", "message"), [
    ({"ask": ["x"], "said": "A."}, "ask[0] is not an object"),
    ({"ask": "Q?", "said": 5}, "said must be a string (got int)"),
])
def test_a_bad_mapped_prompt_completion_row_names_the_column(row, message):
    with pytest.raises(RowError) as caught:
        to_messages(row, "prompt_completion", Mapping(fields={"prompt": "ask", "completion": "said"}))
    assert str(caught.value) == message
