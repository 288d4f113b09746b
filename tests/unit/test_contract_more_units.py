"""More unit tests of the pre-flight data contract, pinning the exact counts and example texts of each reply check,
the first bad sample of an Arrow batch, the check details users read, and the preference contract's checks."""

from __future__ import annotations

from dataclasses import fields
from types import SimpleNamespace

import pyarrow as pa
import pytest

from peftsft.data import contract
from peftsft.data.contract import Check, Contract, ReplyChecks, Run
from peftsft.data.masking import IGNORE, Encoded
from peftsft.data.tools import with_tools
from tests.fakes import DatasetRows

MARKERS = {"eot": "<E>", "eos": "</s>", "header": "<A>"}
NO_TOOLS = SimpleNamespace(chat_template="")  # fit_messages keeps plain messages as they are


def encoded(pieces: list[str], learned: set[int], truncated: bool = False) -> Encoded:
    """One token per piece; the pieces at `learned` supervised."""
    ends, at = [], 0
    for piece in pieces:
        at += len(piece)
        ends.append(at)
    labels = [i if i in learned else IGNORE for i in range(len(pieces))]
    return Encoded(input_ids=list(range(len(pieces))), labels=labels, truncated=truncated, text="".join(pieces),
                   offsets=list(zip([0, *ends[:-1]], ends)))


def counts(checks: ReplyChecks) -> dict:
    return {f.name: getattr(checks, f.name) for f in fields(checks) if f.name != "examples"}


def only(**nonzero) -> dict:
    """Every counter of ReplyChecks: zero unless given."""
    return {f.name: nonzero.get(f.name, 0) for f in fields(ReplyChecks) if f.name != "examples"}


# ---------------------------------------------------------------------------------------------- supervised runs


def test_supervised_runs_of_a_sample_learned_whole_or_not_at_all():
    assert contract.supervised_runs(encoded(["a", "b", "c"], {0, 1, 2})) == [Run("abc", False)]
    assert contract.supervised_runs(encoded(["a", "b", "c"], set())) == []
    assert contract.supervised_runs(encoded(["a", "b", "c"], {0, 1, 2}, truncated=True)) == [Run("abc", True)]


def test_only_the_run_reaching_the_end_of_a_truncated_sample_is_at_the_cut():
    e = encoded(["Q", "A1", "<E>", "Q2", "A2"], {1, 2, 4}, truncated=True)
    assert contract.supervised_runs(e) == [Run("A1<E>", False), Run("A2", True)]
    e = encoded(["Q", "A1", "<E>", "Q2", "A2"], {1, 2}, truncated=True)
    assert contract.supervised_runs(e) == [Run("A1<E>", False)]
    e = encoded(["A0", "Q", "A1"], {0, 2})
    assert contract.supervised_runs(e) == [Run("A0", False), Run("A1", False)]


# ---------------------------------------------------------------------------------------------- observing samples

PIECES = ["<U>Q1<E>", "<A>", "A1", "<E>", "<U>Q2<E>", "<A>", "A2", "<E>", "<U>Q3<E>", "<A>", "A3", "<E>"]
CHAT = [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"},
        {"role": "user", "content": "Q2"}, {"role": "assistant", "content": "A2"},
        {"role": "user", "content": "Q3"}, {"role": "assistant", "content": "A3"}]


def test_each_observed_sample_is_counted_once():
    checks = ReplyChecks()
    for _ in range(3):
        checks.observe(NO_TOOLS, CHAT, encoded(PIECES, {2, 3, 6, 7, 10, 11}), "assistant", MARKERS, "f:1")
    assert counts(checks) == only(samples=3, replies=9, closed=9) and checks.examples == []


def test_last_turn_masking_judges_only_the_last_of_three_replies():
    checks = ReplyChecks()
    checks.observe(NO_TOOLS, CHAT, encoded(PIECES, {10, 11}), "last_turn", MARKERS, "f:1")
    assert counts(checks) == only(samples=1, replies=1, closed=1) and checks.examples == []
    checks = ReplyChecks()
    checks.observe(NO_TOOLS, CHAT, encoded(PIECES, {2, 3, 6, 7, 10, 11}), "last_turn", MARKERS, "f:2")
    assert counts(checks) == only(samples=1, replies=1, closed=1, prompt_runs=3)
    assert checks.examples == ["f:2: supervised text is not the reply: 'A1<E>'",
                               "f:2: supervised text outside any reply: 'A2<E>'",
                               "f:2: supervised text outside any reply: 'A3<E>'"]


