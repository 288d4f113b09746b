"""Unit tests of preference rows read into pairs and KTO answers: each form, each error message a user sees, and
an answer's prompt split at a shared boundary."""

from __future__ import annotations

import pytest

from peftsft.data.formats import Mapping, RowError
from peftsft.data.masking import IGNORE, Encoded
from peftsft.data.preference import Pair, Unpaired, _short, detect_preference_format, parse_label, to_preference
from peftsft.data.preference_encode import Answer
from tests.fakes import DatasetRows

USER = {"role": "user", "content": "Q?"}


def reply(text: str) -> dict:
    return {"role": "assistant", "content": text}


# ---------------------------------------------------------------------------------------------- formats


def test_the_preference_format_is_told_by_its_mapped_columns():
    assert detect_preference_format({"chosen": "a", "rejected": "b"}) == "preference"
    assert detect_preference_format({"prompt": "q", "completion": "a", "label": True}) == "unpaired_preference"
    mapping = Mapping(fields={"chosen": "good", "rejected": "bad"})
    assert detect_preference_format({"good": "a", "bad": "b"}, mapping) == "preference"
    with pytest.raises(RowError) as caught:
        detect_preference_format({"prompt": "q", "completion": "a"})
    assert str(caught.value) == (
        "cannot tell the preference format of a row with keys ['completion', 'prompt']; expected 'chosen' + "
        "'rejected' (with a 'prompt', or as whole conversations) or 'prompt' + 'completion' + 'label' — or set "
        "format and fields for this dataset in the recipe")


def test_a_format_that_is_not_a_preference_format_is_refused():
    with pytest.raises(RowError, match=r"^'messages' is not a preference format \(preference, unpaired_preference"):
        to_preference({"chosen": "a", "rejected": "b"}, "messages")


# ---------------------------------------------------------------------------------------------- unpaired


def test_an_unpaired_row_is_its_prompt_one_reply_and_its_label():
    row = {"prompt": "Q?", "completion": "A.", "label": "false", "system": "Be brief."}
    assert to_preference(row, "auto") == Unpaired([{"role": "system", "content": "Be brief."}, USER], reply("A."), False)
    row = {"p": [USER], "c": [reply("A.")], "ok": 1}
    mapping = Mapping(fields={"prompt": "p", "completion": "c", "label": "ok"})
    assert to_preference(row, "unpaired_preference", mapping) == Unpaired([USER], reply("A."), True)


@pytest.mark.parametrize("missing", ["prompt", "completion", "label"])
def test_an_unpaired_row_missing_a_column_names_it_and_the_rows_columns(missing):
    row = {name: v for name, v in {"prompt": "Q?", "completion": "A.", "label": True}.items() if name != missing}
    with pytest.raises(RowError) as caught:
        to_preference(row, "unpaired_preference")
    assert str(caught.value) == (f"missing column {missing!r} (unpaired_preference format); the row has {sorted(row)}")


def test_an_unpaired_row_with_a_mapped_column_missing_names_the_mapped_column():
    with pytest.raises(RowError, match=r"^missing column 'answer' \(unpaired_preference format\); the row has "):
        to_preference({"prompt": "Q?", "label": True}, "unpaired_preference", Mapping(fields={"completion": "answer"}))


@pytest.mark.parametrize(("completion", "roles"), [
    ([reply("A."), reply("B.")], "assistant + assistant"),
    ([USER], "user"),
])
def test_an_unpaired_completion_must_be_one_assistant_reply(completion, roles):
    with pytest.raises(RowError) as caught:
        to_preference({"prompt": "Q?", "completion": completion, "label": True}, "unpaired_preference")
    assert str(caught.value) == f"'completion' must be one assistant reply (got {roles})"


def test_a_text_completion_that_is_not_text_names_its_column():
    with pytest.raises(RowError, match=r"^answer must be a string \(got int\)"):
        to_preference({"prompt": "Q?", "answer": 3, "label": True}, "unpaired_preference",
                      Mapping(fields={"completion": "answer"}))


@pytest.mark.parametrize(("value", "desirable"), [(True, True), (False, False), (1, True), (0, False),
                                                   (" Yes ", True), ("NO", False), ("1", True), ("0", False)])
def test_labels_are_read_by_their_value_or_word(value, desirable):
    assert parse_label(value) is desirable


