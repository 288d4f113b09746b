"""Unit tests of the preference build on tiny files: the Arrow files and columns it writes for pairs and KTO
answers, the stats it reports, how the encoder counts what it keeps and drops, and the rows' reading rules."""

from __future__ import annotations

import functools
import json

import numpy as np
import pyarrow as pa
import pytest

from peftsft.core.config import DataSection, DatasetSpec
from peftsft.core.errors import UserError
from peftsft.data import preference_build as pb
from peftsft.data.items import Item
from peftsft.data.masking import IGNORE, Encoded
from peftsft.data.preference import Pair, Unpaired
from peftsft.data.preference_encode import Answer
from tests.fakes import RecordedMeter

USER = {"role": "user", "content": "Q?"}


def reply(text: str) -> dict:
    return {"role": "assistant", "content": text}


def write_rows(path, rows) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def arrow_rows(path) -> list[dict]:
    return pa.ipc.open_stream(str(path)).read_all().to_pylist()


def section(tmp_path, rows, eval_rows=None, **settings) -> DataSection:
    eval_path = write_rows(tmp_path / "e.jsonl", eval_rows) if eval_rows is not None else None
    return DataSection(datasets=[DatasetSpec(path=write_rows(tmp_path / "p.jsonl", rows))], eval_path=eval_path,
                       num_proc=1, **settings)


PAIRS = [{"prompt": f"Q{i}?", "chosen": f"Yes {i}.", "rejected": "No."} for i in range(3)]
HELD_OUT = [{"prompt": "E?", "chosen": "Good.", "rejected": "Bad."}]


# ---------------------------------------------------------------------------------------------- whole builds


def test_preference_builds_are_cached_apart_as_pairs_or_kto_answers(monkeypatch):
    seen = []
    monkeypatch.setattr(pb, "cached_build", lambda *args: seen.append(args) or "built")
    assert pb.build_preference_datasets("TOK", "DATA", 7, paired=True, console="CON") == "built"
    assert pb.build_preference_datasets("TOK", "DATA", 7, paired=False) == "built"
    (tok, data, seed, build, kind, console), unpaired = seen
    assert (tok, data, seed, kind, console) == ("TOK", "DATA", 7, "preference-pairs", "CON")
    assert isinstance(build, functools.partial) and build.func is pb._build and build.keywords == {"paired": True}
    assert unpaired[4:] == ("preference-unpaired", None) and unpaired[3].keywords == {"paired": False}


def test_a_pair_build_writes_dpo_columns_for_train_and_eval_and_reports_them(tokenizer, tmp_path):
    files, stats = pb._build(tokenizer, section(tmp_path, PAIRS, HELD_OUT), 0, tmp_path, None, paired=True)
    assert files == {"train": ["train-00000.arrow"], "eval": ["eval-00000.arrow"]}
    table = pa.ipc.open_stream(str(tmp_path / "train-00000.arrow")).read_all()
    assert table.schema == pb.PAIRS
    train = table.to_pylist()
    assert [tokenizer.decode(row["chosen_ids"]) for row in train] == [f"Yes {i}.<|im_end|>" for i in range(3)]
    assert [tokenizer.decode(row["rejected_ids"]) for row in train] == ["No.<|im_end|>"] * 3
    assert tokenizer.decode(train[1]["prompt_ids"]).endswith("<|im_start|>user\nQ1?<|im_end|>\n<|im_start|>assistant\n")
    (held_out,) = arrow_rows(tmp_path / "eval-00000.arrow")
    assert tokenizer.decode(held_out["chosen_ids"]) == "Good.<|im_end|>"
    assert (stats.train_rows, stats.eval_rows, stats.bad_total, stats.rows, stats.kept) == (3, 1, 0, 4, 4)
    assert {k: stats.checks[k] for k in ("samples", "replies", "closed", "pairs", "desirable", "undesirable",
                                         "identical_after_cut", "merged")} == {
        "samples": 8, "replies": 8, "closed": 8, "pairs": 4, "desirable": 0, "undesirable": 0,
        "identical_after_cut": 0, "merged": 0}
    lengths = sorted(len(row["prompt_ids"]) + len(row[key]) for row in train for key in ("chosen_ids", "rejected_ids"))
    assert (stats.lengths["min"], stats.lengths["max"], stats.lengths["mean"]) == (
        lengths[0], lengths[-1], round(sum(lengths) / 6, 1))
    assert sum(stats.lengths["histogram"]) == 6  # the training answers only, not the held-out ones