def test_supervised_text_outside_the_replies_is_shown_by_its_first_80_characters():
    long = "L" * 100
    pieces = ["<U>Q1<E>", "<A>", "A1", "<E>", long]
    chat = [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"}]
    checks = ReplyChecks()
    checks.observe(NO_TOOLS, chat, encoded(pieces, {2, 3}), "assistant", MARKERS, "f:1")
    checks.observe(NO_TOOLS, chat[:1] + [], encoded(["<U>Q1<E>", long], {1}), "assistant", MARKERS, "f:2")
    assert checks.prompt_runs == 1 and checks.examples == [f"f:2: supervised text outside any reply: {'L' * 80!r}"]


def test_masking_all_counts_a_row_whose_replies_call_tools_as_a_tool_row():
    chat = [{"role": "user", "content": "Q1"},
            {"role": "assistant", "content": "A1", "tool_calls": [{"function": {"name": "f", "arguments": {}}}]}]
    checks = ReplyChecks()
    checks.observe(SimpleNamespace(chat_template="{{ m.tool_calls }}"), chat, encoded(PIECES[:4], {0, 1, 2, 3}), "all",
                   MARKERS, "f:1")
    assert counts(checks) == only(samples=1, replies=1, closed=1, tool_rows=1)
    checks.observe(NO_TOOLS, CHAT[:2], encoded(PIECES[:4], {0, 1, 2, 3}), "all", MARKERS, "f:2")
    assert counts(checks) == only(samples=2, replies=2, closed=2, tool_rows=1)


def test_masking_all_notes_replies_without_their_end_of_turn_by_the_eot_marker():
    checks = ReplyChecks()
    pieces = ["<U>Q1<E>", "<A>", "A1", "<E>", "<U>Q2<E>", "<A>", "A2"]
    checks.observe(NO_TOOLS, CHAT[:4], encoded(pieces, set(range(7))), "all", MARKERS, "f:1")
    # "<E>" appears after Q1, A1 and Q2: three, but only two replies can be closed
    assert counts(checks) == only(samples=1, replies=2, closed=2)
    markers = {**MARKERS, "eot": "</E>"}
    checks.observe(NO_TOOLS, CHAT[:4], encoded(pieces, set(range(7))), "all", markers, "f:2")
    assert counts(checks) == only(samples=2, replies=4, closed=2, unclosed=2)
    assert checks.examples == ["f:2: 2 reply(ies) without '</E>'"]


def test_plain_text_is_judged_by_its_last_run_and_the_eos_marker():
    checks = ReplyChecks()
    e = encoded(["text", "</s>", "more", "end"], {0, 1, 3})
    checks.observe(NO_TOOLS, "textmore</s>", e, "assistant", MARKERS, "f:1")
    assert counts(checks) == only(samples=1, replies=1, unclosed=1)
    assert checks.examples == ["f:1: the text does not end with a supervised '</s>'"]
    checks.observe(NO_TOOLS, "text</s>", encoded(["te", "xt", "</s>"], {0, 2}), "assistant", MARKERS, "f:2")
    assert counts(checks) == only(samples=2, replies=2, closed=1, unclosed=1)


def test_a_missed_call_in_a_truncated_sample_is_excused():
    chat = [{"role": "user", "content": "Q1"},
            {"role": "assistant", "content": "A1", "tool_calls": [{"function": {"name": "lookup", "arguments": {}}}]}]
    tok = SimpleNamespace(chat_template="{{ m.tool_calls }}")
    checks = ReplyChecks()
    checks.observe(tok, chat, encoded(["<U>Q1<E>", "<A>", "A1"], {2}, truncated=True), "assistant", MARKERS, "f:1")
    assert counts(checks) == only(samples=1, replies=1, tool_rows=1, tool_calls=1) and checks.examples == []
    checks.observe(tok, chat, encoded(["<U>Q1<E>", "<A>", "A1", "<E>"], {2, 3}), "assistant", MARKERS, "f:2")
    assert counts(checks) == only(samples=2, replies=2, closed=1, tool_rows=2, tool_calls=2, calls_missed=1)
    assert checks.examples == ["f:2: the call to 'lookup' is not supervised"]


# ---------------------------------------------------------------------------------------------- one reply


def test_a_reply_shows_its_last_40_characters_when_it_is_not_closed():
    checks = ReplyChecks()
    text = "x" * 50 + "end"
    checks._check_reply({"content": text}, Run(text, False), MARKERS, "f:1")
    assert counts(checks) == only(replies=1, unclosed=1)
    assert checks.examples == [f"f:1: reply ends {text[-40:]!r} without a supervised '<E>'"]


def test_a_template_without_an_end_of_turn_never_closes_a_reply():
    checks = ReplyChecks()
    checks._check_reply({"content": "Hi"}, Run("Hi", False), {**MARKERS, "eot": None}, "f:1")
    checks._check_reply({"content": "Hi"}, Run("Hi", False), {**MARKERS, "eot": ""}, "f:2")
    assert counts(checks) == only(replies=2, unclosed=2)
    assert checks.examples == ["f:1: reply ends 'Hi' without a supervised None",
                               "f:2: reply ends 'Hi' without a supervised ''"]


def test_a_reply_is_judged_without_its_end_of_turn_and_surrounding_space():
    checks = ReplyChecks()
    checks._check_reply({"content": "Hi there"}, Run(" Hi there \n<E>  ", False), MARKERS, "f:1")
    assert counts(checks) == only(replies=1, closed=1) and checks.examples == []
    long = "P" * 90 + "<E>"
    checks._check_reply({"content": "Hi"}, Run(long, False), MARKERS, "f:2")
    assert counts(checks) == only(replies=2, closed=2, prompt_runs=1)
    assert checks.examples == [f"f:2: supervised text is not the reply: {long[:80]!r}"]


def test_tool_calls_of_every_reply_are_counted_and_a_schema_is_shown_by_its_first_60_characters():
    schema = {"type": "object", "properties": {"city": {"type": "string", "description": "D" * 80}}}
    tools = [{"type": "function", "function": {"name": "w", "parameters": schema}}]
    content = with_tools([{"role": "user", "content": "Q"}], tools)
    replies = [{"tool_calls": [{"function": {"name": "w"}}]}, {"tool_calls": None},
               {"tool_calls": [{"function": {"name": "w"}}]}]
    import json

    text = json.dumps(schema)
    checks = ReplyChecks()
    checks._observe_tools(content, replies, [Run("w(" + text, False)], False, "f:1")
    assert counts(checks) == only(tool_rows=1, tool_calls=2, calls_supervised=2, tool_text_supervised=1)
    assert checks.examples == [f"f:1: a tool schema or result is supervised: {text[:60]!r}"]


def test_a_row_with_only_a_schema_and_no_call_is_a_tool_row():
    tools = [{"type": "function", "function": {"name": "w", "parameters": {}}}]
    checks = ReplyChecks()
    checks._observe_tools(with_tools([{"role": "user", "content": "Q"}], tools), [{"content": "A"}],
                          [Run("A", False)], False, "f:1")
    assert counts(checks) == only(tool_rows=1) and checks.examples == []


def test_closing_plain_text_needs_its_last_run_to_end_with_the_closer():
    checks = ReplyChecks()
    checks._close([Run("a</s>", False)], "", "f:1")  # no closer: never closed
    checks._close([Run("abc", True)], "</s>", "f:2")  # cut: excused
    checks._close([Run("a</s>", True)], "</s>", "f:3")
    assert counts(checks) == only(replies=3, closed=1, unclosed=1)
    assert checks.examples == ["f:1: the text does not end with a supervised ''"]


def test_masking_all_closes_at_most_every_reply_and_only_by_the_tokenized_text():
    e = Encoded(input_ids=[0, 1], labels=[0, 1], truncated=False, text="a<E>b<E>c<E>", offsets=[(0, 4), (4, 8)])
    checks = ReplyChecks()
    checks._close_all(e, [{}, {}, {}], "<E>", "f:1")  # the third <E> lies past the last token
    assert counts(checks) == only(replies=3, closed=2, unclosed=1)
    assert checks.examples == ["f:1: 1 reply(ies) without '<E>'"]
    checks._close_all(e, [{}], "<E>", "f:2")
    assert counts(checks) == only(replies=4, closed=3, unclosed=1)
    checks._close_all(e, [{}, {}], None, "f:3")
    assert counts(checks) == only(replies=6, closed=3, unclosed=3)
    assert checks.examples[-1] == "f:3: 2 reply(ies) without None"


def test_masking_all_with_no_tokens_closes_nothing_and_a_truncated_sample_is_excused():
    empty = Encoded(input_ids=[], labels=[], truncated=False, text="<E>", offsets=[])
    checks = ReplyChecks()
    checks._close_all(empty, [{}], "<E>", "f:1")
    assert counts(checks) == only(replies=1, unclosed=1)
    cut = Encoded(input_ids=[0], labels=[0], truncated=True, text="a<E>", offsets=[(0, 1)])
    checks._close_all(cut, [{}, {}], "<E>", "f:2")
    assert counts(checks) == only(replies=3, unclosed=1) and checks.examples == ["f:1: 1 reply(ies) without '<E>'"]
    full = Encoded(input_ids=[0], labels=[0], truncated=False, text="a<E>", offsets=[(0, 4)])
    checks._close_all(full, [{}], "<E>", "f:3")
    assert counts(checks) == only(replies=4, closed=1, unclosed=1) and len(checks.examples) == 1


def test_merging_adds_every_counter_and_fills_up_to_five_examples():
    first = ReplyChecks(**{name: i + 1 for i, name in enumerate(only())}, examples=["a", "b", "c", "d"])
    later = ReplyChecks(**{name: 10 * (i + 1) for i, name in enumerate(only())}, examples=["e", "f"])
    first.merge(later)
    assert counts(first) == {name: 11 * (i + 1) for i, name in enumerate(only())}
    assert first.examples == ["a", "b", "c", "d", "e"] and later.examples == ["e", "f"]
    full = ReplyChecks(examples=list("abcde"))
    full.merge(ReplyChecks(examples=["z"]))
    assert full.examples == list("abcde")


def test_a_note_counts_one_by_default():
    checks = ReplyChecks()
    checks._note("prompt_runs", "x")
    checks._note("prompt_runs", "y")
    assert counts(checks) == only(prompt_runs=2) and checks.examples == ["x", "y"]


def test_tool_texts_keep_results_of_eight_characters_and_not_other_roles():
    chat = [{"role": "user", "content": "a user question here"}, {"role": "tool", "content": " 12345678 "},
            {"role": "assistant", "content": "a long assistant reply"}, {"role": "tool", "content": "1234567 "}]
    assert contract._tool_texts(chat) == ["12345678"]
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"a": 1}}},
             {"type": "function", "function": {"name": "g", "parameters": {"b": "ü"}}}]
    assert contract._tool_texts(with_tools(chat, tools)) == ['{"a": 1}', '{"b": "ü"}', "12345678"]


