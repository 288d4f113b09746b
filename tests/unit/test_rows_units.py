"""Unit tests of reading dataset files row by row (each row's file:line, each error a user sees, bad rows kept
and counted) and of replay's pool, counts, draws and interleaving."""

from __future__ import annotations

import pickle

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from peftsft.core.config import DataSection
from peftsft.core.errors import UserError
from peftsft.data import replay, rows
from peftsft.data.rows import BadRows, Row, jsonl_lines, parse_jsonl_row, read_rows, report_bad_row

SKIP_HINT = 'fix the row, or set [data] on_bad_row = "skip" to skip and count bad rows'


def read(path, *args):
    return [(row.data, row.where) for row in read_rows(path, *args)]


# ---------------------------------------------------------------------------------------------- read_rows


def test_a_missing_dataset_says_where_to_fix_its_path(tmp_path):
    with pytest.raises(UserError) as caught:
        read(tmp_path / "none.jsonl")
    assert caught.value.message == f"dataset not found: {tmp_path / 'none.jsonl'}"
    assert caught.value.hint == "check [data] datasets.path in the recipe"
    (tmp_path / "dir.jsonl").mkdir()
    with pytest.raises(UserError, match="^dataset not found"):
        read(tmp_path / "dir.jsonl")


def test_an_unsupported_file_type_names_the_types_read(tmp_path):
    (tmp_path / "d.txt").write_text("x")
    with pytest.raises(UserError) as caught:
        read(tmp_path / "d.txt")
    assert caught.value.message == f"{tmp_path / 'd.txt'}: unsupported dataset file type '.txt'"
    assert caught.value.hint == "use one of .jsonl, .json, .parquet, .csv"


def test_each_suffix_is_read_by_its_own_reader(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"a": 1}\n')
    (tmp_path / "d.json").write_text('[{"a": 2}]')
    (tmp_path / "d.csv").write_text("a\n3\n")
    pq.write_table(pa.table({"a": [4]}), tmp_path / "d.parquet")
    assert read(tmp_path / "d.jsonl") == [({"a": 1}, f"{tmp_path / 'd.jsonl'}:1")]
    assert read(str(tmp_path / "d.json")) == [({"a": 2}, f"{tmp_path / 'd.json'}[0]")]
    assert read(tmp_path / "d.csv") == [({"a": "3"}, f"{tmp_path / 'd.csv'}:2")]
    assert read(tmp_path / "d.parquet") == [({"a": 4}, f"{tmp_path / 'd.parquet'}:row 1")]
    assert all(isinstance(row, Row) for row in read_rows(tmp_path / "d.jsonl"))


# ---------------------------------------------------------------------------------------------- jsonl


def test_jsonl_lines_skip_blank_lines_keep_line_numbers_and_drop_a_leading_bom(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"a": 1}\n\n   \n{"b": "\xc3\xa9"}\n')
    assert list(jsonl_lines(path)) == [('{"a": 1}\n', f"{path}:1"), ('{"b": "é"}\n', f"{path}:4")]
    path.write_bytes(b'{"a": 1}\n\xef\xbb\xbf{"b": 2}\n')  # a BOM is only a BOM on the first line
    assert list(jsonl_lines(path))[1][0] == '\ufeff{"b": 2}\n'


def test_a_jsonl_file_that_is_not_utf8_names_its_line_and_byte(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"a": 1}\n{"b": "caf\xe9"}\n')
    with pytest.raises(UserError) as caught:
        list(jsonl_lines(path))
    assert caught.value.message == (f"{path}:2: cannot read dataset: not UTF-8 (byte 0xe9 at offset 19); the file "
                                    "looks like a legacy code page such as Windows-1252")


