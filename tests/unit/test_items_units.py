"""Every row read once into items files, checked on its own: the raw rows streamed to disk, the format detected on
the first row that shows one, rows normalised into content/tools/where with their bad rows, and `write_items`'
files, per-row dataset and tools arrays, stats and progress labels — for one process and for several shards."""

from __future__ import annotations

import json
import pickle

import datasets  # noqa: F401 - imported while collecting, not in the first test that opens a file
import numpy as np
import pytest

from peftsft.core.config import DataSection, DatasetSpec
from peftsft.core.errors import UserError
from peftsft.data import items, parallel
from peftsft.data.arrow import open_files
from peftsft.data.build import DataStats
from peftsft.data.formats import NO_MAPPING, Mapping
from peftsft.data.rows import BadRows
from tests.conftest import write_jsonl

TOOLS = [{"type": "function", "function": {"name": "f", "description": "café", "parameters": {"type": "object"}}}]


def chat(question: str, answer: str = "A.") -> dict:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def turns(question: str, answer: str = "A.") -> list[dict]:
    return chat(question, answer)["messages"]


class Meters:
    """`parallel.Meter` replaced: records each meter's label, total, unit and rows advanced."""

    def __init__(self):
        self.made: list[list] = []

    def __call__(self, console, label, total, unit="rows"):
        record = [label, total, unit, 0]
        self.consoles = [*getattr(self, "consoles", []), console]
        self.made.append(record)
        meters = self

        class Fake:
            def __enter__(self):
                return self

            def __exit__(self, *_):
                pass

            def advance(self, rows):
                record[3] += rows

            def update(self, done):
                record[3] = done

        meters.console = console
        return Fake()


class Counter:
    def __init__(self):
        self.calls: list[int] = []

    def advance(self, rows: int) -> None:
        self.calls.append(rows)


# ---------------------------------------------------------------------------------------------- raw rows


def test_raw_rows_are_written_in_batches_as_lines_or_pickles_with_where(tmp_path, monkeypatch):
    monkeypatch.setattr(items, "BATCH", 2)
    path = write_jsonl(tmp_path / "a.jsonl", [chat(f"Q{i}") for i in range(5)])
    meter = Counter()
    raw = items._write_raw(DatasetSpec(path=str(path)), tmp_path / "raw.arrow", meter)
    assert meter.calls == [2, 2, 1]
    assert raw["where"] == [f"{path}:{i}" for i in range(1, 6)]
    assert [json.loads(line) for line in raw["line"]] == [chat(f"Q{i}") for i in range(5)]
    assert raw["pickled"] == [None] * 5
    assert raw.cache_files[0]["filename"] == str(tmp_path / "raw.arrow")


def test_raw_rows_of_a_file_that_is_not_jsonl_are_pickled(tmp_path):
    path = tmp_path / "a.json"
    path.write_text(json.dumps([{"text": "one"}, {"text": "two"}]), encoding="utf-8")
    meter = Counter()
    raw = items._write_raw(DatasetSpec(path=str(path)), tmp_path / "raw.arrow", meter)
    assert meter.calls == [2]
    assert raw["line"] == [None, None]
    assert [pickle.loads(p) for p in raw["pickled"]] == [{"text": "one"}, {"text": "two"}]


