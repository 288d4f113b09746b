"""Unit tests of preference rows read into pairs and KTO answers: each form, each error message a user sees, and
an answer's prompt split at a shared boundary."""

from __future__ import annotations

import pytest

from peftsft.data.formats import Mapping, RowError
from peftsft.data.masking import IGNORE, Encoded
from peftsft.data.preference import Pair, Unpaired, _short, detect_preference_format, parse_label, to_preference
from peftsft.data.preference_encode import Answer

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


def answer(prompt_ids, answer_ids, merged=False) -> Answer:
    ids = prompt_ids + answer_ids
    scored = Encoded(ids, [IGNORE] * len(prompt_ids) + answer_ids, False, "abcdef", [(i, i + 1) for i in range(len(ids))])
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