def test_a_kto_build_spreads_the_training_answers_by_the_seed_and_keeps_eval_in_order(tokenizer, tmp_path):
    data = section(tmp_path, PAIRS, HELD_OUT)
    files, stats = pb._build(tokenizer, data, 0, tmp_path, None, paired=False)
    table = pa.ipc.open_stream(str(tmp_path / files["train"][0])).read_all()
    assert table.schema == pb.UNPAIRED
    said = [(tokenizer.decode(row["prompt_ids"]).rsplit("user\n", 1)[1].split("<|im_end|>")[0],
             tokenizer.decode(row["completion_ids"]), row["label"]) for row in table.to_pylist()]
    assert said == [("Q2?", "Yes 2.<|im_end|>", True), ("Q1?", "Yes 1.<|im_end|>", True),
                    ("Q0?", "No.<|im_end|>", False), ("Q0?", "Yes 0.<|im_end|>", True),
                    ("Q2?", "No.<|im_end|>", False), ("Q1?", "No.<|im_end|>", False)]
    held_out = arrow_rows(tmp_path / files["eval"][0])
    assert [(tokenizer.decode(r["completion_ids"]), r["label"]) for r in held_out] == [
        ("Good.<|im_end|>", True), ("Bad.<|im_end|>", False)]
    assert (stats.train_rows, stats.eval_rows, stats.checks["desirable"], stats.checks["undesirable"]) == (6, 2, 4, 4)
    assert stats.checks["pairs"] == 0 and sum(stats.lengths["histogram"]) == 6
    other = pb._build(tokenizer, data, 1, tmp_path, None, paired=False)[0]
    assert [r["label"] for r in arrow_rows(tmp_path / other["train"][0])] != [s[2] for s in said]


def test_a_pair_build_splits_off_a_seeded_eval_fraction_and_draws_a_datasets_samples(tokenizer, tmp_path):
    rows = [{"prompt": f"Q{i}?", "chosen": f"Yes {i}.", "rejected": "No."} for i in range(8)]
    data = DataSection(datasets=[DatasetSpec(path=write_rows(tmp_path / "p.jsonl", rows), samples=3)],
                       eval_fraction=0.25, num_proc=1)

    def said(files, name):
        return [tokenizer.decode(r["chosen_ids"]) for r in arrow_rows(tmp_path / files[name][0])]

    files, stats = pb._build(tokenizer, data, 3, tmp_path, None, paired=True)
    assert said(files, "train") == ["Yes 2.<|im_end|>", "Yes 4.<|im_end|>", "Yes 3.<|im_end|>"]
    assert said(files, "eval") == ["Yes 0.<|im_end|>", "Yes 5.<|im_end|>"]
    assert (stats.sources[0]["rows"], stats.sources[0]["train"], stats.train_rows, stats.eval_rows) == (8, 3, 3, 2)
    files = pb._build(tokenizer, data, 4, tmp_path, None, paired=True)[0]
    assert said(files, "eval") == ["Yes 1.<|im_end|>", "Yes 6.<|im_end|>"]


def test_a_pair_build_refuses_an_unpaired_row_even_in_the_held_out_file(tokenizer, tmp_path):
    kto = [{"prompt": "E?", "completion": "Good.", "label": True}]
    with pytest.raises(UserError) as caught:
        pb._build(tokenizer, section(tmp_path, PAIRS, kto), 0, tmp_path, None, paired=True)
    assert caught.value.message.endswith("e.jsonl:1: an unpaired row (prompt + completion + label) in pair data")
    files, stats = pb._build(tokenizer, section(tmp_path, PAIRS, kto), 0, tmp_path, None, paired=False)
    assert (stats.train_rows, stats.eval_rows) == (6, 1)


def test_a_build_whose_answers_all_drop_says_the_training_set_is_empty(tokenizer, tmp_path):
    with pytest.raises(UserError) as caught:
        pb._build(tokenizer, section(tmp_path, PAIRS, max_length=8), 0, tmp_path, None, paired=True)
    assert caught.value.message == "the training dataset is empty after filtering"
    assert caught.value.hint.startswith("3 rows read, 0 bad, 6 with nothing to learn")


def test_a_build_without_a_held_out_file_has_no_eval_rows_and_counts_its_bad_rows(tokenizer, tmp_path, monkeypatch):
    def refuse_second(tokenizer, pair, max_length, real=pb.encode_pair):
        if pair.chosen["content"] == "Yes 1.":
            from jinja2 import TemplateError

            raise TemplateError("no")
        return real(tokenizer, pair, max_length)

    monkeypatch.setattr(pb, "encode_pair", refuse_second)
    files, stats = pb._build(tokenizer, section(tmp_path, PAIRS, on_bad_row="skip"), 0, tmp_path, None, paired=True)
    assert files == {"train": ["train-00000.arrow"], "eval": []}
    assert (stats.train_rows, stats.eval_rows, stats.bad_total) == (2, 0, 1)
    assert list(stats.bad_rows) == [f"{tmp_path / 'p.jsonl'}:2: the chat template cannot render it: no"]


# ---------------------------------------------------------------------------------------------- _encode


def items_of(*contents):
    return [Item(content, f"p.jsonl:{i + 1}", 0) for i, content in enumerate(contents)]


def pairs(n):
    return items_of(*(Pair([USER], reply(f"Yes {i}."), reply("No.")) for i in range(n)))