@pytest.mark.parametrize("value", [2, "maybe", None, 1.0])
def test_other_labels_are_refused(value):
    with pytest.raises(RowError) as caught:
        parse_label(value)
    assert str(caught.value) == f"label must be true (desirable) or false (undesirable), got {value!r}"


# ---------------------------------------------------------------------------------------------- pairs


def test_a_flat_pair_answers_its_prompt_as_a_user_turn():
    assert to_preference({"prompt": "Q?", "chosen": "A", "rejected": "B"}, "auto") == Pair([USER], reply("A"), reply("B"))


def test_whole_conversations_share_their_prompt_and_a_text_prompt_column_must_be_its_last_user_turn():
    row = {"chosen": [USER, reply("A")], "rejected": [USER, reply("B")], "prompt": " Q? "}
    assert to_preference(row, "preference") == Pair([USER], reply("A"), reply("B"))
    row["prompt"] = "Other?"
    with pytest.raises(RowError) as caught:
        to_preference(row, "preference")
    assert str(caught.value) == ("'prompt' is not the prompt the chosen and rejected conversations answer "
                                 "(user: 'Q?')")


def test_a_prompt_column_of_turns_must_be_the_conversations_turns():
    row = {"chosen": [USER, reply("A")], "rejected": [USER, reply("B")], "prompt": [USER]}
    assert to_preference(row, "preference").prompt == [USER]
    row["prompt"] = [{"role": "user", "content": "Else?"}]
    with pytest.raises(RowError, match="is not the prompt the chosen and rejected"):
        to_preference(row, "preference")


@pytest.mark.parametrize(("chosen", "rejected", "said"), [
    ([USER, reply("A")], [{"role": "user", "content": "R?"}, reply("B")],
     "turn 0 differs (user: 'Q?' vs user: 'R?')"),
    ([USER, reply("A")], [USER, reply("x"), USER, reply("B")], "2 vs 4 turns"),
])
def test_conversations_answering_different_prompts_say_where_they_differ(chosen, rejected, said):
    with pytest.raises(RowError) as caught:
        to_preference({"good": chosen, "bad": rejected}, "preference", Mapping(fields={"chosen": "good",
                                                                                        "rejected": "bad"}))
    assert str(caught.value) == f"'good' and 'bad' answer different prompts: {said}"


def test_a_message_is_shortened_to_its_role_and_forty_characters():
    assert _short({"role": "user", "content": "x" * 40}) == f"user: {'x' * 40!r}"
    assert _short({"role": "user", "content": "x" * 41}) == f"user: {'x' * 40!r}…"
    assert _short({}) == "None: ''"


def test_a_pair_missing_a_side_or_its_prompt_says_so():
    with pytest.raises(RowError, match=r"^missing column 'rejected' \(preference format\); the row has \['chosen'"):
        to_preference({"chosen": "A", "prompt": "Q?"}, "preference")
    with pytest.raises(RowError) as caught:
        to_preference({"chosen": "A", "rejected": "B"}, "preference")
    assert str(caught.value) == (
        "missing column 'prompt': chosen and rejected are single replies, so the prompt they answer must be given "
        "apart (or give chosen and rejected as whole conversations)")


def test_the_same_answer_twice_and_scores_that_disagree_are_refused():
    row = {"prompt": "Q?", "chosen": "A ", "rejected": "A"}
    with pytest.raises(RowError, match="^chosen and rejected are the same answer: the pair prefers nothing$"):
        to_preference(row, "preference")
    row = {"prompt": "Q?", "chosen": "A", "rejected": "B", "score_chosen": 2.0, "score_rejected": "7.5"}
    with pytest.raises(RowError) as caught:
        to_preference(row, "preference")
    assert str(caught.value) == "score_chosen (2) is below score_rejected (7.5): chosen and rejected look swapped"
    with pytest.raises(RowError, match=r"^chosen and rejected both score 3: a tie prefers nothing$"):
        to_preference(row | {"score_chosen": 3, "score_rejected": 3}, "preference")
    with pytest.raises(RowError, match=r"^scores must be numbers \(got 'high' and 1\)$"):
        to_preference(row | {"score_chosen": "high", "score_rejected": 1}, "preference")
    assert to_preference(row | {"score_chosen": 9, "score_rejected": ""}, "preference").chosen == reply("A")
    assert to_preference(row | {"score_chosen": 9, "score_rejected": 1}, "preference").chosen == reply("A")