def test_a_utf16_jsonl_file_is_refused_as_a_dataset(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes('{"a": 1}\n'.encode("utf-16"))
    with pytest.raises(UserError, match=r"cannot read dataset: the file is UTF-16"):
        list(jsonl_lines(path))


def test_a_jsonl_file_that_cannot_be_read_is_a_user_error(tmp_path, monkeypatch):
    path = tmp_path / "d.jsonl"
    path.write_text("{}\n")

    def refuse(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(type(path), "open", refuse)
    with pytest.raises(UserError) as caught:
        list(jsonl_lines(path))
    assert caught.value.message == f"{path}: cannot read dataset: Permission denied"
    monkeypatch.setattr(type(path), "open", lambda *a, **k: (_ for _ in ()).throw(OSError("gone")))
    with pytest.raises(UserError) as caught:
        list(jsonl_lines(path))
    assert caught.value.message == f"{path}: cannot read dataset: gone"


def test_a_jsonl_row_must_be_a_json_object():
    assert parse_jsonl_row('{"a": [1]}') == {"a": [1]} and parse_jsonl_row(b'{"b": 2}') == {"b": 2}
    with pytest.raises(ValueError, match="^a row must be a JSON object$"):
        parse_jsonl_row("[1, 2]")
    with pytest.raises(ValueError):
        parse_jsonl_row("{nope")


def test_malformed_jsonl_rows_stop_the_read_or_are_skipped_and_noted(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"a": 1}\n[1]\n{oops\n{"a": 2}\n')
    with pytest.raises(UserError) as caught:
        read(path)
    assert caught.value.message == f"{path}:2: malformed JSON: a row must be a JSON object"
    assert caught.value.hint == SKIP_HINT
    bad = []
    assert read_rows(path, "skip", bad) is not None
    assert [(r.data, r.where) for r in read_rows(path, "skip", bad)] == [({"a": 1}, f"{path}:1"), ({"a": 2}, f"{path}:4")]
    assert bad[0] == f"{path}:2: malformed JSON: a row must be a JSON object"
    assert bad[1].startswith(f"{path}:3: malformed JSON: Expecting property name") and len(bad) == 2
    assert read(path, "skip") == [({"a": 1}, f"{path}:1"), ({"a": 2}, f"{path}:4")]  # no list given: none kept


# ---------------------------------------------------------------------------------------------- json, parquet, csv


def test_a_json_dataset_marks_items_that_are_not_objects(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('[{"a": 1}, 5, "x"]')
    assert read(path) == [({"a": 1}, f"{path}[0]"), ({"_invalid": 5}, f"{path}[1]"), ({"_invalid": "x"}, f"{path}[2]")]


def test_a_json_dataset_that_is_not_a_list_or_not_json_says_what_a_json_dataset_is(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('{"a": 1}')
    with pytest.raises(UserError) as caught:
        read(path)
    assert caught.value.message == f"{path}: a .json dataset must be a list of objects"
    assert caught.value.hint == "or use .jsonl, one per line"
    path.write_text("[1,")
    with pytest.raises(UserError) as caught:
        read(path)
    assert caught.value.message.startswith(f"{path}: cannot read dataset: Expecting value")
    assert caught.value.hint == "a .json dataset is a list of objects"


def test_parquet_rows_are_numbered_across_record_batches(tmp_path, monkeypatch):
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"a": [1, 2, 3]}), path, row_group_size=2)
    seen = []
    real = pq.ParquetFile.iter_batches

    def batches(self, batch_size, **kwargs):
        seen.append(batch_size)
        return real(self, batch_size=2, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", batches)
    assert read(path) == [({"a": i}, f"{path}:row {i}") for i in (1, 2, 3)]
    assert seen == [4096]


def test_a_damaged_parquet_file_is_a_user_error(tmp_path):
    path = tmp_path / "d.parquet"
    path.write_bytes(b"not parquet at all")
    with pytest.raises(UserError) as caught:
        read(path)
    assert caught.value.message.startswith(f"{path}: cannot read parquet dataset: ")
    assert caught.value.hint is None


def test_a_user_error_while_reading_parquet_passes_unchanged(tmp_path, monkeypatch):
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"a": [1]}), path)
    monkeypatch.setattr(rows, "Row", lambda data, where: (_ for _ in ()).throw(UserError("mine")))
    with pytest.raises(UserError) as caught:
        read(path)
    assert caught.value.message == "mine"


def test_csv_rows_are_named_by_the_line_they_start_on(tmp_path):
    path = tmp_path / "d.csv"
    path.write_bytes('\ufeffq,a\n"two\nlines",x\nthree,y\n'.encode())
    assert read(path) == [({"q": "two\nlines", "a": "x"}, f"{path}:2"), ({"q": "three", "a": "y"}, f"{path}:4")]


def test_a_quoted_csv_field_keeps_its_own_line_breaks(tmp_path):
    path = tmp_path / "d.csv"
    path.write_bytes(b'q,a\r\n"one\r\ntwo",x\r\n')
    assert read(path) == [({"q": "one\r\ntwo", "a": "x"}, f"{path}:2")]


