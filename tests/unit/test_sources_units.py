"""Where a dataset's rows come from, on its own: what counts as a Hub id, the problems `validate` names for a
dataset path, the files of a directory, every row with where it came from (file:line, hub id[split]#index), the raw
rows the worker processes parse, and the fingerprint that keys the cache."""

from __future__ import annotations

import hashlib
import json
import pickle

import pytest

from peftsft.core.config import DatasetSpec
from peftsft.core.errors import UserError
from peftsft.data import sources
from peftsft.data.sources import data_files, fingerprint, iter_raw_rows, iter_rows, looks_like_hub_id, source_problem
from tests.conftest import write_jsonl

KINDS = ".jsonl/.json/.parquet/.csv"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def hub(monkeypatch):
    """`load_hub_dataset` replaced by two rows (and a datasets fingerprint); records the specs it was asked for."""
    asked = []

    class Dataset(list):
        _fingerprint = "hub-fp"

    def load(spec):
        asked.append(spec)
        return Dataset([{"text": "a"}, {"text": "b", "n": 2}])

    monkeypatch.setattr(sources, "load_hub_dataset", load)
    return asked


# ---------------------------------------------------------------------------------------------- hub ids


@pytest.mark.parametrize("path", ["name", "owner/name", "HuggingFaceH4/ultrachat_200k"])
def test_a_name_or_owner_name_without_a_suffix_is_a_hub_id(path):
    assert looks_like_hub_id(path)


@pytest.mark.parametrize("path", [
    "", "a/b/c", "/abs", "owner/", "/", "./name", "../owner/name", ".hidden", "~/name", "~user",
    "data.jsonl", "owner/name.csv",
])
def test_paths_files_and_deeper_names_are_not_hub_ids(path):
    assert not looks_like_hub_id(path)


# ---------------------------------------------------------------------------------------------- validate's check


def test_a_readable_dataset_path_has_no_problem(tmp_path):
    (tmp_path / "d").mkdir()
    write_jsonl(tmp_path / "d" / "a.jsonl", [{"text": "x"}])
    assert source_problem(str(tmp_path / "d")) is None
    assert source_problem(str(tmp_path / "d" / "a.jsonl")) is None
    assert source_problem("owner/name") is None


def test_a_directory_without_dataset_files_names_the_kinds_it_looked_for(tmp_path):
    (tmp_path / "notes.txt").write_text("x", encoding="utf-8")
    assert source_problem(str(tmp_path)) == f"directory has no {KINDS} files: {tmp_path}"


def test_a_missing_file_is_not_found(tmp_path):
    assert source_problem(str(tmp_path / "d.jsonl")) == f"file not found: {tmp_path / 'd.jsonl'}"
    assert source_problem("a/b/c") == "file not found: a/b/c"


# ---------------------------------------------------------------------------------------------- a directory's files


def test_a_directorys_dataset_files_are_found_recursively_in_order_without_hidden_ones(tmp_path):
    root = tmp_path / ".cache" / "data"  # a hidden folder above the dataset directory does not count
    for name in ["b.csv", "a.jsonl", "sub/c.parquet", "sub/d.json", "notes.txt", ".hidden.jsonl",
                 ".git/e.jsonl", "sub/.x/f.jsonl"]:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("", encoding="utf-8")
    (root / "folder.jsonl").mkdir()  # a directory named like a file is not one
    assert data_files(root) == [root / "a.jsonl", root / "b.csv", root / "sub/c.parquet", root / "sub/d.json"]


# ---------------------------------------------------------------------------------------------- rows


def test_a_directorys_rows_come_file_by_file_with_their_lines(tmp_path):
    write_jsonl(tmp_path / "b.jsonl", [{"text": "b1"}])
    write_jsonl(tmp_path / "a.jsonl", [{"text": "a1"}, {"text": "a2"}])
    rows = list(iter_rows(DatasetSpec(path=str(tmp_path)), "fail", []))
    assert [(row.data["text"], row.where) for row in rows] == [
        ("a1", f"{tmp_path / 'a.jsonl'}:1"), ("a2", f"{tmp_path / 'a.jsonl'}:2"), ("b1", f"{tmp_path / 'b.jsonl'}:1")
    ]


def test_a_directory_without_dataset_files_has_no_rows_to_give(tmp_path):
    for read in (lambda spec: iter_rows(spec, "fail", []), iter_raw_rows):
        with pytest.raises(UserError) as info:
            list(read(DatasetSpec(path=str(tmp_path))))
        assert info.value.message == f"{tmp_path}: no {KINDS} files in this directory"


@pytest.mark.parametrize("as_directory", [False, True])
def test_bad_rows_are_skipped_or_fail_as_asked(tmp_path, as_directory):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a"}\nnot json\n', encoding="utf-8")
    spec = DatasetSpec(path=str(tmp_path if as_directory else path))
    bad: list[str] = []
    assert [row.where for row in iter_rows(spec, "skip", bad)] == [f"{path}:1"]
    assert len(bad) == 1 and bad[0].startswith(f"{path}:2: malformed JSON")
    with pytest.raises(UserError, match=f"{path}:2: malformed JSON"):
        list(iter_rows(spec, "fail", []))


def test_a_missing_file_that_is_no_hub_id_is_not_found(tmp_path, hub):
    with pytest.raises(UserError, match="dataset not found"):
        list(iter_rows(DatasetSpec(path=str(tmp_path / "d.jsonl")), "fail", []))
    with pytest.raises(UserError, match="dataset not found: a/b/c"):
        list(iter_rows(DatasetSpec(path="a/b/c"), "fail", []))
    assert hub == []


