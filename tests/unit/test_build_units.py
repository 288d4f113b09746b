"""The chat build's steps checked directly on a few rows: `_build` in this process (one encoding process, no cache),
what it writes and counts, the replay mix, the encoding shards' file names and progress labels, and the cache
wrapper's hit, miss and failure paths."""

from __future__ import annotations

import hashlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from peftsft.core.config import DatasetSpec, DataSection
from peftsft.core.errors import UserError
from peftsft.data import build
from peftsft.data.arrow import open_files
from peftsft.data.build import DataStats
from peftsft.data.contract import ReplyChecks
from peftsft.data.encoding import Found
from peftsft.data.rows import BadRows
from tests.conftest import write_jsonl
from tests.fakes import RecordedMeter


def chat(question: str, answer: str = "Sure.") -> dict:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


@pytest.fixture
def meters(monkeypatch):
    RecordedMeter.made = []
    monkeypatch.setattr(build, "Meter", RecordedMeter)
    return RecordedMeter.made


CONSOLE = SimpleNamespace(is_terminal=False, print=lambda *args, **kwargs: None)  # off a terminal: no bar


def data(tmp_path, rows, **settings) -> DataSection:
    settings.setdefault("num_proc", 1)
    settings.setdefault("template", "auto")
    spec = DatasetSpec(path=str(write_jsonl(tmp_path / "a.jsonl", rows)))
    return DataSection(datasets=[spec], cache=False, **settings)


def ids_of(work: Path, names: list[str]) -> list[list[int]]:
    return list(open_files([work / n for n in names])["input_ids"]) if names else []


# ---------------------------------------------------------------------------------------------- _build


def test_a_build_writes_only_its_train_and_eval_samples_and_counts_them(tmp_path, tokenizer, meters):
    work = tmp_path / "work"
    work.mkdir()
    rows = [chat(f"Question {i}?", f"Answer {i}.") for i in range(5)]
    section = data(tmp_path, rows, eval_fraction=0.4)
    files, stats = build._build(tokenizer, section, 7, work, CONSOLE)
    assert files == {"train": ["train-00000.arrow"], "eval": ["eval-00000.arrow"]}
    assert sorted(p.name for p in work.iterdir()) == ["eval-00000.arrow", "train-00000.arrow"]
    train, evals = ids_of(work, files["train"]), ids_of(work, files["eval"])
    assert (len(train), len(evals)) == (3, 2)
    assert (stats.rows, stats.kept, stats.train_rows, stats.eval_rows, stats.bad_total) == (5, 5, 3, 2, 0)
    lengths = sorted(len(t) for t in train)
    assert stats.tokens == sum(len(t) for t in train + evals) and stats.max_tokens == max(len(t) for t in train + evals)
    assert stats.lengths["min"] == lengths[0] and stats.lengths["max"] == lengths[-1]
    assert stats.lengths["histogram"] == build.histogram(np.array(lengths))
    assert stats.checks == {**ReplyChecks().__dict__, "samples": 5, "replies": 5, "closed": 5}
    assert stats.packing == {"enabled": False, "rows": 1, "efficiency": round(sum(lengths) / 1024, 4)}
    assert stats.sources[0]["train"] == 3 and stats.replay == {} and stats.cache == "off"
    assert [(m.console, m.label, m.total) for m in meters] == [
        (CONSOLE, "train: templating, tokenizing, masking (1 process)", 3),
        (CONSOLE, "eval: templating, tokenizing, masking (1 process)", 2),
        (CONSOLE, "packing statistics", 3),
    ]
    assert [m.done for m in meters] == [3, 2, 3]


def test_a_build_reads_the_eval_file_as_its_eval_rows_and_packs_when_asked(tmp_path, tokenizer, meters):
    work = tmp_path / "work"
    work.mkdir()
    held = write_jsonl(tmp_path / "held.jsonl", [chat("Held out?", "Yes, " + "and more " * 10)])
    section = data(tmp_path, [chat("One?"), chat("Two?")], eval_path=str(held), packing=True, max_length=40)
    files, stats = build._build(tokenizer, section, 0, work, None)  # 36 tokens each, the eval row 59: cut to 40
    assert files == {"train": ["train-00000.arrow"], "eval": ["eval-00000.arrow"]}
    assert (stats.rows, stats.train_rows, stats.eval_rows) == (3, 2, 1)
    assert stats.truncated == 1 and stats.max_tokens == 40 and stats.lengths["max"] == 36
    assert stats.packing == {"enabled": True, "rows": 2, "efficiency": 0.9}
    assert [len(s) for s in ids_of(work, files["eval"])] == [40]