def test_encoding_writes_record_batches_of_at_most_write_rows(tokenizer, tmp_path, monkeypatch):
    monkeypatch.setattr(pb, "WRITE_ROWS", 2)
    monkeypatch.setattr(pb, "Meter", RecordedMeter)
    RecordedMeter.made = []
    items = pairs(3)
    names, found = pb._encode(tokenizer, items, [(0, -1), (1, -1), (2, -1)], "train", DataSection(num_proc=1),
                              tmp_path, "CON", paired=True)
    assert names == ["train-00000.arrow"]
    batches = list(pa.ipc.open_stream(str(tmp_path / "train-00000.arrow")))
    assert [b.num_rows for b in batches] == [2, 1]
    (meter,) = RecordedMeter.made
    assert (meter.console, meter.total, meter.done) == ("CON", 3, 3)
    assert meter.label == "train: templating, tokenizing, masking answers (1 process)"
    rows = [row for b in batches for row in b.to_pylist()]
    assert found.kept == 3 and found.counts["pairs"] == 3
    assert found.lengths[0].dtype == np.int32
    assert found.lengths[0].tolist() == [len(r["prompt_ids"]) + len(r[k]) for r in rows
                                         for k in ("chosen_ids", "rejected_ids")]


def test_encoding_shards_write_a_file_each_and_their_finds_add_up(tokenizer, tmp_path, monkeypatch):
    monkeypatch.setattr(pb, "Meter", RecordedMeter)
    monkeypatch.setattr(pb, "processes_for", lambda setting, rows: 2 if (setting, rows) == ("auto", 3) else 0)
    monkeypatch.setattr(pb, "run_sharded", lambda work, rows, processes, meter: [
        work(0, 0, 2, meter.advance), work(1, 2, rows, meter.advance)] if (rows, processes) == (3, 2) else [])
    RecordedMeter.made = []
    items = [*items_of(Unpaired([USER], reply("A."), True)), *pairs(1)]
    names, found = pb._encode(tokenizer, items, [(0, -1), (1, 0), (1, 1)], "eval", DataSection(), tmp_path, None,
                              paired=False)
    assert names == ["eval-00000.arrow", "eval-00001.arrow"]
    assert RecordedMeter.made[0].label == "eval: templating, tokenizing, masking answers (2 processes)"
    assert [r["label"] for r in arrow_rows(tmp_path / names[0])] == [True, True]
    assert [r["label"] for r in arrow_rows(tmp_path / names[1])] == [False]
    assert (found.kept, found.counts["desirable"], found.counts["undesirable"]) == (3, 2, 1)
    assert [len(part) for part in found.lengths] == [2, 1]


def test_encoding_nothing_writes_no_file(tokenizer, tmp_path, monkeypatch):
    monkeypatch.setattr(pb, "Meter", RecordedMeter)
    RecordedMeter.made = []
    names, found = pb._encode(tokenizer, [], [], "eval", DataSection(), tmp_path, None, paired=True)
    assert names == [] and found == pb.Tally() and not list(tmp_path.iterdir())
    assert RecordedMeter.made[0].label == "eval: templating, tokenizing, masking answers (1 process)"
    assert RecordedMeter.made[0].total == 0


# ---------------------------------------------------------------------------------------------- the encoder


def answer(prompt_ids, answer_ids, merged=False, truncated=False) -> Answer:
    ids = prompt_ids + answer_ids
    scored = Encoded(ids, [IGNORE] * len(prompt_ids) + answer_ids, truncated, "t", [(0, 0)] * len(ids))
    return Answer(prompt_ids, answer_ids, scored, merged)


class Checks:
    """ReplyChecks that record what they are shown."""

    def __init__(self):
        self.seen = []

    def observe(self, *args):
        self.seen.append(args)


def encoder(tokenizer, **settings):
    enc = pb.Encoder(tokenizer, DataSection(**settings), pb.Tally())
    enc.found.checks = Checks()
    return enc


def test_the_encoder_knows_the_templates_end_of_turn_eos_and_reply_header(tokenizer):
    assert pb.Encoder(tokenizer, DataSection(), pb.Tally()).markers == {
        "eot": "<|im_end|>", "eos": tokenizer.eos_token, "header": "<|im_start|>assistant\n"}


def test_a_pair_is_checked_and_counted_answer_by_answer(tokenizer, monkeypatch):
    chosen, rejected = answer([1, 2], [3, 4, 5], merged=True, truncated=True), answer([1, 2], [6])
    seen = []
    monkeypatch.setattr(pb, "encode_pair", lambda tok, pair, max_length: seen.append((tok, max_length)) or (
        chosen, rejected))
    enc = encoder(tokenizer, max_length=77)
    pair = Pair([USER], reply("A"), reply("B"))
    assert enc.pair(items_of(pair)[0]) == {"prompt_ids": [1, 2], "chosen_ids": [3, 4, 5], "rejected_ids": [6]}
    assert seen == [(tokenizer, 77)]
    first, second = enc.found.checks.seen
    assert first == (tokenizer, [USER, reply("A")], chosen.scored, "last_turn", enc.markers, "p.jsonl:1 (chosen)")
    assert second == (tokenizer, [USER, reply("B")], rejected.scored, "last_turn", enc.markers, "p.jsonl:1 (rejected)")
    found = enc.found
    assert (found.tokens, found.supervised_tokens, found.max_tokens, found.truncated) == (8, 4, 5, 1)
    assert (found.kept, found.counts["pairs"], found.counts["merged"], found.dropped_unsupervised) == (1, 1, 1, 0)