def test_a_reply_without_calls_must_be_part_of_its_content():
    assert contract._is_reply("", {"content": "Hi", "tool_calls": []}, "<A>")
    assert not contract._is_reply("<A>Hi", {"content": "Hi", "tool_calls": None}, "<A>")
    assert contract._is_reply("x", {"content": "", "tool_calls": [{}]}, "<A>")


# ---------------------------------------------------------------------------------------------- first problem


def batch(ids: list, labels: list) -> pa.Table:
    return pa.Table.from_pydict({"input_ids": ids, "labels": labels})


def test_the_first_problem_of_a_batch_is_its_first_bad_row():
    assert contract._first_problem(batch([[1, 2], [3, 4]], [[IGNORE, 2], [3, IGNORE]])) is None
    assert contract._first_problem(batch([[1, 2], [3, 4], [5]], [[IGNORE, 2], [IGNORE, IGNORE], [6]])) == (
        1, " has no supervised token")
    assert contract._first_problem(batch([[1, 2], [3, 4], [5]], [[IGNORE, 2], [IGNORE, 4], [6]])) == (
        2, ": labels differ from the input ids they supervise")
    assert contract._first_problem(batch([[1, 2], [3, 4]], [[9, 2], [IGNORE, IGNORE]])) == (
        0, ": labels differ from the input ids they supervise")