def test_a_build_without_supervised_rows_says_the_training_set_is_empty(tmp_path, tokenizer, meters):
    work = tmp_path / "work"
    work.mkdir()
    long = "word " * 200
    section = data(tmp_path, [chat(long), chat(long)], max_length=8, replay=0.5)  # the reply is cut off
    with pytest.raises(UserError) as caught:
        build._build(tokenizer, section, 0, work, None)
    assert caught.value.message == "the training dataset is empty after filtering"
    assert caught.value.hint.startswith("2 rows read, 0 bad, 2 with nothing to learn")


def test_replay_rows_are_mixed_into_the_training_file_and_counted(tmp_path, tokenizer, meters, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    pool = write_jsonl(tmp_path / "pool.jsonl", [chat(f"General {i}?", "Right.") for i in range(3)] + ["{bad"])
    rows = [chat(f"Task {i}?", "Done.") for i in range(3)]
    section = data(tmp_path, rows, replay=0.25, replay_path=str(pool), on_bad_row="skip")
    from peftsft.data import parallel

    monkeypatch.setattr(parallel, "Meter", RecordedMeter)  # the one write_items imports
    files, stats = build._build(tokenizer, section, 0, work, CONSOLE)
    assert [m.console for m in meters if m.label == f"reading {pool}"] == [CONSOLE]
    assert files == {"train": ["train-mixed.arrow"], "eval": []}
    assert sorted(p.name for p in work.iterdir()) == ["train-mixed.arrow"]
    assert stats.replay == {"share": 0.25, "pool": str(pool), "pool_rows": 3, "task_rows": 3, "replay_rows": 1,
                            "actual_share": 0.25}
    assert (stats.rows, stats.kept, stats.train_rows, stats.eval_rows, stats.bad_total) == (3, 4, 4, 0, 1)
    assert stats.checks["samples"] == 4 and len(stats.sources) == 1
    texts = [tokenizer.decode(s) for s in ids_of(work, files["train"])]
    assert ["Task" in t for t in texts] == [True, True, False, True] and "General" in texts[2]
    assert [m.label for m in meters if ":" in m.label] == ["train: templating, tokenizing, masking (1 process)",
                                                          "replay: templating, tokenizing, masking (1 process)",
                                                          "eval: templating, tokenizing, masking (1 process)"]


def test_a_replay_pool_without_rows_is_refused(tmp_path, tokenizer, meters):
    work = tmp_path / "work"
    work.mkdir()
    pool = write_jsonl(tmp_path / "pool.jsonl", ["{bad"])
    section = data(tmp_path, [chat("Task?")], replay=0.5, replay_path=str(pool), on_bad_row="skip")
    with pytest.raises(UserError) as caught:
        build._build(tokenizer, section, 0, work, None)
    assert caught.value.message == f"[data] replay_path: no rows in {pool}"
    assert caught.value.hint == "point replay_path at chat data, or unset it"


def test_a_dataset_with_no_rows_for_training_keeps_its_eval_rows_apart(tmp_path, tokenizer, meters):
    work = tmp_path / "work"
    work.mkdir()
    held = write_jsonl(tmp_path / "held.jsonl", [chat("Held?")])
    section = data(tmp_path, [chat("One?")], eval_path=str(held))
    section.datasets[0] = section.datasets[0].model_copy(update={"samples": 0})
    with pytest.raises(UserError, match="the training dataset is empty"):
        build._build(tokenizer, section, 0, work, None)


# ---------------------------------------------------------------------------------------------- encode


def in_process(work, rows, processes, meter):
    """parallel.run_sharded without forking: each shard's work in turn, in this process."""
    from peftsft.data.parallel import shards

    return [work(i, start, end, meter.advance) for i, (start, end) in enumerate(shards(rows, processes))]


def test_each_encoding_process_writes_its_own_file_and_their_counts_add_up(tmp_path, tokenizer, meters, monkeypatch):
    from peftsft.data.items import write_items

    section = data(tmp_path, [chat(f"Q{i}?", "A" * (i + 1)) for i in range(5)])
    items = write_items([(section.datasets[0], 0)], section, DataStats(), tmp_path, "items", None)
    monkeypatch.setattr(build, "processes_for", lambda setting, rows: 2 if rows else 1)
    monkeypatch.setattr(build, "run_sharded", in_process)
    names, found = build.encode(tokenizer, items, np.array([4, 3, 2, 1, 0]), "train", section, tmp_path, CONSOLE)
    assert names == ["train-00000.arrow", "train-00001.arrow"]
    assert meters[-1].label == "train: templating, tokenizing, masking (2 processes)" and meters[-1].total == 5
    assert meters[-1].done == 5
    samples = ids_of(tmp_path, names)
    assert [tokenizer.decode(s).count("Q") for s in samples] == [1] * 5
    assert [f"Q{4 - i}?" in tokenizer.decode(s) for i, s in enumerate(samples)] == [True] * 5
    assert found.kept == 5 and found.all_lengths().tolist() == [len(s) for s in samples]
    assert found.tokens == sum(len(s) for s in samples) and found.checks.samples == 5
    names, found = build.encode(tokenizer, items, np.array([], dtype=np.int64), "eval", section, tmp_path, CONSOLE)
    assert names == [] and found == Found() and meters[-1].label == "eval: templating, tokenizing, masking (1 process)"


# ---------------------------------------------------------------------------------------------- the cache


@pytest.fixture
def fake_cache(monkeypatch, tmp_path):
    """peftsft.data.cache with its key, entries and work dirs in memory; calls are recorded."""
    from peftsft.data import cache

    calls = SimpleNamespace(kept=[], entries={}, work=tmp_path / "work", templates=[], keyed=[])

    def apply_template(tokenizer, section):
        calls.templates.append((tokenizer, section))
        return SimpleNamespace(as_dict=lambda: {"n": 1})

    def fingerprint(tokenizer, section, seed):
        calls.keyed.append((tokenizer, section))
        return f"key-{seed}"

    monkeypatch.setattr(build, "apply_template", apply_template)
    monkeypatch.setattr(cache, "fingerprint", fingerprint)
    monkeypatch.setattr(cache, "load", lambda key: calls.entries.get(key))

    def work_dir():
        calls.work.mkdir()
        return calls.work

    def keep(key, work, files, stats):
        calls.kept.append((key, work, files, stats))
        return "TRAIN", "EVAL"

    monkeypatch.setattr(cache, "work_dir", work_dir)
    monkeypatch.setattr(cache, "keep", keep)
    return calls


def test_a_build_is_stored_under_its_key_and_a_kind_gets_a_key_of_its_own(fake_cache):
    seen = []

    def fake_build(tokenizer, section, seed, work, console):
        seen.append((tokenizer, section, seed, work, console))
        return {"train": ["t"]}, DataStats(rows=2)

    section = DataSection()
    train, evals, stats = build.cached_build("TOK", section, 3, fake_build, console="OUT")
    assert (train, evals, stats.rows, stats.cache, stats.template) == ("TRAIN", "EVAL", 2, "miss", {"n": 1})
    assert seen == [("TOK", section, 3, fake_cache.work, "OUT")]
    assert fake_cache.templates == [("TOK", section)] and fake_cache.keyed == [("TOK", section)]
    key, work, files, stored = fake_cache.kept[0]
    assert (key, work, files) == ("key-3", fake_cache.work, {"train": ["t"]})
    assert stored["rows"] == 2 and stored["template"] == {"n": 1} and stored["cache"] == "off"
    fake_cache.work.rmdir()
    build.cached_build("TOK", DataSection(), 3, fake_build, kind="pairs")
    assert fake_cache.kept[1][0] == hashlib.sha256(b"key-3:pairs").hexdigest()[:24]
    from peftsft.core.console import err_console

    assert seen[1][4] is err_console


def test_without_the_cache_a_build_has_no_key_and_says_off(fake_cache):
    _, _, stats = build.cached_build("TOK", DataSection(cache=False), 3, lambda *a: ({}, DataStats()), kind="pairs")
    assert fake_cache.kept[0][0] is None and stats.cache == "off"


def test_a_cached_build_is_loaded_not_built(fake_cache):
    fake_cache.entries["key-5"] = ("T", "E", {"rows": 4, "bad_rows": ["x"], "bad_total": 9, "cache": "miss"})
    train, evals, stats = build.cached_build("TOK", DataSection(), 5, None)
    assert (train, evals, stats.rows, stats.bad_rows.total, list(stats.bad_rows), stats.cache) == ("T", "E", 4, 9,
                                                                                                    ["x"], "hit")
    assert fake_cache.kept == [] and not fake_cache.work.exists()


def test_a_build_that_fails_after_removing_its_own_work_dir_raises_its_own_error(fake_cache):
    def failing(tokenizer, section, seed, work, console):
        work.rmdir()
        raise ValueError("bad row")

    with pytest.raises(ValueError, match="bad row"):
        build.cached_build("TOK", DataSection(), 3, failing)


def test_a_failed_build_removes_its_work_dir_and_raises(fake_cache):
    def failing(tokenizer, section, seed, work, console):
        (work / "part.arrow").write_text("x")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build.cached_build("TOK", DataSection(), 3, failing)
    assert not fake_cache.work.exists() and fake_cache.kept == []


# ---------------------------------------------------------------------------------------------- stats


def test_stats_absorb_a_runs_counts_bad_rows_and_reply_checks():
    stats, checks = DataStats(kept=1, tokens=10, max_tokens=9, bad_rows=BadRows(["a"])), ReplyChecks(samples=1)
    found = Found(kept=2, truncated=1, dropped_unsupervised=3, tokens=5, supervised_tokens=4, max_tokens=7,
                  bad_rows=BadRows(["b"]), checks=ReplyChecks(samples=2, closed=2))
    stats.absorb(found, checks)
    assert (stats.kept, stats.truncated, stats.dropped_unsupervised, stats.tokens, stats.supervised_tokens,
            stats.max_tokens) == (3, 1, 3, 15, 4, 9)
    assert list(stats.bad_rows) == ["a", "b"] and (checks.samples, checks.closed) == (3, 2)


def test_conversations_of_an_eval_file_are_read_like_the_first_dataset(tmp_path):
    first = write_jsonl(tmp_path / "a.jsonl", [{"q": "Q1?", "a": "A1."}])
    second = write_jsonl(tmp_path / "b.jsonl", [{"ask": "Q3?", "say": "A3."}])
    other = write_jsonl(tmp_path / "c.jsonl", [{"q": "Q2?", "a": "A2."}])
    section = DataSection(datasets=[
        DatasetSpec(path=str(first), format="prompt_completion", fields={"prompt": "q", "completion": "a"}),
        DatasetSpec(path=str(second), format="prompt_completion", fields={"prompt": "ask", "completion": "say"}),
    ])
    stats = DataStats()
    conversations = build.load_conversations([str(other), str(second), str(first)], section, stats)
    assert [[m["content"] for m in c] for c in conversations] == [["Q2?", "A2."], ["Q3?", "A3."], ["Q1?", "A1."]]
    assert stats.rows == 3 and stats.sources == []  # read, not counted as training datasets


def test_build_datasets_is_the_chat_build_through_the_cache(monkeypatch):
    monkeypatch.setattr(build, "cached_build", lambda *args, **kwargs: (args, kwargs))
    section = DataSection()
    assert build.build_datasets("TOK", section, 4, console="OUT") == (("TOK", section, 4, build._build),
                                                                      {"console": "OUT"})
    assert build.build_datasets("TOK", section, 4)[1] == {"console": None}


# ---------------------------------------------------------------------------------------------- length summary


def test_a_length_summary_reads_its_percentiles_from_the_sorted_lengths():
    summary = build.length_summary(np.array([21, 3, 9, 5], dtype=np.int32))
    assert summary == {"min": 3, "p50": 9, "p90": 21, "max": 21, "mean": 9.5,
                       "histogram": [1, 1, 0, 1, 0, 0, 0, 0, 0, 1]}
    assert build.length_summary([1, 2, 2])["mean"] == 1.7  # one decimal
    twenty = build.length_summary(np.arange(20, 0, -1))
    assert (twenty["p50"], twenty["p90"], twenty["max"]) == (11, 19, 20)


def test_a_histogram_narrower_than_its_bins_spreads_the_values_over_them():
    assert build.histogram(np.array([0, 1, 2]), bins=4) == [1, 0, 1, 1]  # bins half a token wide
    assert build.histogram(np.array([1, 3, 5, 9])) == [1, 0, 1, 0, 0, 1, 0, 0, 0, 1]


def test_an_eval_fraction_of_no_training_rows_is_no_rows():
    items = SimpleNamespace(source=np.array([-1, -1]))
    train, evals = build.split(items, DataSection(eval_fraction=0.5), 0)
    assert train.tolist() == [] and evals.tolist() == []


def test_a_build_refuses_tool_rows_its_template_cannot_render(tmp_path, tokenizer, meters, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    schema = {"type": "function", "function": {"name": "clock", "description": "the time", "parameters": {}}}
    rows = [chat("Plain?"), {**chat("Time?"), "tools": [schema]}]
    section = data(tmp_path, rows)
    monkeypatch.setattr(build, "supports_tool_schemas", lambda tok: tok is tokenizer)
    _, stats = build._build(tokenizer, section, 0, work, None)  # a template that renders tools: built
    assert stats.train_rows == 2
    monkeypatch.setattr(build, "supports_tool_schemas", lambda tok: False)
    work2 = tmp_path / "work2"
    work2.mkdir()
    with pytest.raises(UserError) as caught:
        build._build(tokenizer, section, 0, work2, None)
    assert caught.value.message.startswith(f"{tmp_path / 'a.jsonl'}:2: 1 row(s) offer tools, but the chat template "
                                           "(auto) does not render tool schemas")