@pytest.mark.parametrize(("chosen", "rejected"), [
    (answer([1], [], truncated=True), answer([1], [2], truncated=True)),
    (answer([1], [2], truncated=True), answer([1], [], truncated=True)),
])
def test_a_pair_with_one_answer_cut_away_is_dropped_with_both_answers_counted(tokenizer, monkeypatch, chosen, rejected):
    monkeypatch.setattr(pb, "encode_pair", lambda *args: (chosen, rejected))
    enc = encoder(tokenizer)
    assert enc.pair(items_of(Pair([USER], reply("A"), reply("B")))[0]) is None
    assert (enc.found.truncated, enc.found.dropped_unsupervised, enc.found.kept) == (2, 1, 0)
    assert enc.found.checks.seen == [] and enc.found.counts["pairs"] == 0


def test_a_pair_whose_answers_the_cut_makes_equal_is_dropped_and_counted(tokenizer, monkeypatch):
    monkeypatch.setattr(pb, "encode_pair", lambda *args: (answer([1], [2, 3]), answer([1], [2, 3])))
    enc = encoder(tokenizer)
    assert enc.pair(items_of(Pair([USER], reply("A"), reply("B")))[0]) is None
    assert enc.found.counts == {"pairs": 0, "desirable": 0, "undesirable": 0, "identical_after_cut": 1, "merged": 0}
    assert enc.pair(items_of(Pair([USER], reply("C"), reply("D")))[0]) is None
    assert enc.found.counts["identical_after_cut"] == 2
    assert enc.found.kept == 0 and enc.found.checks.seen == []


def test_a_kto_answer_is_checked_under_its_label_and_counted(tokenizer, monkeypatch):
    seen = []
    monkeypatch.setattr(pb, "encode_unpaired", lambda tok, row, max_length: seen.append((row, max_length)) or (
        answer([1, 2, 3], [4, 5], merged=True)))
    enc = encoder(tokenizer, max_length=33)
    row = Unpaired([USER], reply("A"), False)
    assert enc.unpaired(items_of(row)[0], row) == {"prompt_ids": [1, 2, 3], "completion_ids": [4, 5], "label": False}
    assert seen == [(row, 33)]
    assert enc.found.checks.seen == [(tokenizer, [USER, reply("A")], answer([1, 2, 3], [4, 5]).scored, "last_turn",
                                      enc.markers, "p.jsonl:1 (undesirable)")]
    good = Unpaired([USER], reply("B"), True)
    assert enc.unpaired(items_of(good)[0], good)["label"] is True
    assert enc.found.checks.seen[-1][-1] == "p.jsonl:1 (desirable)"
    found = enc.found
    assert (found.kept, found.counts["desirable"], found.counts["undesirable"], found.counts["merged"]) == (2, 1, 1, 2)
    assert (found.tokens, found.supervised_tokens, found.max_tokens) == (10, 4, 5)


def test_a_kto_answer_the_cut_empties_or_the_template_refuses_is_dropped(tokenizer, monkeypatch):
    monkeypatch.setattr(pb, "encode_unpaired", lambda *args: answer([1, 2], [], truncated=True))
    enc = encoder(tokenizer)
    row = Unpaired([USER], reply("A"), True)
    assert enc.unpaired(items_of(row)[0], row) is None
    assert (enc.found.truncated, enc.found.dropped_unsupervised, enc.found.kept) == (1, 1, 0)
    from peftsft.data.formats import RowError

    monkeypatch.setattr(pb, "encode_unpaired", lambda *args: (_ for _ in ()).throw(RowError("bad label")))
    enc = encoder(tokenizer, on_bad_row="skip")
    assert enc.unpaired(items_of(row)[0], row) is None
    assert list(enc.found.bad_rows) == ["p.jsonl:1: bad label"] and enc.found.checks.seen == []


# ---------------------------------------------------------------------------------------------- answers' token ids

SPACED = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}assistant: {% endif %}")  # a generation prompt ending in a space


def tokens(tokenizer, ids):
    return tokenizer.convert_ids_to_tokens(ids)