def test_a_row_without_tokens_has_no_supervised_token():
    assert contract._first_problem(batch([[1], []], [[1], []])) == (1, " has no supervised token")
    assert contract._first_problem(batch([[1], None], [[1], None])) == (1, " has no supervised token")


def test_rows_of_unequal_lengths_are_compared_token_by_token_over_the_shorter():
    assert contract._first_problem(batch([[1, 2, 3], [4, 5]], [[IGNORE, 2], [IGNORE, 5, 6]])) is None
    assert contract._first_problem(batch([[1, 2, 3], [4, 5]], [[IGNORE, 2], [4, 7, 6]])) == (
        1, ": labels differ from the input ids they supervise")
    assert contract._first_problem(batch([[1, 2, 3], None, [4]], [[1], [IGNORE], [IGNORE, 4]])) == (
        1, " has no supervised token")
    assert contract._first_problem(batch([[1, 2, 3], [4]], [[1], [IGNORE, 4]])) == (1, " has no supervised token")


# ---------------------------------------------------------------------------------------------- check details


def stats_of(checks: dict | None = None, **template) -> SimpleNamespace:
    return SimpleNamespace(checks=checks or {}, template=template)


def test_an_example_is_the_first_holding_any_needle_or_nothing():
    checks = {"examples": ["a: one", "b: two", "c: one two"]}
    assert contract._first(checks, ("two", "one")) == "a: one"
    assert contract._first(checks, ("two",)) == "b: two"
    assert contract._first(checks, ("three",)) == ""
    assert contract._first({}, ("one",)) == ""