def test_a_local_file_named_like_a_hub_id_is_read_as_the_file(tmp_path, monkeypatch, hub):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "owner").mkdir()
    (tmp_path / "owner" / "name").write_text('{"text": "x"}\n', encoding="utf-8")
    with pytest.raises(UserError, match="unsupported dataset file type ''"):  # read as a file, not from the Hub
        list(iter_rows(DatasetSpec(path="owner/name"), "fail", []))
    assert hub == []


def test_hub_rows_are_named_by_the_id_split_and_index(hub):
    spec = DatasetSpec(path="owner/name", split="test")
    rows = list(iter_rows(spec, "fail", []))
    assert hub == [spec]
    assert [(row.data, row.where) for row in rows] == [
        ({"text": "a"}, "owner/name[test]#0"), ({"text": "b", "n": 2}, "owner/name[test]#1")
    ]
    assert all(type(row.data) is dict for row in rows)


# ---------------------------------------------------------------------------------------------- raw rows


def test_jsonl_rows_stay_text_for_the_workers_to_parse(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a"}\n\nnot json\n', encoding="utf-8")
    assert list(iter_raw_rows(DatasetSpec(path=str(path)))) == [
        ('{"text": "a"}\n', None, f"{path}:1"), ("not json\n", None, f"{path}:3")
    ]


def test_other_files_rows_come_pickled(tmp_path):
    write_jsonl(tmp_path / "b.jsonl", [{"text": "j"}])
    (tmp_path / "a.json").write_text(json.dumps([{"text": "a"}, {"text": "b"}]), encoding="utf-8")
    (tmp_path / "c.csv").write_text("text,n\nx,1\n", encoding="utf-8")
    raw = list(iter_raw_rows(DatasetSpec(path=str(tmp_path))))
    assert [(line, where) for line, _, where in raw] == [
        (None, f"{tmp_path / 'a.json'}[0]"), (None, f"{tmp_path / 'a.json'}[1]"),
        ('{"text": "j"}\n', f"{tmp_path / 'b.jsonl'}:1"), (None, f"{tmp_path / 'c.csv'}:2"),
    ]
    assert [pickle.loads(data) for _, data, _ in raw if data is not None] == [
        {"text": "a"}, {"text": "b"}, {"text": "x", "n": "1"}
    ]
    assert raw[2][1] is None


def test_a_local_directory_named_like_a_hub_id_gives_its_jsonl_lines(tmp_path, monkeypatch, hub):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    write_jsonl(tmp_path / "data" / "a.jsonl", [{"text": "x"}])
    assert list(iter_raw_rows(DatasetSpec(path="data"))) == [('{"text": "x"}\n', None, "data/a.jsonl:1")]
    assert hub == []


def test_hub_rows_come_pickled_with_their_index(hub):
    raw = list(iter_raw_rows(DatasetSpec(path="owner/name")))
    assert [(line, pickle.loads(data), where) for line, data, where in raw] == [
        (None, {"text": "a"}, "owner/name[train]#0"), (None, {"text": "b", "n": 2}, "owner/name[train]#1")
    ]


def test_a_missing_jsonl_file_is_not_found_when_its_raw_rows_are_read(tmp_path, hub):
    with pytest.raises(UserError) as info:
        list(iter_raw_rows(DatasetSpec(path=str(tmp_path / "d.jsonl"))))
    assert info.value.message == f"dataset not found: {tmp_path / 'd.jsonl'}"
    assert hub == []


# ---------------------------------------------------------------------------------------------- fingerprints


def test_a_files_fingerprint_hashes_the_hash_of_its_bytes(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"text": "x"}\n')
    assert sources._file_hash(path) == sha(b'{"text": "x"}\n')
    assert fingerprint(DatasetSpec(path=str(path))) == sha(sha(b'{"text": "x"}\n').encode())


def test_a_file_larger_than_one_read_is_hashed_whole(tmp_path):
    data = bytes(range(256)) * 8193  # a little over 2 MiB: three reads
    (tmp_path / "big.parquet").write_bytes(data)
    assert sources._file_hash(tmp_path / "big.parquet") == sha(data)


def test_a_directorys_fingerprint_covers_each_files_name_and_content(tmp_path):
    (tmp_path / "sub").mkdir()
    write_jsonl(tmp_path / "sub" / "b.jsonl", [{"text": "b"}])
    write_jsonl(tmp_path / "a.jsonl", [{"text": "a"}])
    a, b = (sha((tmp_path / name).read_bytes()) for name in ("a.jsonl", "sub/b.jsonl"))
    expected = sha(b"a.jsonl\0" + a.encode() + b"sub/b.jsonl\0" + b.encode())
    assert fingerprint(DatasetSpec(path=str(tmp_path))) == expected
    (tmp_path / "a.jsonl").rename(tmp_path / "c.jsonl")  # same bytes, another name
    assert fingerprint(DatasetSpec(path=str(tmp_path))) != expected


def test_a_hub_datasets_fingerprint_is_its_datasets_fingerprint(hub):
    spec = DatasetSpec(path="owner/name", subset="cfg", split="test")
    assert fingerprint(spec) == sha(b"hub-fp")
    assert hub == [spec]


def test_a_missing_path_has_the_fingerprint_of_nothing(tmp_path, hub):
    assert fingerprint(DatasetSpec(path=str(tmp_path / "d.jsonl"))) == sha(b"")
    assert hub == []