def test_a_side_must_end_in_one_assistant_reply():
    row = {"prompt": "Q?", "chosen": [reply("A"), reply("B")], "rejected": "C"}
    with pytest.raises(RowError) as caught:
        to_preference(row, "preference")
    assert str(caught.value) == "'chosen' must end in one assistant reply (got assistant + assistant)"


def test_a_prompt_must_end_in_a_user_or_tool_turn():
    with pytest.raises(RowError) as caught:
        to_preference({"prompt": [{"role": "system", "content": "S"}], "chosen": "A", "rejected": "B"}, "preference")
    assert str(caught.value) == ("the prompt must end in a user (or tool) turn for the answers to reply to "
                                 "(got system)")


# ---------------------------------------------------------------------------------------------- answers


def answer(prompt_ids, answer_ids, merged=False, truncated=False) -> Answer:
    ids = prompt_ids + answer_ids
    scored = Encoded(ids, [IGNORE] * len(prompt_ids) + answer_ids, truncated, "abcdef", [(i, i + 1) for i in range(len(ids))])
    return Answer(prompt_ids, answer_ids, scored, merged)


def test_an_answer_split_earlier_moves_prompt_tokens_into_the_answer_and_says_so():
    moved = answer([1, 2, 3], [4, 5]).split_at(2)
    assert (moved.prompt_ids, moved.answer_ids, moved.merged) == ([1, 2], [3, 4, 5], True)
    assert moved.scored.input_ids == [1, 2, 3, 4, 5] and moved.scored.labels == [IGNORE, IGNORE, 3, 4, 5]
    assert moved.scored.offsets == [(i, i + 1) for i in range(5)] and moved.kept


def test_an_answer_split_at_its_own_prompt_end_is_unchanged():
    same = answer([1, 2, 3], [4, 5]).split_at(3)
    assert (same.prompt_ids, same.answer_ids, same.merged) == ([1, 2, 3], [4, 5], False)
    assert answer([1, 2, 3], [4, 5], merged=True).split_at(3).merged is True
    assert not answer([1], []).kept


def test_an_answer_cut_by_max_length_stays_cut_when_split():
    assert answer([1, 2, 3], [4, 5], truncated=True).split_at(2).scored.truncated is True
    assert answer([1, 2, 3], [4, 5]).split_at(2).scored.truncated is False


# ---------------------------------------------------------------------------------------------- building rows


def items_of(*contents):
    from peftsft.data.items import Item

    return [Item(content, f"p.jsonl:{i + 1}", 0) for i, content in enumerate(contents)]


PAIR = Pair([USER], reply("Yes, it is."), reply("No."))
KTO = Unpaired([USER], reply("Maybe."), False)


def test_pair_methods_refuse_an_unpaired_row_naming_it():
    import numpy as np

    from peftsft.core.errors import UserError
    from peftsft.data.preference_build import _refuse_unpaired

    _refuse_unpaired(items_of(PAIR, KTO), np.array([0]))
    with pytest.raises(UserError) as caught:
        _refuse_unpaired(items_of(PAIR, KTO), np.array([0, 1]))
    assert caught.value.message == "p.jsonl:2: an unpaired row (prompt + completion + label) in pair data"
    assert caught.value.hint == ('unpaired rows train with [preference] method = "kto"; dpo, orpo and simpo need '
                                 "chosen + rejected pairs")


def test_kto_units_are_both_answers_of_a_pair_and_the_one_of_an_unpaired_row():
    import numpy as np

    from peftsft.data.preference_build import _answer_of, _units

    items = items_of(PAIR, KTO)
    assert _units(items, np.array([1, 0]), paired=True) == [(1, -1), (0, -1)]
    assert _units(items, np.array([1, 0]), paired=False) == [(1, -1), (0, 0), (0, 1)]
    assert _answer_of(PAIR, 0) == Unpaired([USER], reply("Yes, it is."), True)
    assert _answer_of(PAIR, 1) == Unpaired([USER], reply("No."), False)
    assert _answer_of(KTO, -1) is KTO


def test_tallies_add_up_their_counts():
    from peftsft.data.preference_build import Tally

    first, later = Tally(kept=1), Tally(kept=2)
    first.counts["pairs"], later.counts["pairs"], later.counts["merged"] = 1, 2, 1
    first.merge(later)
    assert first.kept == 3 and first.counts == {"pairs": 3, "desirable": 0, "undesirable": 0,
                                                 "identical_after_cut": 0, "merged": 1}