def test_an_answer_is_the_reply_through_its_end_of_turn_after_the_whole_prompt(tokenizer):
    from peftsft.data.preference_encode import encode_answer

    got = encode_answer(tokenizer, [USER], reply("A."), 64)
    assert tokens(tokenizer, got.answer_ids) == ["A", ".", "<|im_end|>"] and got.merged is False and got.kept
    assert tokenizer.decode(got.prompt_ids).endswith("<|im_start|>user\nQ?<|im_end|>\n<|im_start|>assistant\n")
    n = len(got.prompt_ids)
    assert got.scored.input_ids == got.prompt_ids + got.answer_ids
    assert got.scored.labels == [IGNORE] * n + got.answer_ids and got.scored.truncated is False
    assert len(got.scored.offsets) == n + 3 and got.scored.text.endswith("assistant\nA.<|im_end|>\n")


def test_an_answer_cut_by_max_length_keeps_what_fits_or_nothing(tokenizer):
    from peftsft.data.preference_encode import encode_answer

    n = len(encode_answer(tokenizer, [USER], reply("A."), 64).prompt_ids)
    cut = encode_answer(tokenizer, [USER], reply("One two three four."), n + 2)
    assert tokens(tokenizer, cut.answer_ids) == ["One", "Ġtwo"] and cut.scored.truncated is True
    assert len(cut.prompt_ids) == n and len(cut.scored.offsets) == n + 2
    empty = encode_answer(tokenizer, [USER], reply("A."), 10)
    assert (len(empty.prompt_ids), empty.answer_ids, empty.kept, empty.merged) == (10, [], False, False)
    assert empty.scored.truncated is True and empty.scored.labels == [IGNORE] * 10


def test_a_token_spanning_the_prompts_end_joins_the_answer_and_is_marked_merged(tokenizer, monkeypatch):
    from peftsft.data.preference_encode import encode_answer

    monkeypatch.setattr(tokenizer, "chat_template", SPACED)
    merged = encode_answer(tokenizer, [USER], reply("Pip."), 64)
    assert tokens(tokenizer, merged.prompt_ids)[-3:] == ["ass", "istant", ":"]
    assert tokens(tokenizer, merged.answer_ids) == ["ĠPip", ".", "<|im_end|>"] and merged.merged is True
    assert merged.scored.labels == [IGNORE] * len(merged.prompt_ids) + merged.answer_ids
    apart = encode_answer(tokenizer, [USER], reply("\nPip."), 64)  # the space is a token of its own
    assert tokens(tokenizer, apart.prompt_ids)[-2:] == [":", "Ġ"] and apart.merged is False
    assert tokens(tokenizer, apart.answer_ids) == ["Ċ", "Pip", ".", "<|im_end|>"]


def test_both_answers_of_a_pair_follow_the_prompt_ids_they_share(tokenizer, monkeypatch):
    from peftsft.data.preference_encode import encode_pair

    monkeypatch.setattr(tokenizer, "chat_template", SPACED)
    chosen, rejected = encode_pair(tokenizer, Pair([USER], reply("Pip."), reply("\nPip.")), 64)
    assert chosen.prompt_ids == rejected.prompt_ids and tokens(tokenizer, chosen.prompt_ids)[-1] == ":"
    assert tokens(tokenizer, rejected.answer_ids) == ["Ġ", "Ċ", "Pip", ".", "<|im_end|>"] and rejected.merged is True
    assert tokens(tokenizer, chosen.answer_ids) == ["ĠPip", ".", "<|im_end|>"] and chosen.merged is True
    n = len(chosen.prompt_ids)
    cut_chosen, cut_rejected = encode_pair(tokenizer, Pair([USER], reply("Pip."), reply("\nPip.")), n + 1)
    assert cut_chosen.answer_ids == cut_rejected.answer_ids == []  # answers cut away: their prompts are not split
    assert tokens(tokenizer, cut_chosen.prompt_ids)[-1] == "ĠPip" and tokens(tokenizer, cut_rejected.prompt_ids)[-1] == "Ġ"


def test_a_pair_whose_prompts_agree_is_left_as_encoded(tokenizer):
    from peftsft.data.preference_encode import encode_answer, encode_pair, encode_unpaired

    chosen, rejected = encode_pair(tokenizer, Pair([USER], reply("Yes."), reply("No.")), 64)
    alone = encode_answer(tokenizer, [USER], reply("No."), 64)
    assert (rejected.prompt_ids, rejected.answer_ids, rejected.merged) == (alone.prompt_ids, alone.answer_ids, False)
    assert tokens(tokenizer, chosen.answer_ids) == ["Yes", ".", "<|im_end|>"] and chosen.merged is False
    kto = encode_unpaired(tokenizer, Unpaired([USER], reply("No."), False), 64)
    assert (kto.prompt_ids, kto.answer_ids) == (alone.prompt_ids, alone.answer_ids)
    assert encode_unpaired(tokenizer, Unpaired([USER], reply("No."), False), 10).answer_ids == []