def test_unclosed_replies_without_a_matching_example_show_no_reason():
    checks = {"unclosed": 1, "replies": 2, "closed": 1, "examples": ["f:1: supervised text outside any reply"]}
    check = contract.end_of_turn_supervised(stats_of(checks, end_of_turn="<E>"))
    assert check == Check("end-of-turn token is supervised", "FAIL", "1 of 2 replies: ")


def test_all_replies_closed_by_a_template_without_an_end_of_turn_name_it_none():
    check = contract.end_of_turn_supervised(stats_of({"unclosed": 0, "replies": 0, "closed": 0}))
    assert check == Check("end-of-turn token is supervised", "ok", "None closes 0 of 0 replies")
    check = contract.end_of_turn_supervised(stats_of({"unclosed": 0, "replies": 3, "closed": 2}, end_of_turn="<E>"))
    assert check.detail == "'<E>' closes 2 of 3 replies (1 cut by max_length)"


def test_supervised_prompt_text_without_an_example_still_fails():
    check = contract.no_prompt_supervised(stats_of({"prompt_runs": 1, "examples": ["f:1: other"]}), "assistant")
    assert check == Check("no supervised token in a prompt", "FAIL", "1 supervised spans are not reply text: ")
    check = contract.no_prompt_supervised(stats_of({"prompt_runs": 0}), "assistant")
    assert check.status == "ok"


def test_tool_masks_fail_on_missed_calls_alone_naming_both_counts():
    checks = {"tool_text_supervised": 0, "calls_missed": 1, "calls_supervised": 2, "tool_rows": 2,
              "examples": ["f:1: a tool schema or result is supervised: 'x'", "f:2: the call to 'g' is not supervised"]}
    check = contract._tool_masks(stats_of(checks), "last_turn")
    assert check == Check("tool calls supervised, schemas and results not", "FAIL",
                          "0 schema/result span(s) supervised, 1 call(s) not: "
                          "f:1: a tool schema or result is supervised: 'x'")


def test_a_contract_with_a_warning_only_has_no_failures():
    warned = Contract([Check("a", "warn", "x"), Check("b", "n/a", "y")], False)
    assert warned.failures == [] and warned.as_dict() == {
        "passed": True, "enforced": False,
        "checks": [{"name": "a", "status": "warn", "detail": "x"}, {"name": "b", "status": "n/a", "detail": "y"}]}


def test_the_contract_table_has_a_title_and_no_header_or_box():
    from rich.console import Console

    console = Console(record=True, width=80)
    contract.print_contract(console, Contract([Check("name", "ok", "a detail as wide as the title")], True))
    assert console.export_text().splitlines() == ["        pre-flight data contract         ",
                                                  " ok  name  a detail as wide as the title "]