def encoder(tokenizer, max_length=64, on_bad_row="skip"):
    from peftsft.core.config import DataSection
    from peftsft.data.preference_build import Encoder, Tally

    return Encoder(tokenizer, DataSection(max_length=max_length, on_bad_row=on_bad_row), Tally())


def test_a_pair_becomes_its_prompt_and_both_answers_through_the_end_of_turn(tokenizer):
    enc = encoder(tokenizer)
    row = enc.pair(items_of(PAIR)[0])
    assert tokenizer.decode(row["chosen_ids"]) == "Yes, it is.<|im_end|>"
    assert tokenizer.decode(row["rejected_ids"]) == "No.<|im_end|>"
    assert tokenizer.decode(row["prompt_ids"]).endswith("Q?<|im_end|>\n<|im_start|>assistant\n")
    found, n = enc.found, len(row["prompt_ids"])
    assert (found.kept, found.counts["pairs"], found.truncated, found.dropped_unsupervised) == (1, 1, 0, 0)
    assert found.tokens == 2 * n + len(row["chosen_ids"]) + len(row["rejected_ids"])
    assert found.supervised_tokens == len(row["chosen_ids"]) + len(row["rejected_ids"])
    assert found.max_tokens == n + len(row["chosen_ids"])
    assert (found.checks.replies, found.checks.closed, found.checks.unclosed) == (2, 2, 0)


def test_a_kto_answer_is_counted_by_its_label(tokenizer):
    enc = encoder(tokenizer)
    row = enc.unpaired(items_of(KTO)[0], KTO)
    assert row["label"] is False and tokenizer.decode(row["completion_ids"]) == "Maybe.<|im_end|>"
    assert enc.unpaired(items_of(KTO)[0], Unpaired([USER], reply("Sure."), True))["label"] is True
    assert (enc.found.kept, enc.found.counts["desirable"], enc.found.counts["undesirable"]) == (2, 1, 1)


def test_answers_the_cut_leaves_empty_or_identical_are_dropped_and_counted(tokenizer):
    n = len(encoder(tokenizer).pair(items_of(PAIR)[0])["prompt_ids"])
    enc = encoder(tokenizer, max_length=n)
    assert enc.pair(items_of(PAIR)[0]) is None
    assert (enc.found.kept, enc.found.truncated, enc.found.dropped_unsupervised) == (0, 2, 2)
    same_start = Pair([USER], reply("Yes indeed."), reply("Yes no."))
    enc = encoder(tokenizer, max_length=n + 1)
    assert enc.pair(items_of(same_start)[0]) is None
    assert enc.found.counts["identical_after_cut"] == 1 and enc.found.kept == 0 and enc.found.truncated == 2
    assert encoder(tokenizer, max_length=n).unpaired(items_of(KTO)[0], KTO) is None


def test_a_row_the_template_refuses_is_a_bad_row_or_stops_the_build(tokenizer):
    from peftsft.core.errors import UserError

    bad = Pair([{"role": "system", "content": "S"}, {"role": "system", "content": "T"}, USER], reply("A"), reply("B"))
    enc = encoder(tokenizer)
    enc._guarded(lambda: (_ for _ in ()).throw(RowError("wrong")), items_of(bad)[0])
    assert list(enc.found.bad_rows) == ["p.jsonl:1: wrong"]
    from jinja2 import TemplateError

    enc._guarded(lambda: (_ for _ in ()).throw(TemplateError("no system twice")), items_of(bad)[0])
    assert enc.found.bad_rows[-1] == "p.jsonl:1: the chat template cannot render it: no system twice"
    with pytest.raises(UserError, match=r"^p\.jsonl:1: wrong"):
        encoder(tokenizer, on_bad_row="fail")._guarded(lambda: (_ for _ in ()).throw(RowError("wrong")),
                                                       items_of(bad)[0])


# ---------------------------------------------------------------------------------------------- contract


def stats_of(**checks):
    from types import SimpleNamespace

    return SimpleNamespace(checks=checks, template={})