def test_an_answers_sequence_is_cut_only_when_it_reaches_the_cut_end():
    from peftsft.data.preference_encode import _answer

    enc = Encoded([1, 2, 3, 4], [IGNORE, IGNORE, 3, 4], True, "text", [(0, 1), (1, 2), (2, 3), (3, 4)])
    whole = _answer(enc.input_ids, 2, 4, enc, True)
    assert (whole.prompt_ids, whole.answer_ids, whole.merged) == ([1, 2], [3, 4], True)
    assert whole.scored == Encoded([1, 2, 3, 4], [IGNORE, IGNORE, 3, 4], True, "text", enc.offsets)
    short = _answer(enc.input_ids, 1, 3, enc, False)
    assert short.scored == Encoded([1, 2, 3], [IGNORE, 2, 3], False, "text", enc.offsets[:3])
    assert _answer(enc.input_ids, 2, 4, Encoded([1, 2, 3, 4], [0] * 4, False, "", enc.offsets), False).scored.truncated is False


def test_built_rows_take_trls_columns_and_name_their_answers():
    from peftsft.data.preference_encode import answer_sides, pair_row, scored_sequence, unpaired_row

    row = pair_row(answer([1, 2], [3]), answer([9, 9], [4, 5]))
    assert row == {"prompt_ids": [1, 2], "chosen_ids": [3], "rejected_ids": [4, 5]}
    assert answer_sides(row) == [("chosen", [3]), ("rejected", [4, 5])]
    kto = unpaired_row(answer([1], [6]), True)
    assert kto == {"prompt_ids": [1], "completion_ids": [6], "label": True}
    assert answer_sides(kto) == [("desirable", [6])]
    assert answer_sides(unpaired_row(answer([1], [7]), False)) == [("undesirable", [7])]
    assert scored_sequence([1, 2], [3, 4]) == {"input_ids": [1, 2, 3, 4], "labels": [IGNORE, IGNORE, 3, 4]}


# ---------------------------------------------------------------------------------------------- reading rows

from peftsft.data.formats import Mapping, RowError  # noqa: E402
from peftsft.data.preference import detect_preference_format, to_preference, unpair  # noqa: E402

MAPPED = Mapping(fields={"prompt": "q", "chosen": "good", "rejected": "bad", "system": "sys", "score_chosen": "sc",
                         "score_rejected": "sr", "completion": "answer", "label": "ok"})
SYSTEM = {"role": "system", "content": "Be brief."}


def refused(row, fmt="preference", mapping=MAPPED) -> str:
    with pytest.raises(RowError) as caught:
        to_preference(row, fmt, mapping)
    return str(caught.value)


def test_formats_are_told_only_by_the_mapped_columns():
    assert detect_preference_format({"good": 1, "bad": 2}, MAPPED) == "preference"
    assert detect_preference_format({"q": 1, "answer": 2, "ok": 3}, MAPPED) == "unpaired_preference"
    for row in ({"chosen": 1, "rejected": 2}, {"good": 1}, {"bad": 1, "q": 2, "answer": 3}, {"q": 1, "answer": 2}):
        with pytest.raises(RowError, match="^cannot tell the preference format of a row with keys "):
            detect_preference_format(row, MAPPED)


def test_a_mapped_flat_pair_takes_its_system_prompt_and_scores_from_the_mapped_columns():
    row = {"q": "Q?", "good": "A", "bad": "B", "sys": "Be brief.", "sc": "2", "sr": 1}
    assert to_preference(row, "auto", MAPPED) == Pair([SYSTEM, USER], reply("A"), reply("B"))
    assert to_preference(row, "preference", MAPPED) == Pair([SYSTEM, USER], reply("A"), reply("B"))
    assert refused(row | {"sc": 1, "sr": 2}) == (
        "score_chosen (1) is below score_rejected (2): chosen and rejected look swapped")
    assert refused(row | {"sc": 2.5, "sr": 2.5}) == "chosen and rejected both score 2.5: a tie prefers nothing"
    assert refused(row | {"sc": [1], "sr": 2}) == "scores must be numbers (got [1] and 2)"
    assert refused(row | {"sc": 1, "sr": "low"}) == "scores must be numbers (got 1 and 'low')"
    assert to_preference(row | {"sc": 1, "sr": None}, "preference", MAPPED).chosen == reply("A")
    assert to_preference(row | {"sc": "", "sr": 5}, "preference", MAPPED).chosen == reply("A")
    assert to_preference({"q": "Q?", "good": "A", "bad": "B", "score_chosen": 1, "score_rejected": 2}, "preference",
                         MAPPED).rejected == reply("B")  # unmapped score columns are not the row's scores


def test_a_mapped_pair_names_its_mapped_columns_when_wrong():
    assert refused({"q": "Q?", "good": "A"}) == "missing column 'bad' (preference format); the row has ['good', 'q']"
    assert refused({"q": "Q?", "bad": "A"}) == "missing column 'good' (preference format); the row has ['bad', 'q']"
    assert refused({"good": "A", "bad": "B", "prompt": "Q?"}).startswith("missing column 'q': chosen and rejected")
    assert refused({"q": "Q?", "good": [7], "bad": "B"}) == "good[0] is not an object"
    assert refused({"q": "Q?", "good": "A", "bad": [7]}) == "bad[0] is not an object"
    assert refused({"q": [7], "good": "A", "bad": "B"}) == "q[0] is not an object"
    assert refused({"q": 5, "good": "A", "bad": "B"}) == "q must be a string (got int)"
    assert refused({"good": [USER, USER], "bad": [USER, reply("B")]}) == (
        "'good' must end in one assistant reply (got user + user)")
    assert refused({"good": [USER, reply("A")], "bad": [USER, USER]}) == (
        "'bad' must end in one assistant reply (got user + user)")
    assert refused({"q": "Q?", "good": "A", "bad": [reply("x"), reply("B")]}) == (
        "'bad' must end in one assistant reply (got assistant + assistant)")


