"""The tokenized-dataset cache on its own: the key (which inputs it covers and which it ignores), the tokenizer's
and the code's hashes, entries stored, loaded and refused when damaged, the least recently used pruned, and the
build directories of dead processes removed."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from types import SimpleNamespace

import datasets  # noqa: F401 - imported while collecting, not in the first test that opens an entry
import pyarrow as pa
import pytest

from peftsft.core.config import DataSection, DatasetSpec
from peftsft.data import cache
from peftsft.data.arrow import writing

# ---------------------------------------------------------------------------------------------- the key


class FakeTokenizer:
    def __init__(self, backend: str | None = "BACKEND", template: str | None = "{{ messages }}"):
        if backend is not None:
            self.backend_tokenizer = SimpleNamespace(to_str=lambda: backend)
        self.chat_template = template
        self.bos_token, self.eos_token, self.pad_token = "<s>", "</s>", "<pad>"

    def get_vocab(self) -> dict:
        return {"b": 1, "a": 0}


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_the_tokenizer_hash_covers_its_backend_class_and_special_tokens():
    tokenizer = FakeTokenizer()
    assert cache._tokenizer_hash(tokenizer) == sha('BACKEND["FakeTokenizer", "<s>", "</s>", "<pad>"]')
    tokenizer.pad_token = None
    assert cache._tokenizer_hash(tokenizer) == sha('BACKEND["FakeTokenizer", "<s>", "</s>", null]')


def test_a_tokenizer_without_a_backend_is_hashed_by_its_sorted_vocabulary():
    tokenizer = FakeTokenizer(backend=None)
    assert cache._tokenizer_hash(tokenizer) == sha('[["a", 0], ["b", 1]]["FakeTokenizer", "<s>", "</s>", "<pad>"]')


def test_the_code_hash_covers_every_module_of_the_data_package_in_name_order():
    digest = hashlib.sha256()
    for path in sorted(Path(cache.__file__).parent.glob("*.py")):
        digest.update(path.read_bytes())
    assert cache._code_hash() == digest.hexdigest()


@pytest.mark.parametrize(("settings", "matters"), [
    ({}, False),
    ({"eval_fraction": 0.1}, True),  # the split is drawn
    ({"eval_fraction": 0.1, "eval_path": "eval.jsonl"}, False),  # the eval file is the split
    ({"eval_path": "eval.jsonl"}, False),
    ({"replay": 0.2}, True),  # the replay rows are drawn
    ({"samples": 5}, True),  # mixing draws
    ({"weight": 0.5}, True),
    ({"second": {"weight": 2.0}}, True),  # any dataset's mixing
])
def test_the_seed_matters_only_where_rows_are_drawn(settings, matters):
    spec = {k: settings.pop(k) for k in ("samples", "weight") if k in settings}
    datasets = [DatasetSpec(path="a.jsonl", **spec)]
    if "second" in settings:
        datasets.append(DatasetSpec(path="b.jsonl", **settings.pop("second")))
    assert cache._seed_matters(DataSection(datasets=datasets, **settings)) is matters


@pytest.fixture
def keyed(monkeypatch):
    """The key's inputs made plain: a fixed code hash, a source's fingerprint naming its path and format."""
    monkeypatch.setattr(cache, "_code_hash", lambda: "CODE")
    from peftsft.data import sources

    monkeypatch.setattr(sources, "fingerprint", lambda spec: f"fp {spec.path} {spec.format}")


def expected_key(data: DataSection, tokenizer, **parts) -> str:
    settings = {k: v for k, v in data.model_dump(mode="json").items() if k not in ("enforce_contract", "cache", "num_proc")}
    whole = {"code": "CODE", "settings": settings, "seed": None, "tokenizer": cache._tokenizer_hash(tokenizer),
             "template": tokenizer.chat_template, "sources": [], "eval": None, "replay": None, **parts}
    return hashlib.sha256(json.dumps(whole, sort_keys=True, default=str).encode()).hexdigest()[:24]


def test_the_key_is_24_hex_digits_of_the_code_settings_tokenizer_template_and_sources(keyed):
    tokenizer = FakeTokenizer()
    data = DataSection(datasets=[DatasetSpec(path="a.jsonl"), DatasetSpec(path="b.jsonl", format="alpaca")])
    key = cache.fingerprint(tokenizer, data, seed=7)
    assert key == expected_key(data, tokenizer, sources=["fp a.jsonl auto", "fp b.jsonl alpaca"])
    assert len(key) == 24 and int(key, 16) >= 0


def test_the_key_covers_the_seed_where_it_draws_the_eval_file_read_like_the_first_dataset_and_the_replay_pool(keyed):
    from peftsft.data.replay import REPLAY_POOL

    tokenizer = FakeTokenizer()
    data = DataSection(datasets=[DatasetSpec(path="a.jsonl", format="sharegpt")], eval_fraction=0.1)
    assert cache.fingerprint(tokenizer, data, 7) == expected_key(data, tokenizer, seed=7, sources=["fp a.jsonl sharegpt"])
    data = DataSection(datasets=[DatasetSpec(path="a.jsonl", format="sharegpt")], eval_path="held.jsonl")
    assert cache.fingerprint(tokenizer, data, 7) == expected_key(data, tokenizer, sources=["fp a.jsonl sharegpt"],
                                                                 eval="fp held.jsonl sharegpt")
    data = DataSection(datasets=[DatasetSpec(path="a.jsonl")], replay=0.2)
    assert cache.fingerprint(tokenizer, data, 7) == expected_key(data, tokenizer, seed=7, sources=["fp a.jsonl auto"],
                                                                 replay=f"fp {REPLAY_POOL} messages")
    data = DataSection(datasets=[DatasetSpec(path="a.jsonl")], replay=0.2, replay_path="pool.jsonl")
    assert cache.fingerprint(tokenizer, data, 7) == expected_key(data, tokenizer, seed=7, sources=["fp a.jsonl auto"],
                                                                 replay="fp pool.jsonl auto")


def test_the_key_changes_with_what_changes_tokens_and_not_with_processes_cache_or_contract(keyed):
    tokenizer = FakeTokenizer()
    data = DataSection(datasets=[DatasetSpec(path="a.jsonl")])
    key = cache.fingerprint(tokenizer, data, 1)
    assert cache.fingerprint(tokenizer, data, 2) == key  # nothing drawn: the seed changes nothing
    assert cache.fingerprint(tokenizer, data.model_copy(update={"num_proc": 3, "cache": False,
                                                                "enforce_contract": False}), 1) == key
    assert cache.fingerprint(tokenizer, data.model_copy(update={"max_length": 64}), 1) != key
    assert cache.fingerprint(FakeTokenizer(template="other"), data, 1) != key
    assert cache.fingerprint(FakeTokenizer(backend="OTHER"), data, 1) != key
    drawn = data.model_copy(update={"eval_fraction": 0.2})
    assert cache.fingerprint(tokenizer, drawn, 1) != cache.fingerprint(tokenizer, drawn, 2)


# ---------------------------------------------------------------------------------------------- entries


@pytest.fixture
def root(tmp_path, monkeypatch) -> Path:
    """The cache's directory of entries, under this test's PEFTSFT_CACHE."""
    monkeypatch.setenv("PEFTSFT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "datasets"


def write_rows(path: Path, values: list[int]) -> str:
    schema = pa.schema([("x", pa.int64())])
    with writing(path, schema) as writer:
        writer.write_batch(pa.record_batch([pa.array(values, pa.int64())], schema=schema))
    return path.name


def test_the_cache_is_the_datasets_folder_of_peftsft_cache(root):
    assert cache.cache_dir() == root


def test_a_work_directory_is_a_fresh_build_folder_of_this_process_beside_the_entries(root, monkeypatch):
    cleaned = []
    monkeypatch.setattr(cache, "_remove_abandoned", cleaned.append)
    work = cache.work_dir()
    assert work.parent == root and work.is_dir() and not any(work.iterdir())
    assert work.name.startswith(f".build-{os.getpid()}-")
    assert cleaned == [root]
    assert cache.work_dir() != work


def test_a_kept_build_becomes_its_entry_with_stats_and_files_and_is_opened(root):
    work = cache.work_dir()
    files = {"train": [write_rows(work / "t0.arrow", [1, 2]), write_rows(work / "t1.arrow", [3])],
             "eval": [write_rows(work / "e0.arrow", [9])]}
    train, evals = cache.keep("k1", work, files, {"rows": 3})
    entry = root / "k1"
    assert not work.exists()
    assert json.loads((entry / "stats.json").read_text(encoding="utf-8")) == {"rows": 3}
    assert json.loads((entry / "files.json").read_text(encoding="utf-8")) == files
    assert train["x"] == [1, 2, 3] and evals["x"] == [9]
    assert all(Path(f).parent == entry for f in (c["filename"] for c in train.cache_files))

    train, evals, stats = cache.load("k1")
    assert (train["x"], evals["x"], stats) == ([1, 2, 3], [9], {"rows": 3})


def test_keeping_replaces_a_damaged_entry_and_prunes_the_oldest(root, monkeypatch):
    pruned = []
    monkeypatch.setattr(cache, "_prune", pruned.append)
    (root / "k1").mkdir(parents=True)
    (root / "k1" / "stats.json").write_text("{", encoding="utf-8")
    work = cache.work_dir()
    train, evals = cache.keep("k1", work, {"train": [write_rows(work / "t.arrow", [5])], "eval": []}, {})
    assert train["x"] == [5] and evals is None
    assert sorted(p.name for p in (root / "k1").iterdir()) == ["files.json", "stats.json", "t.arrow"]
    assert pruned == [root]


def test_an_entry_another_process_stored_meanwhile_is_used_and_this_build_removed(root, monkeypatch):
    work = cache.work_dir()
    files = {"train": [write_rows(work / "t.arrow", [4])], "eval": []}

    def replace(source, target):  # the other process won the rename
        os.rename(source, target)
        (Path(source)).mkdir()
        (Path(source) / "leftover").write_text("x")
        raise OSError(39, "Directory not empty")

    monkeypatch.setattr(cache.os, "replace", replace)
    train, _ = cache.keep("k1", work, files, {})
    assert train["x"] == [4] and not work.exists()


def test_without_a_key_a_build_is_opened_where_it_is_and_removed_at_exit(root, monkeypatch):
    import shutil

    registered = []
    monkeypatch.setattr(cache.atexit, "register", lambda *args, **kwargs: registered.append((args, kwargs)))
    work = cache.work_dir()
    files = {"train": [write_rows(work / "t.arrow", [7, 8])], "eval": [write_rows(work / "e.arrow", [1])]}
    train, evals = cache.keep(None, work, files, {"rows": 2})
    assert train["x"] == [7, 8] and evals["x"] == [1]
    assert registered == [((shutil.rmtree, work), {"ignore_errors": True})]
    assert json.loads((work / "files.json").read_text(encoding="utf-8")) == files
    assert not (work / "stats.json").exists() and [p.name for p in root.iterdir()] == [work.name]


def test_a_loaded_entry_becomes_the_most_recently_used(root):
    entry = root / "k1"
    entry.mkdir(parents=True)
    (entry / "stats.json").write_text('{"rows": 1}', encoding="utf-8")
    (entry / "files.json").write_text(json.dumps({"train": [write_rows(entry / "t.arrow", [1])], "eval": []}))
    os.utime(entry, (1000, 1000))
    train, evals, stats = cache.load("k1")
    assert (train["x"], evals, stats) == ([1], None, {"rows": 1})
    assert entry.stat().st_mtime > 1000


@pytest.mark.parametrize("damage", ["missing", "stats", "no files", "files", "no train key", "no train files"])
def test_a_missing_or_damaged_entry_is_not_loaded(root, damage):
    entry = root / "k1"
    if damage != "missing":
        entry.mkdir(parents=True)
        (entry / "stats.json").write_text("{" if damage == "stats" else "{}", encoding="utf-8")
        files = {"files": "[", "no train key": "{}", "no train files": '{"train": [], "eval": []}'}
        if damage in files:
            (entry / "files.json").write_text(files[damage], encoding="utf-8")
        os.utime(entry, (1000, 1000))
    assert cache.load("k1") is None
    if damage != "missing":
        assert entry.stat().st_mtime == 1000  # not counted as used


def test_opening_an_entry_without_training_files_is_an_error(tmp_path):
    (tmp_path / "files.json").write_text('{"train": [], "eval": []}', encoding="utf-8")
    with pytest.raises(ValueError, match="^no training files$"):
        cache._open(tmp_path)


def test_only_the_most_recently_used_entries_are_kept(tmp_path):
    assert cache.KEEP == 20
    for n in range(23):
        (tmp_path / f"e{n}").mkdir()
        os.utime(tmp_path / f"e{n}", (1000 + n, 1000 + n))
    for hidden in (tmp_path / ".build-1-x", tmp_path / "a-file"):  # a build in progress, not an entry
        hidden.mkdir() if hidden.name.startswith(".") else hidden.write_text("x")
        os.utime(hidden, (1, 1))
    cache._prune(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"e{n}" for n in range(3, 23)] + [".build-1-x", "a-file"])


def test_an_entry_another_process_removed_while_pruning_is_no_error(tmp_path, monkeypatch):
    import shutil

    for n in range(22):
        (tmp_path / f"e{n}").mkdir()

    def mtime(path):  # another process prunes the oldest meanwhile
        if path.name == "e0":
            shutil.rmtree(path)
        return float(path.name[1:])

    monkeypatch.setattr(cache, "_mtime", mtime)
    cache._prune(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"e{n}" for n in range(2, 22))


def test_an_entry_gone_meanwhile_counts_as_oldest(tmp_path):
    assert cache._mtime(tmp_path / "gone") == 0.0
    os.utime(tmp_path, (1234.5, 1234.5))
    assert cache._mtime(tmp_path) == 1234.5


def test_only_build_folders_of_dead_processes_are_removed(tmp_path, monkeypatch):
    asked = []
    monkeypatch.setattr(cache, "_alive", lambda pid: asked.append(pid) or pid == 222)
    names = [".build-111-abc", ".build-222-abc", f".build-{os.getpid()}-abc", ".build-x1-abc", ".build-333", "entry",
             ".build-444-a-b"]
    for name in names:
        (tmp_path / name).mkdir()
    cache._remove_abandoned(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [".build-222-abc", f".build-{os.getpid()}-abc", ".build-x1-abc", ".build-333", "entry"])
    assert sorted(asked) == [111, 222, 444]


def test_a_build_folder_another_process_removed_meanwhile_is_no_error(tmp_path, monkeypatch):
    import shutil

    (tmp_path / ".build-111-abc").mkdir()

    def dead(pid):  # and another process cleans up its folder meanwhile
        shutil.rmtree(tmp_path / ".build-111-abc")
        return False

    monkeypatch.setattr(cache, "_alive", dead)
    cache._remove_abandoned(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_liveness_is_asked_with_signal_zero_and_a_missing_process_is_dead(monkeypatch):
    sent = []

    def kill(pid, sig):
        sent.append((pid, sig))
        if pid == 5:
            raise ProcessLookupError(3, "No such process")

    monkeypatch.setattr(os, "kill", kill)
    assert cache._alive(4) is True
    assert cache._alive(5) is False
    assert sent == [(4, 0), (5, 0)]