# ---------------------------------------------------------------------------------------------- preference contract


def test_every_answer_scored_counts_rows_of_every_dataset_and_names_the_first_empty_row():
    from peftsft.data.preference_contract import _every_answer_scored

    pairs = DatasetRows([{"prompt_ids": [1], "chosen_ids": [2], "rejected_ids": [3]}] * 3)
    assert _every_answer_scored([pairs, pairs], paired=True).detail == (
        "6 pairs (both answers); prompt tokens are never scored (they are apart from the answers)")
    bad = DatasetRows([*pairs[:1], {"prompt_ids": [1], "chosen_ids": [], "rejected_ids": [3]},
                {"prompt_ids": [], "chosen_ids": [2], "rejected_ids": [3]}])
    assert _every_answer_scored([bad], paired=True) == Check(
        "every answer has scored tokens after a prompt", "FAIL", "row 1: chosen_ids empty")
    kto = DatasetRows([{"prompt_ids": [1], "completion_ids": [2]}] * 2)
    assert _every_answer_scored([kto], paired=False) == Check(
        "every answer has scored tokens after a prompt", "ok",
        "2 answers; prompt tokens are never scored (they are apart from the answers)")
    kto_bad = DatasetRows([{"prompt_ids": [], "completion_ids": []}])
    assert _every_answer_scored([kto_bad], paired=False).detail == "row 0: prompt_ids, completion_ids empty"


def test_identical_answers_are_named_by_their_pair_in_their_dataset():
    from peftsft.data.preference_contract import _chosen_differs

    first = DatasetRows([{"chosen_ids": [1], "rejected_ids": [2]}])
    second = DatasetRows([{"chosen_ids": [1], "rejected_ids": [2]}, {"chosen_ids": [3, 4], "rejected_ids": [3, 4]}])
    assert _chosen_differs([first, second]) == Check("chosen ≠ rejected", "FAIL",
                                                     "pair 1: the two answers are the same tokens")
    assert _chosen_differs([first]) == Check("chosen ≠ rejected", "ok", "every pair's answers differ")


def test_kto_data_without_any_answer_warns_with_zero_counts():
    from peftsft.data.preference_contract import _both_labels

    assert _both_labels(stats_of({})) == Check("desirable and undesirable answers", "warn",
                                               "0 desirable, 0 undesirable: KTO works best with both")
    assert _both_labels(stats_of({"desirable": 1, "undesirable": 1})).status == "ok"


def test_the_preference_contract_checks_the_eval_set_too_and_keeps_the_enforcement(monkeypatch):
    from peftsft.data import preference_contract as pc

    seen = []
    monkeypatch.setattr(pc, "template_saved_identically", lambda *args: seen.append(args) or Check("t", "ok", ""))
    stats = stats_of({"unclosed": 0, "replies": 1, "closed": 1, "merged": 1})
    train = DatasetRows([{"prompt_ids": [1], "chosen_ids": [2], "rejected_ids": [3]}])
    same = DatasetRows([{"prompt_ids": [1], "chosen_ids": [2], "rejected_ids": [2]}])
    result = pc.check_preference_contract("TOK", train, same, stats, SimpleNamespace(enforce_contract=True))
    assert result.enforced is True and seen == [("TOK", stats)]
    assert [(c.name, c.status) for c in result.checks] == [
        ("every answer has scored tokens after a prompt", "ok"), ("chosen ≠ rejected", "FAIL"),
        ("prompt ends between tokens", "warn"), ("end-of-turn token is supervised", "ok"),
        ("no supervised token in a prompt", "ok"), ("t", "ok")]
    assert result.checks[0].detail.startswith("2 pairs") and result.checks[1].detail.startswith("pair 0:")
    kto = DatasetRows([{"prompt_ids": [1], "completion_ids": [2]}])
    result = pc.check_preference_contract("TOK", kto, None, stats_of({"desirable": 1, "unclosed": 0, "replies": 1, "closed": 1}),
                                          SimpleNamespace(enforce_contract=False))
    assert result.enforced is False
    assert result.checks[1] == Check("desirable and undesirable answers", "warn",
                                     "1 desirable, 0 undesirable: KTO works best with both")
    assert result.checks[0].detail.startswith("1 answers;")