def test_whole_conversations_take_every_turn_before_the_reply_as_their_prompt():
    history = [USER, reply("first"), {"role": "user", "content": "Again?"}]
    row = {"good": [*history, reply("A")], "bad": [*history, reply("B")]}
    assert to_preference(row, "preference", MAPPED) == Pair(history, reply("A"), reply("B"))
    assert to_preference(row | {"q": " Again? "}, "preference", MAPPED).prompt == history
    assert to_preference(row | {"q": None}, "preference", MAPPED).prompt == history
    assert to_preference(row | {"q": history}, "preference", MAPPED).prompt == history
    assert refused(row | {"q": "Q?"}) == "'q' is not the prompt the chosen and rejected conversations answer (user: 'Again?')"
    assert refused(row | {"q": history[:1]}).startswith("'q' is not the prompt the chosen and rejected")
    assert to_preference(row | {"prompt": "Else?"}, "preference", MAPPED).prompt == history  # not the mapped column
    other = {"good": [*history, reply("A")], "bad": [USER, reply("other"), history[2], reply("B")]}
    assert refused(other) == "'good' and 'bad' answer different prompts: turn 1 differs (assistant: 'first' vs assistant: 'other')"
    assert refused({"good": [USER, reply("A")], "bad": [reply("B")]}) == (
        "'good' and 'bad' answer different prompts: 2 vs 1 turns")


def test_a_prompt_column_beside_conversations_without_a_user_turn_shows_an_empty_question():
    row = {"good": [SYSTEM, reply("A")], "bad": [SYSTEM, reply("B")], "q": "Q?"}
    assert refused(row) == "'q' is not the prompt the chosen and rejected conversations answer (user: '')"


def test_the_same_answer_twice_is_refused_unless_its_tool_calls_differ():
    call = [{"type": "function", "function": {"name": "f", "arguments": "{}"}}]
    same = {"prompt": "Q?", "chosen": [reply("A") | {"tool_calls": call}], "rejected": [reply(" A\n")]}
    assert to_preference(same, "preference").chosen["tool_calls"][0]["function"]["name"] == "f"
    assert refused({"prompt": "Q?", "chosen": "A\n", "rejected": " A"}, mapping=Mapping()) == (
        "chosen and rejected are the same answer: the pair prefers nothing")
    both = {"prompt": "Q?", "chosen": [reply("A") | {"tool_calls": call}], "rejected": [reply("A") | {"tool_calls": call}]}
    assert refused(both, mapping=Mapping()) == "chosen and rejected are the same answer: the pair prefers nothing"


def test_a_system_column_leads_a_prompt_without_one():
    row = {"q": "Q?", "good": "A", "bad": "B"}
    assert to_preference(row | {"sys": "  "}, "preference", MAPPED).prompt == [USER]
    assert to_preference(row | {"sys": 5}, "preference", MAPPED).prompt == [USER]
    assert to_preference(row | {"system": "S"}, "preference", MAPPED).prompt == [USER]
    own = {"role": "system", "content": "Own."}
    assert to_preference(row | {"q": [own, USER], "sys": "S"}, "preference", MAPPED).prompt == [own, USER]
    tool = {"role": "tool", "content": "42"}
    assert to_preference(row | {"q": [USER, reply("calling"), tool]}, "preference", MAPPED).prompt[-1] == tool


@pytest.mark.parametrize(("prompt", "roles"), [
    ([{"role": "tool", "content": "42"}], "tool"),
    ([USER, reply("x")], "user + assistant"),
])
def test_a_prompt_must_hold_a_user_turn_and_end_in_one_a_reply_answers(prompt, roles):
    assert refused({"q": prompt, "good": "A", "bad": "B", "sys": "S" if prompt else ""}) == (
        "the prompt must end in a user (or tool) turn for the answers to reply to "
        f"(got {'system + ' if prompt else ''}{roles})")


def test_an_empty_prompt_is_named_as_nothing():
    from peftsft.data.preference import _with_system

    with pytest.raises(RowError, match=r"to reply to \(got nothing\)$"):
        _with_system([], {"system": "S"}, Mapping())