def test_every_answer_must_have_scored_tokens_after_a_prompt():
    from peftsft.data.preference_contract import _every_answer_scored

    name = "every answer has scored tokens after a prompt"
    pairs = DatasetRows([{"prompt_ids": [1], "chosen_ids": [2], "rejected_ids": [3]}] * 2)
    check = _every_answer_scored([pairs, pairs[:1]], paired=True)
    assert (check.name, check.status, check.detail) == (
        name, "ok", "3 pairs (both answers); prompt tokens are never scored (they are apart from the answers)")
    bad = DatasetRows([*pairs, {"prompt_ids": [], "chosen_ids": [2], "rejected_ids": []}])
    assert _every_answer_scored([pairs, bad], paired=True).detail == "row 2: prompt_ids, rejected_ids empty"
    assert _every_answer_scored([bad], paired=True).status == "FAIL"
    assert _every_answer_scored([bad], paired=True).name == name
    kto = DatasetRows([{"prompt_ids": [1], "completion_ids": [2], "label": True}])
    assert _every_answer_scored([kto], paired=False).detail.startswith("1 answers; ")
    kto.append({"prompt_ids": [1], "completion_ids": [], "label": False})
    assert _every_answer_scored([kto], paired=False).detail == "row 1: completion_ids empty"


def test_chosen_must_differ_from_rejected_in_every_pair():
    from peftsft.data.preference_contract import _chosen_differs

    pairs = DatasetRows([{"chosen_ids": [2], "rejected_ids": [3]}, {"chosen_ids": [4], "rejected_ids": [5]}])
    check = _chosen_differs([pairs])
    assert (check.name, check.status, check.detail) == ("chosen ≠ rejected", "ok", "every pair's answers differ")
    same = DatasetRows([*pairs, {"chosen_ids": [6], "rejected_ids": [6]}])
    check = _chosen_differs([pairs, same])
    assert (check.name, check.status, check.detail) == ("chosen ≠ rejected", "FAIL",
                                                        "pair 2: the two answers are the same tokens")


def test_kto_data_should_hold_both_kinds_of_answers():
    from peftsft.data.preference_contract import _both_labels

    check = _both_labels(stats_of(desirable=3, undesirable=2))
    assert (check.name, check.status, check.detail) == ("desirable and undesirable answers", "ok",
                                                        "3 desirable, 2 undesirable")
    check = _both_labels(stats_of(desirable=3))
    assert (check.status, check.detail) == ("warn", "3 desirable, 0 undesirable: KTO works best with both")
    assert _both_labels(stats_of(undesirable=1)).detail == "0 desirable, 1 undesirable: KTO works best with both"


def test_answers_merged_with_the_prompts_end_are_a_warning():
    from peftsft.data.preference_contract import _prompt_ends_between_tokens

    check = _prompt_ends_between_tokens(stats_of())
    assert (check.name, check.status, check.detail) == ("prompt ends between tokens", "ok",
                                                        "every answer starts on a token of its own")
    check = _prompt_ends_between_tokens(stats_of(merged=2))
    assert (check.name, check.status, check.detail) == ("prompt ends between tokens",
        "warn", "2 answer(s) begin with a token that also holds the prompt's last characters (a generation prompt "
        "ending in a space?): it is scored as answer")


def test_the_preference_contract_runs_the_pair_or_kto_checks_and_the_sft_ones(monkeypatch):
    from types import SimpleNamespace

    from peftsft.data import preference_contract as pc
    from peftsft.data.contract import Check

    seen = []
    monkeypatch.setattr(pc, "template_saved_identically", lambda tok, stats: seen.append(tok) or Check("t", "ok", ""))
    stats, data = stats_of(unclosed=0, replies=2, closed=2, desirable=1), SimpleNamespace(enforce_contract=False)
    pairs = DatasetRows([{"prompt_ids": [1], "chosen_ids": [2], "rejected_ids": [3]}])
    result = pc.check_preference_contract("TOK", pairs, None, stats, data)
    assert [c.name for c in result.checks] == [
        "every answer has scored tokens after a prompt", "chosen ≠ rejected", "prompt ends between tokens",
        "end-of-turn token is supervised", "no supervised token in a prompt", "t"]
    assert result.enforced is False and seen == ["TOK"] and not result.failures
    assert result.checks[4].detail == "every supervised span is reply text (answer masking)"
    kto = DatasetRows([{"prompt_ids": [1], "completion_ids": [2], "label": True}])
    result = pc.check_preference_contract("TOK", kto, kto, stats, SimpleNamespace(enforce_contract=True))
    assert result.checks[1].name == "desirable and undesirable answers" and result.enforced is True
    assert result.checks[0].detail.startswith("2 answers")


def test_a_bad_turn_in_a_completion_list_names_the_mapped_column():
    with pytest.raises(RowError, match=r"^answer\[0\] is not an object$"):
        to_preference({"prompt": "Q?", "answer": ["A."], "label": True}, "unpaired_preference",
                      Mapping(fields={"completion": "answer"}))