def test_no_rows_write_an_empty_raw_file(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text("\n", encoding="utf-8")
    meter = Counter()
    raw = items._write_raw(DatasetSpec(path=str(path)), tmp_path / "raw.arrow", meter)
    assert len(raw) == 0 and meter.calls == []


def test_a_raw_row_is_its_json_line_else_its_pickle():
    assert items._parse('{"a": 1}', None) == {"a": 1}
    assert items._parse(None, pickle.dumps({"b": 2})) == {"b": 2}
    with pytest.raises(ValueError):
        items._parse("{broken", None)


def raw_of(tmp_path, lines: list, name: str = "a.jsonl"):
    path = tmp_path / name
    path.write_text("".join(f"{line if isinstance(line, str) else json.dumps(line)}\n" for line in lines),
                    encoding="utf-8")
    return items._write_raw(DatasetSpec(path=str(path)), tmp_path / f"{name}.arrow", Counter()), path


def test_a_given_format_is_kept_without_reading_a_row(tmp_path):
    raw, _ = raw_of(tmp_path, ["{broken"])
    assert items._detect(raw, "alpaca", NO_MAPPING) == ("alpaca", None)


def test_auto_is_judged_on_the_first_row_that_shows_a_format_and_its_position(tmp_path):
    raw, _ = raw_of(tmp_path, ["{broken", {"x": 1}, {"instruction": "I", "output": "O"}, chat("Q")])
    assert items._detect(raw, "auto", NO_MAPPING) == ("alpaca", 2)
    raw, _ = raw_of(tmp_path, [{"dialog": [{"role": "user", "content": "Q"}]}], "b.jsonl")
    assert items._detect(raw, "auto", Mapping({"messages": "dialog"}, {})) == ("messages", 0)


def test_auto_with_no_row_showing_a_format_stays_auto(tmp_path):
    raw, _ = raw_of(tmp_path, ["{broken", {"x": 1}])
    assert items._detect(raw, "auto", NO_MAPPING) == ("auto", None)


# ---------------------------------------------------------------------------------------------- normalising


def test_rows_are_normalised_into_content_tools_and_where_with_their_bad_rows(tmp_path):
    raw, path = raw_of(tmp_path, [chat("Q0"), "{broken", {**chat("Q2"), "tools": TOOLS}, {"messages": turns("Q3")[1:]},
                                  chat("Q4")])
    advanced = Counter()
    done = items._normalise(raw, range(0, 5), "messages", 0, NO_MAPPING, DataSection(on_bad_row="skip"),
                            tmp_path / "items.arrow", advanced.advance)
    assert (done.rows, done.items, done.tools.tolist()) == (4, 3, [False, True, False])
    assert done.tools.dtype == np.bool_
    assert list(done.bad_rows) == [
        f"{path}:2: malformed JSON: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)",
        f"{path}:4: the conversation starts with an assistant reply: no user turn before it to answer"]
    assert done.bad_rows.total == 2
    assert advanced.calls == [5]
    written = open_files([tmp_path / "items.arrow"])
    assert [json.loads(c) for c in written["content"]] == [turns("Q0"), turns("Q2"), turns("Q4")]
    assert written["tools"] == [None, json.dumps(TOOLS, ensure_ascii=False), None]
    assert "café" in written["tools"][1]
    assert written["where"] == [f"{path}:1", f"{path}:3", f"{path}:5"]


def test_a_shard_normalises_only_its_rows_in_batches(tmp_path, monkeypatch):
    raw, path = raw_of(tmp_path, [chat(f"Q{i}") for i in range(6)])
    monkeypatch.setattr(items, "BATCH", 2)
    advanced = Counter()
    done = items._normalise(raw, range(1, 4), "messages", 0, NO_MAPPING, DataSection(), tmp_path / "s.arrow",
                            advanced.advance)
    assert (done.rows, done.items, done.tools.tolist(), done.bad_rows.total) == (3, 3, [False] * 3, 0)
    assert advanced.calls == [2, 1]
    written = open_files([tmp_path / "s.arrow"])
    assert written["where"] == [f"{path}:2", f"{path}:3", f"{path}:4"]


def test_a_bad_row_fails_by_default_at_its_file_and_line(tmp_path):
    raw, path = raw_of(tmp_path, [chat("Q0"), "{broken"])
    with pytest.raises(UserError, match=rf"^{path}:2: malformed JSON: Expecting property name"):
        items._normalise(raw, range(0, 2), "messages", 0, NO_MAPPING, DataSection(), tmp_path / "i.arrow", len)


def test_rows_before_the_one_the_format_was_judged_on_must_show_one(tmp_path):
    labelled = {"prompt": "p", "completion": "c", "label": True}  # no chat format: preference data
    data = DataSection(on_bad_row="skip")
    done = items.Normalised(0, 0, np.zeros(0, bool), BadRows())
    assert items._normalise_row(json.dumps(labelled), None, "a:1", "prompt_completion", 1, 0, NO_MAPPING, data,
                                done) is None
    assert done.rows == 1 and done.bad_rows[0].startswith("a:1: a row of prompt + completion + a true/false label")
    plain = {"prompt": "p", "completion": "c"}
    for detected_at, position in ((1, 1), (1, 2)):  # the judged row and those after it are read in that format
        assert items._normalise_row(json.dumps(plain), None, "a:2", "prompt_completion", detected_at, position,
                                    NO_MAPPING, data, done) == [{"role": "user", "content": "p"},
                                                                {"role": "assistant", "content": "c"}]
    assert done.rows == 3 and done.bad_rows.total == 1
    assert items._normalise_row(json.dumps(labelled), None, "a:4", "prompt_completion", None, 5, NO_MAPPING, data,
                                done) is None  # a given format: every row must show one
    assert done.rows == 4 and done.bad_rows.total == 2
    assert items._normalise_row(json.dumps(labelled), None, "a:5", "prompt_completion", 1, 6, NO_MAPPING, data,
                                done) is None  # read in the judged format, still preference data
    assert done.bad_rows[-1].startswith("a:5: a row of prompt + completion + a true/false label")


def test_a_pickled_row_is_normalised_and_a_malformed_line_is_not_a_row(tmp_path):
    data = DataSection(on_bad_row="skip")
    done = items.Normalised(0, 0, np.zeros(0, bool), BadRows())
    assert items._normalise_row(None, pickle.dumps({"text": "hi"}), "a:1", "text", 0, 0, NO_MAPPING, data, done) == "hi"
    assert items._normalise_row("[1,", None, "a:2", "text", 0, 1, NO_MAPPING, data, done) is None
    assert done.rows == 1 and list(done.bad_rows) == ["a:2: malformed JSON: Expecting value: line 1 column 4 (char 3)"]


def test_content_is_stored_as_json_text_kept_unescaped():
    assert items._json("plain text é", "a:1") == '"plain text é"'
    assert items._json(iter([{"role": "user", "content": "é"}]), "a:1") == '[{"role": "user", "content": "é"}]'
    with pytest.raises(UserError, match=r"^a:3: a value in this row cannot be stored as JSON: Object of type bytes"):
        items._json([{"role": "user", "content": b"x"}], "a:3")


def test_an_empty_batch_writes_nothing(tmp_path):
    written = []
    items._write(type("W", (), {"write_batch": lambda self, b: written.append(b)})(), [])
    assert written == []
    items._write(type("W", (), {"write_batch": lambda self, b: written.append(b)})(), [("c", None, "w"), ("d", "t", "v")])
    assert written[0].schema == items.ITEMS and written[0].to_pydict() == {"content": ["c", "d"], "tools": [None, "t"],
                                                                          "where": ["w", "v"]}


# ---------------------------------------------------------------------------------------------- write_items


@pytest.fixture
def meters(monkeypatch) -> Meters:
    meters = Meters()
    monkeypatch.setattr(parallel, "Meter", meters)
    return meters


def test_write_items_reads_each_dataset_into_files_with_its_index_tools_and_stats(tmp_path, meters):
    a = write_jsonl(tmp_path / "a.jsonl", [chat("Q0"), {"messages": turns("Q1")[1:]}, {**chat("Q2"), "tools": TOOLS}])
    b = write_jsonl(tmp_path / "b.jsonl", [{"instruction": "I", "output": "O"}, "{broken"])
    held = write_jsonl(tmp_path / "held.jsonl", [chat("H")])
    data = DataSection(datasets=[DatasetSpec(path=str(a)), DatasetSpec(path=str(b), format="alpaca")],
                       on_bad_row="skip", num_proc=1)
    stats = DataStats(rows=10, bad_rows=BadRows(["earlier"], total=1))
    work = tmp_path / "work"
    work.mkdir()
    got = items.write_items([(data.datasets[0], 0), (data.datasets[1], 1), (DatasetSpec(path=str(held)), -1)], data,
                            stats, work, "train", "CONSOLE")
    assert len(got) == 4
    assert got.source.tolist() == [0, 0, 1, -1] and got.source.dtype == np.int32
    assert got.has_tools.tolist() == [False, True, False, False]
    assert [json.loads(c) for c in got.dataset["content"]] == [turns("Q0"), turns("Q2"), turns("I", "O"), turns("H")]
    assert got.dataset["tools"] == [None, json.dumps(TOOLS, ensure_ascii=False), None, None]
    assert [got.where(i) for i in range(4)] == [f"{a}:1", f"{a}:3", f"{b}:1", f"{held}:1"]
    assert got.where(np.int64(1)) == f"{a}:3"
    assert stats.rows == 10 + 3 + 1 + 1  # a malformed line is a bad row, not a row
    assert stats.bad_rows.total == 3 and stats.bad_rows[0] == "earlier" and len(stats.bad_rows) == 3
    assert stats.sources == [{"path": str(a), "format": "messages (detected)", "rows": 3, "bad": 1},
                             {"path": str(b), "format": "alpaca", "rows": 1, "bad": 1}]  # not the eval file
    assert sorted(p.name for p in work.iterdir()) == [f"train-{n}-00000.arrow" for n in range(3)] + [
        f"train-raw-{n}.arrow" for n in range(3)]
    assert meters.consoles == ["CONSOLE"] * 6
    assert meters.made == [[f"reading {a}", None, "rows", 3], [f"normalising {a} (1 process)", 3, "rows", 3],
                           [f"reading {b}", None, "rows", 2], [f"normalising {b} (1 process)", 2, "rows", 2],
                           [f"reading {held}", None, "rows", 1], [f"normalising {held} (1 process)", 1, "rows", 1]]


def test_write_items_shards_a_dataset_over_processes_in_row_order(tmp_path, meters, monkeypatch):
    asked = []

    def processes_for(setting, rows):
        asked.append((setting, rows))
        return 2

    def run_sharded(work, rows, processes, meter):  # the shards in turn, in this process
        return [work(i, start, end, meter.advance) for i, (start, end) in enumerate(parallel.shards(rows, processes))]

    monkeypatch.setattr(parallel, "processes_for", processes_for)
    monkeypatch.setattr(parallel, "run_sharded", run_sharded)
    a = write_jsonl(tmp_path / "a.jsonl", [chat(f"Q{i}") for i in range(5)])
    stats = DataStats()
    data = DataSection(datasets=[DatasetSpec(path=str(a), format="messages")], num_proc=4)
    got = items.write_items([(data.datasets[0], 0)], data, stats, tmp_path, "eval", None)
    assert asked == [(4, 5)]
    assert [json.loads(c)[0]["content"] for c in got.dataset["content"]] == [f"Q{i}" for i in range(5)]
    assert got.source.tolist() == [0] * 5 and got.has_tools.tolist() == [False] * 5
    assert [len(open_files([tmp_path / f"eval-0-{i:05d}.arrow"])) for i in range(2)] == [3, 2]
    assert meters.made[1] == [f"normalising {a} (2 processes)", 5, "rows", 5]
    assert stats.sources == [{"path": str(a), "format": "messages", "rows": 5, "bad": 0}]


def test_write_items_with_every_row_bad_or_no_dataset_has_no_rows(tmp_path, meters):
    a = write_jsonl(tmp_path / "a.jsonl", ["{broken", {"x": 1}])
    stats = DataStats()
    data = DataSection(datasets=[DatasetSpec(path=str(a))], on_bad_row="skip", num_proc=1)
    got = items.write_items([(data.datasets[0], 0)], data, stats, tmp_path, "train", None)
    assert got.dataset is None or len(got.dataset) == 0
    assert len(got) == 0 and got.source.dtype == np.int32 and got.has_tools.dtype == np.bool_
    assert stats.rows == 1 and stats.bad_rows.total == 2
    assert stats.sources == [{"path": str(a), "format": "auto", "rows": 1, "bad": 2}]  # never detected
    none = items.write_items([], data, DataStats(), tmp_path, "none", None)
    assert none.dataset is None and none.source.tolist() == [] and none.source.dtype == np.int32
    assert none.has_tools.tolist() == [] and none.has_tools.dtype == np.bool_


def test_rows_of_a_dataset_read_in_memory_carry_where_and_source(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [chat("Q0"), {"x": 1}, chat("Q2")])
    stats = DataStats()
    got = items.load_items(DatasetSpec(path=str(a)), 3, DataSection(on_bad_row="skip"), stats)
    assert [(list(i.content), i.where, i.source) for i in got] == [(turns("Q0"), f"{a}:1", 3), (turns("Q2"), f"{a}:3", 3)]
    assert stats.rows == 3 and stats.bad_rows.total == 1
    # the format judged on the first row is held: a stray row is an error in it, not a new format
    assert list(stats.bad_rows) == [f"{a}:2: missing column 'messages' (messages format); the row has ['x']"]
    assert stats.sources == [{"path": str(a), "format": "messages (detected)", "rows": 3, "bad": 1}]


def test_rows_before_the_judged_one_must_show_a_format_and_those_after_are_read_in_it_labels_refused(tmp_path):
    labelled = {"prompt": "p", "completion": "c", "label": True}  # shows no chat format (preference data)
    raw, path = raw_of(tmp_path, [labelled, labelled, {"prompt": "p", "completion": "c"}, labelled])
    assert items._detect(raw, "auto", NO_MAPPING) == ("prompt_completion", 2)
    done = items._normalise(raw, range(0, 4), "prompt_completion", 2, NO_MAPPING, DataSection(on_bad_row="skip"),
                            tmp_path / "i.arrow", Counter().advance)
    # a labelled row after the judged one is preference data too: refused, never trained on as an answer
    assert (done.rows, done.items) == (4, 1)
    assert [line.split(": ")[0] for line in done.bad_rows] == [f"{path}:1", f"{path}:2", f"{path}:4"]
    assert open_files([tmp_path / "i.arrow"])["where"] == [f"{path}:3"]


def test_rows_of_read_through_the_datasets_mapping_and_a_tasks_reader(tmp_path):
    from peftsft.data.items import Reader

    a = write_jsonl(tmp_path / "a.jsonl", [{"dialog": [{"from": "human", "value": "Q"}, {"from": "robot", "value": "A"}]}])
    spec = DatasetSpec(path=str(a), fields={"conversations": "dialog"}, roles={"human": "user", "robot": "assistant"})
    got = items.load_items(spec, 0, DataSection(), DataStats())
    assert [list(i.content) for i in got] == [turns("Q", "A")]
    seen = []
    reader = Reader(lambda row, mapping: seen.append(mapping) or "mine",
                    lambda row, fmt, mapping: (fmt, mapping.col("conversations"), mapping.role("robot")))
    assert [(i.content, i.source) for i in items.load_items(spec, 0, DataSection(), DataStats(), reader)] == [
        (("mine", "dialog", "assistant"), 0)]
    assert seen[0].col("conversations") == "dialog"


def test_rows_of_count_bad_rows_of_this_dataset_only_and_fail_by_default(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [chat("Q0"), "{broken", {"messages": turns("Q")[1:]}])
    stats = DataStats(bad_rows=BadRows(["earlier"], total=5))
    got = items.load_items(DatasetSpec(path=str(a)), 0, DataSection(on_bad_row="skip"), stats)
    assert len(got) == 1 and stats.bad_rows.total == 7
    assert stats.sources == [{"path": str(a), "format": "messages (detected)", "rows": 2, "bad": 2}]
    with pytest.raises(UserError, match=rf"^{a}:2: malformed JSON"):
        items.load_items(DatasetSpec(path=str(a)), 0, DataSection(), DataStats())
    b = write_jsonl(tmp_path / "b.jsonl", [{"messages": turns("Q")[1:]}])
    with pytest.raises(UserError, match=rf"^{b}:1: the conversation starts with an assistant reply"):
        items.load_items(DatasetSpec(path=str(b)), 0, DataSection(), DataStats())


def test_write_items_refuses_labelled_rows_before_and_after_the_judged_one(tmp_path, meters):
    labelled = {"prompt": "p", "completion": "c", "label": True}
    a = write_jsonl(tmp_path / "a.jsonl", [labelled, {"prompt": "q", "completion": "c"}, labelled])
    stats = DataStats()
    data = DataSection(datasets=[DatasetSpec(path=str(a))], on_bad_row="skip", num_proc=1)
    got = items.write_items([(data.datasets[0], 0)], data, stats, tmp_path, "train", None)
    assert got.dataset["where"] == [f"{a}:2"]  # the labelled rows before and after the judged one: both refused
    assert stats.sources == [{"path": str(a), "format": "prompt_completion (detected)", "rows": 3, "bad": 2}]