def test_a_mapped_unpaired_row_reads_its_mapped_columns():
    row = {"q": "Q?", "answer": "A.", "ok": "yes", "sys": "Be brief."}
    assert to_preference(row, "auto", MAPPED) == Unpaired([SYSTEM, USER], reply("A."), True)
    assert to_preference(row | {"answer": [reply("A.")], "ok": 0}, "unpaired_preference", MAPPED) == Unpaired(
        [SYSTEM, USER], reply("A."), False)
    assert refused({"q": "Q?", "answer": "A."}, "unpaired_preference") == (
        "missing column 'ok' (unpaired_preference format); the row has ['answer', 'q']")
    assert refused({"answer": "A.", "ok": 1}, "unpaired_preference").startswith("missing column 'q' (unpaired")
    assert refused(row | {"answer": [USER, reply("A.")]}, "unpaired_preference") == (
        "'answer' must be one assistant reply (got user + assistant)")
    assert refused(row | {"answer": [7]}, "unpaired_preference") == "answer[0] is not an object"
    assert refused(row | {"answer": 7}, "unpaired_preference") == "answer must be a string (got int)"
    assert refused(row | {"ok": "sure"}, "unpaired_preference") == (
        "label must be true (desirable) or false (undesirable), got 'sure'")
    assert refused(row | {"q": [SYSTEM]}, "unpaired_preference") == (
        "the prompt must end in a user (or tool) turn for the answers to reply to (got system)")


def test_a_pair_unpairs_into_its_desirable_chosen_and_undesirable_rejected_answers():
    assert unpair(Pair([USER], reply("A"), reply("B"))) == [Unpaired([USER], reply("A"), True),
                                                          Unpaired([USER], reply("B"), False)]
    assert to_preference({"chosen": "A", "rejected": "B", "prompt": "Q?"}, "preference") == Pair(
        [USER], reply("A"), reply("B"))


@pytest.mark.parametrize("kept_side", ["chosen", "rejected"])
def test_a_pair_with_an_answer_cut_away_keeps_each_answers_own_prompt(monkeypatch, kept_side):
    from peftsft.data import preference_encode as pe

    made = {"chosen": answer([1, 2, 3], [4] if kept_side == "chosen" else []),
            "rejected": answer([1, 2, 5], [6] if kept_side == "rejected" else [])}
    monkeypatch.setattr(pe, "encode_answer", lambda tok, prompt, reply, max_length: made[reply["content"]])
    chosen, rejected = pe.encode_pair("TOK", Pair([USER], reply("chosen"), reply("rejected")), 9)
    assert (chosen, rejected) == (made["chosen"], made["rejected"])


def test_a_pair_splits_both_prompts_where_they_first_differ(monkeypatch):
    from peftsft.data import preference_encode as pe

    made = {"chosen": answer([1, 2, 3], [4]), "rejected": answer([1, 2, 5, 7], [6])}
    seen = []
    monkeypatch.setattr(pe, "encode_answer", lambda tok, prompt, reply, max_length: seen.append(
        (tok, prompt, max_length)) or made[reply["content"]])
    chosen, rejected = pe.encode_pair("TOK", Pair([USER], reply("chosen"), reply("rejected")), 9)
    assert seen == [("TOK", [USER], 9)] * 2
    assert (chosen.prompt_ids, chosen.answer_ids, rejected.prompt_ids, rejected.answer_ids) == (
        [1, 2], [3, 4], [1, 2], [5, 7, 6])
    assert chosen.merged and rejected.merged


def test_a_template_error_stops_the_build_when_bad_rows_fail(tokenizer):
    from jinja2 import TemplateError

    enc = pb.Encoder(tokenizer, DataSection(on_bad_row="fail"), pb.Tally())
    with pytest.raises(UserError) as caught:
        enc._guarded(lambda: (_ for _ in ()).throw(TemplateError("no system")), items_of(USER)[0])
    assert caught.value.message == "p.jsonl:1: the chat template cannot render it: no system"
    assert enc._guarded(lambda: "encoded", items_of(USER)[0]) == "encoded" and enc.found.bad_rows.total == 0


def test_a_prompt_column_beside_conversations_is_their_last_user_turn_of_several():
    asks = [{"role": "user", "content": q} for q in ("One?", "Two?", "Three?")]
    history = [asks[0], reply("1"), asks[1], reply("2"), asks[2]]
    row = {"good": [*history, reply("A")], "bad": [*history, reply("B")]}
    assert to_preference(row | {"q": "Three?"}, "preference", MAPPED).prompt == history
    assert refused(row | {"q": "Two?"}) == (
        "'q' is not the prompt the chosen and rejected conversations answer (user: 'Three?')")


def test_only_the_last_reply_of_a_conversation_is_the_answer(tokenizer):
    from peftsft.data.preference_encode import encode_answer

    prompt = [USER, reply("Earlier."), {"role": "user", "content": "And now?"}]
    got = encode_answer(tokenizer, prompt, reply("Now."), 64)
    assert tokens(tokenizer, got.answer_ids) == ["Now", ".", "<|im_end|>"]
    assert "Earlier.<|im_end|>" in tokenizer.decode(got.prompt_ids) and got.merged is False
