"""Encoding, Arrow and packing pieces of the data build checked on their own: what a run of rows adds up to, the
batches it writes, bad rows the template refuses, Arrow token lists and windows, and best-fit-decreasing rows."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pytest

from peftsft.core.config import DataSection
from peftsft.core.errors import UserError
from peftsft.data import arrow, encoding, packing
from peftsft.data.contract import ReplyChecks
from peftsft.data.encoding import Found, add_counts, content_of
from peftsft.data.masking import IGNORE
from peftsft.data.rows import BadRows
from peftsft.data.templates import end_of_turn, generation_header
from peftsft.data.tools import ToolChat
from tests.unit.test_data import tok  # noqa: F401 - fixture: the template put back


def turns(question: str, answer: str = "Sure.") -> str:
    return json.dumps([{"role": "user", "content": question}, {"role": "assistant", "content": answer}])


def items_of(contents: list[str], tools: list | None = None):
    from datasets import Dataset

    tools = tools or [None] * len(contents)
    where = [f"f:{i + 1}" for i in range(len(contents))]
    return Dataset.from_dict({"content": contents, "tools": tools, "where": where})


def markers(tokenizer) -> dict:
    return {"eot": end_of_turn(tokenizer), "eos": tokenizer.eos_token, "header": generation_header(tokenizer)}


# ---------------------------------------------------------------------------------------------- Found


def test_found_runs_add_up_their_counts_longest_bad_rows_checks_and_lengths():
    first = Found(kept=1, truncated=2, dropped_unsupervised=3, tokens=4, supervised_tokens=5, max_tokens=9,
                  bad_rows=BadRows(["a"]), checks=ReplyChecks(samples=1), lengths=[np.array([4], np.int32)])
    later = Found(kept=10, truncated=20, dropped_unsupervised=30, tokens=40, supervised_tokens=50, max_tokens=7,
                  bad_rows=BadRows(["b"], total=3), checks=ReplyChecks(samples=2, replies=2),
                  lengths=[np.array([5, 6], np.int32)])
    first.merge(later)
    assert (first.kept, first.truncated, first.dropped_unsupervised, first.tokens, first.supervised_tokens,
            first.max_tokens) == (11, 22, 33, 44, 55, 9)
    assert list(first.bad_rows) == ["a", "b"] and first.bad_rows.total == 4
    assert (first.checks.samples, first.checks.replies) == (3, 2)
    assert first.all_lengths().tolist() == [4, 5, 6] and later.lengths == [later.lengths[0]]
    add_counts(later, Found(max_tokens=12))
    assert later.max_tokens == 12 and later.kept == 10


def test_a_run_without_samples_has_no_lengths():
    lengths = Found().all_lengths()
    assert lengths.dtype == np.int32 and lengths.shape == (0,)


def test_stored_content_is_the_conversation_with_its_tool_schemas():
    schema = [{"type": "function", "function": {"name": "f"}}]
    chat = content_of(turns("Q?"), json.dumps(schema))
    assert isinstance(chat, ToolChat) and chat.tools == schema and chat[0]["content"] == "Q?"
    assert content_of(json.dumps("plain text"), None) == "plain text"
    assert content_of(turns("Q?"), "") == json.loads(turns("Q?")) and not isinstance(content_of(turns("Q?"), None),
                                                                                     ToolChat)


# ---------------------------------------------------------------------------------------------- encoding a batch


def test_a_batch_keeps_supervised_samples_and_counts_cut_and_dropped_ones(tokenizer):
    section = DataSection(max_length=40)
    batch = pa.table({"content": [turns("One?"), turns("Two " * 60 + "?"), turns("Three?", "Yes, " + "and more " * 10),
                                  json.dumps("plain words")],
                      "tools": [None] * 4, "where": ["f:1", "f:2", "f:3", "f:4"]})
    found, ids, labels = Found(), [], []
    encoding.encode_batch(tokenizer, batch, section, markers(tokenizer), found, ids, labels)
    # f:1 fits (36 tokens), f:2's reply is cut away (dropped), f:3 is cut to 40 tokens, the plain text is learned
    assert [len(i) for i in ids] == [36, 40, len(ids[2])] and len(ids[2]) < 40
    assert (found.kept, found.truncated, found.dropped_unsupervised) == (3, 2, 1)
    supervised = [int(np.count_nonzero(lab != IGNORE)) for lab in labels]
    assert found.supervised_tokens == sum(supervised) and supervised[2] == len(ids[2])
    assert found.tokens == sum(len(i) for i in ids) and found.max_tokens == 40
    assert [lab.dtype for lab in labels] == [np.int32] * 3
    assert len(found.lengths) == 1 and found.lengths[0].dtype == np.int32
    assert found.lengths[0].tolist() == [36, 40, len(ids[2])] and found.checks.samples == 3
    encoding.encode_batch(tokenizer, batch.slice(0, 1), section, markers(tokenizer), found, ids, labels)
    assert found.kept == 4 and found.all_lengths().tolist() == [36, 40, len(ids[2]), 36]


def test_rows_the_template_or_the_rows_check_refuse_are_bad_rows(tok):
    # SmolLM2's template, refusing one row outright and rendering another one not prefix-stably
    tok.chat_template = ("{% if messages[0]['content'] == 'template?' %}{{ raise_exception('roles must alternate') }}"
                         "{% endif %}{% if messages[0]['content'] == 'row?' %}{{ messages | length }}{% endif %}"
                         + tok.chat_template)
    batch = pa.table({"content": [turns("row?"), turns("ok?"), turns("template?")], "tools": [None] * 3,
                      "where": ["f:1", "f:2", "f:3"]})
    found, ids, labels = Found(), [], []
    encoding.encode_batch(tok, batch, DataSection(on_bad_row="skip"), markers(tok), found, ids, labels)
    assert list(found.bad_rows) == [
        "f:1: the chat template does not render this conversation prefix-stably; cannot mask it",
        "f:3: the chat template cannot render it: roles must alternate"]
    assert found.kept == 1 and len(ids) == 1
    with pytest.raises(UserError, match=r"^f:3: the chat template cannot render it: roles must alternate"):
        encoding.encode_batch(tok, batch.slice(2), DataSection(), markers(tok), Found(), [], [])


def test_a_run_writes_its_samples_in_batches_and_reports_its_progress(tokenizer, tmp_path, monkeypatch):
    monkeypatch.setattr(encoding, "ENCODE_ROWS", 2)
    monkeypatch.setattr(encoding, "WRITE_ROWS", 4)  # written once 4 rows wait
    items = items_of([turns(f"Q{i}?") for i in range(7)])
    advanced = []
    found = encoding.encode_run(tokenizer, items, np.array([6, 5, 4, 3, 2, 1, 0]), tmp_path / "s.arrow",
                                DataSection(), markers(tokenizer), advanced.append)
    assert advanced == [2, 2, 2, 1] and found.kept == 7
    with pa.OSFile(str(tmp_path / "s.arrow"), "rb") as source:
        batches = list(pa.ipc.open_stream(source))
    assert [b.num_rows for b in batches] == [4, 3] and batches[0].schema == arrow.SAMPLES
    first = batches[0].column("input_ids")[0].as_py()
    assert "Q6?" in tokenizer.decode(first) and set(batches[0].column("labels")[0].as_py()) - {IGNORE}
    found = encoding.encode_run(tokenizer, items, np.array([], dtype=np.int64), tmp_path / "e.arrow",
                                DataSection(), markers(tokenizer), advanced.append)
    with pa.OSFile(str(tmp_path / "e.arrow"), "rb") as source:
        assert pa.ipc.open_stream(source).read_all().num_rows == 0
    assert found.kept == 0


# ---------------------------------------------------------------------------------------------- arrow


def test_token_lists_are_one_int32_list_array_of_the_rows():
    out = arrow.token_lists([np.array([1, 2, 3], np.int64), np.array([], np.int64), np.array([-100])])
    assert out.type == arrow.TOKENS and out.to_pylist() == [[1, 2, 3], [], [-100]]
    assert out.offsets.to_pylist() == [0, 3, 3, 4]
    empty = arrow.token_lists([])
    assert empty.type == arrow.TOKENS and empty.to_pylist() == []


def write(path, first_ids):
    with arrow.writing(path, arrow.SAMPLES) as writer:
        writer.write_table(pa.Table.from_pylist([{"input_ids": [i, i], "labels": [IGNORE, i]} for i in first_ids],
                                                arrow.SAMPLES))
    return path


def test_files_open_as_one_dataset_in_order(tmp_path):
    assert arrow.open_files([]) is None
    one = arrow.open_files([write(tmp_path / "a.arrow", [1, 2])])
    assert one["input_ids"][:] == [[1, 1], [2, 2]] and one.cache_files[0]["filename"].endswith("a.arrow")
    both = arrow.open_files([tmp_path / "a.arrow", write(tmp_path / "b.arrow", [3])])
    assert [row[0] for row in both["input_ids"]] == [1, 2, 3] and both["labels"][2] == [IGNORE, 3]


def test_scan_reads_windows_of_rows_or_the_rows_asked_in_their_order(tmp_path, monkeypatch):
    monkeypatch.setattr(arrow, "WINDOW_ROWS", 4)
    dataset = arrow.open_files([write(tmp_path / "a.arrow", list(range(10)))])
    tables = list(arrow.scan(dataset, batch_rows=3))
    assert [t.num_rows for t in tables] == [3, 1, 3, 1, 2] and all(isinstance(t, pa.Table) for t in tables)
    assert [r[0] for t in tables for r in t.column("input_ids").to_pylist()] == list(range(10))
    picked = list(arrow.scan(dataset, ["labels"], rows=[9, 0, 5, 5, 2], batch_rows=2))
    assert [t.column_names for t in picked] == [["labels"]] * 3
    assert [r[1] for t in picked for r in t.column("labels").to_pylist()] == [9, 0, 5, 5, 2]
    assert list(arrow.scan(dataset, rows=[])) == []
    from datasets import Dataset

    memory = Dataset.from_dict({"input_ids": [[7], [8]]})  # no file behind it: read as it is
    assert [t.column("input_ids").to_pylist() for t in arrow.scan(memory)] == [[[7], [8]]]


def test_take_gives_the_rows_asked_with_the_samples_schema(tmp_path):
    dataset = arrow.open_files([write(tmp_path / "a.arrow", [0, 1, 2, 3])])
    table = arrow.take(dataset, np.array([3, 1]))
    assert table.column("input_ids").to_pylist() == [[3, 3], [1, 1]] and table.schema.metadata is None
    assert table.schema == arrow.SAMPLES
    assert arrow.take(None, [1]).equals(arrow.SAMPLES.empty_table())
    assert arrow.take(dataset, []).equals(arrow.SAMPLES.empty_table())


# ---------------------------------------------------------------------------------------------- packing


@pytest.mark.parametrize(("lengths", "rows"), [
    ([5, 5, 3, 3, 2], 3),  # 5+3, 5+3, 2
    ([8, 8], 2),  # exactly full rows take nothing more
    ([6, 1, 1, 1, 1], 2),  # the best fit is the fullest row that still takes it: 6+1+1, 1+1
    ([4, 3, 2], 2),  # 4+3, then 2 needs a new row
    ([2, 6, 0, 0], 1),  # empty samples are dropped
    ([0], 0),
    ([], 0),
])
def test_best_fit_decreasing_counts_the_rows_trl_packs(lengths, rows):
    assert packing.best_fit_decreasing_rows(lengths, 8) == rows


def test_best_fit_puts_a_sample_in_the_open_row_with_the_least_room_that_fits():
    # 7 and 5 open rows with room 3 and 5 (max 10); 3 goes where 3 is left (a full row), then 4 into the room of 5
    assert packing.best_fit_decreasing_rows([7, 5, 4, 3], 10) == 2
    assert packing.best_fit_decreasing_rows([7, 5, 3, 3], 10) == 2
    assert packing.best_fit_decreasing_rows([6, 5, 4, 4], 10) == 2  # 6+4, 5+4
    assert packing.best_fit_decreasing_rows([6, 6, 4, 4], 10) == 2


def test_packing_statistics_pack_each_block_of_samples_on_its_own(monkeypatch):
    from datasets import Dataset

    monkeypatch.setattr(packing, "MAP_BATCH", 2)  # scanned 16 rows at a time, packed 2 at a time
    lengths = [6, 6, 2, 2] + [3] * 15 + [12]  # the last is cut to max_length
    dataset = Dataset.from_dict({"input_ids": [[1] * n for n in lengths]})
    meter = SimpleNamespace(done=[], advance=lambda n: meter.done.append(n))
    stats = packing.packing_stats(dataset, 8, meter)
    # blocks: [6,6] 2 rows, [2,2] 1, seven [3,3] 7, [3,8] 2
    assert stats == {"rows": 12, "efficiency": round((12 + 4 + 45 + 8) / (12 * 8), 4)}
    assert meter.done == [16, 4]
    assert packing.packing_stats(dataset.select(range(3)), 8) == {"rows": 3, "efficiency": round(14 / 24, 4)}
    assert packing.packing_stats(dataset.select([]), 8) == {"rows": 0, "efficiency": 0.0}


def test_the_reply_checks_follow_the_masking(tokenizer):
    two = json.dumps([{"role": "user", "content": "A?"}, {"role": "assistant", "content": "One."},
                      {"role": "user", "content": "B?"}, {"role": "assistant", "content": "Two."}])
    batch = pa.table({"content": [two], "tools": [None], "where": ["f:1"]})
    for masking, replies in (("assistant", 2), ("last_turn", 1)):
        found = Found()
        encoding.encode_batch(tokenizer, batch, DataSection(masking=masking), markers(tokenizer), found, [], [])
        assert (found.checks.replies, found.checks.closed) == (replies, replies)