def test_a_malformed_csv_row_names_its_line(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('q\n"two\nlines"\n' + "x" * 200_000 + "\n")  # past csv's field limit, after a row of 2 lines
    with pytest.raises(UserError) as caught:
        read(path)
    assert caught.value.message == f"{path}:4: malformed CSV: field larger than field limit (131072)"


def test_a_csv_file_that_is_not_utf8_names_its_line(tmp_path):
    path = tmp_path / "d.csv"
    path.write_bytes(b"q,a\ncaf\xe9,1\n")
    with pytest.raises(UserError) as caught:
        read(path)
    assert caught.value.message.startswith(f"{path}:2: cannot read dataset: not UTF-8 (byte 0xe9")


def test_a_csv_file_that_cannot_be_opened_names_the_reason(tmp_path, monkeypatch):
    path = tmp_path / "d.csv"
    path.write_text("q\n1\n")
    monkeypatch.setattr(type(path), "open", lambda *a, **k: (_ for _ in ()).throw(OSError("locked")))
    with pytest.raises(UserError) as caught:
        read(path)
    assert caught.value.message == f"{path}: cannot read dataset: locked"


def test_a_utf16_csv_is_refused_as_a_dataset(tmp_path):
    path = tmp_path / "d.csv"
    path.write_bytes("q\n1\n".encode("utf-16"))
    with pytest.raises(UserError, match="cannot read dataset: the file is UTF-16"):
        read(path)


# ---------------------------------------------------------------------------------------------- bad rows


def test_bad_rows_count_every_one_and_keep_the_first_hundred():
    bad = BadRows()
    assert bad.total == 0 and BadRows.LIMIT == 100
    for i in range(102):
        bad.append(f"r{i}")
    assert len(bad) == 100 and bad.total == 102 and bad[-1] == "r99"
    assert BadRows(["a", "b"]).total == 2 and BadRows(["a"], total=9).total == 9


def test_bad_rows_found_later_fill_the_free_places_and_add_their_total():
    first = BadRows([f"a{i}" for i in range(98)])
    first.extend(BadRows(["b0", "b1", "b2"], total=40))
    assert len(first) == 100 and first[-2:] == ["b0", "b1"] and first.total == 138
    full = BadRows([f"a{i}" for i in range(100)], total=120)
    full.extend(["c"])  # a plain list counts its length
    assert len(full) == 100 and full.total == 121
    back = pickle.loads(pickle.dumps(BadRows(["x"], total=5)))
    assert type(back) is BadRows and list(back) == ["x"] and back.total == 5


def test_a_bad_row_stops_the_run_or_is_noted():
    with pytest.raises(UserError) as caught:
        report_bad_row("f.jsonl:3", "wrong", "fail", [])
    assert (caught.value.message, caught.value.hint) == ("f.jsonl:3: wrong", SKIP_HINT)
    bad = []
    report_bad_row("f.jsonl:3", "wrong", "skip", bad)
    assert bad == ["f.jsonl:3: wrong"]


# ---------------------------------------------------------------------------------------------- replay


def test_the_replay_pool_is_the_users_file_or_the_shipped_chat_pool():
    spec = replay.replay_spec(DataSection(replay=0.2, replay_path="mine.jsonl"))
    assert (spec.path, spec.format) == ("mine.jsonl", "auto")
    spec = replay.replay_spec(DataSection(replay=0.2))
    assert (spec.path, spec.format) == (str(replay.REPLAY_POOL), "messages")
    assert replay.REPLAY_POOL.name == "replay.jsonl" and replay.REPLAY_POOL.is_file()


def test_the_replay_count_rounds_the_share_of_all_rows():
    assert replay.replay_count(10, 0.15) == 2  # 1.76 → 2
    assert replay.replay_count(10, 0.1) == 1  # 1.11 → 1
    assert replay.replay_count(3, 1e-9) == 0 and replay.replay_count(5, 0.0) == 0


def test_draws_are_seeded_subsets_after_whole_passes_over_the_pool():
    pool = list(range(5))
    assert replay.draw_replay([], 3, 0) == [] and replay.draw_replay(pool, 0, 0) == []
    assert replay.draw_replay(pool, -1, 0) == [] and len(replay.draw_replay(pool, 1, 0)) == 1
    three = replay.draw_replay(pool, 3, 1)
    assert len(three) == 3 == len(set(three)) and three == replay.draw_replay(pool, 3, 1)
    twelve = replay.draw_replay(pool, 12, 1)
    assert sorted(twelve[:5]) == pool == sorted(twelve[5:10]) and len(set(twelve[10:])) == 2 and len(twelve) == 12
    import random

    rng = random.Random("replay-1")
    assert three == rng.sample(pool, 3)
    assert replay.draw_replay(pool, 5, 1) != replay.draw_replay(pool, 5, 2)


def test_replay_rows_are_spread_evenly_with_task_rows_first_on_a_tie():
    assert replay.interleave_order(2, 2).tolist() == [0, 2, 1, 3]
    assert replay.interleave_order(3, 1).tolist() == [0, 1, 3, 2]
    assert replay.interleave_order(0, 0).tolist() == []
