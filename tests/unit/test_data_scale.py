"""The data pipeline at scale: datasets live on disk (memory-mapped Arrow), the build's memory does not grow with its
rows, any number of processes builds the same samples, a cache hit reads and tokenizes nothing, and the contract
checks every sample of a large dataset, naming a bad row in the middle by its file and line."""

from __future__ import annotations

import io
import json
import random
import tracemalloc
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from rich.console import Console

from peftsft.core.config import DataSection, DatasetSpec
from peftsft.core.errors import UserError
from peftsft.data import arrow, build as build_module, encoding, items, parallel
from peftsft.data.build import build_datasets
from peftsft.data.contract import _every_sample_supervised, check_contract
from peftsft.data.masking import IGNORE, encode, rendered
from peftsft.data.rows import BadRows
from peftsft.data.templates import BUILTINS
from tests.conftest import write_jsonl
from tests.unit.test_data import private_cache, tok  # noqa: F401 - fixtures: a private cache, the template put back


@pytest.fixture
def forks(monkeypatch):
    """Small data fans out over processes too."""
    monkeypatch.setattr(parallel, "MIN_ROWS_PER_PROCESS", 16)


def chats(n: int, start: int = 0) -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"q{i} " * (1 + i % 7)},
                          {"role": "assistant", "content": f"a{i} " * (1 + i % 5)}]} for i in range(start, start + n)]


def build(tok, specs, **settings):
    settings.setdefault("cache", False)
    return build_datasets(tok, DataSection(datasets=specs, **settings), seed=0, console=Console(file=io.StringIO()))


def spec_of(tmp_path, rows, name="d.jsonl", **kwargs) -> DatasetSpec:
    return DatasetSpec(path=str(write_jsonl(tmp_path / name, rows)), **kwargs)


# ---------------------------------------------------------------------------------------------- on disk, bounded


def test_built_datasets_are_memory_mapped_arrow_files(tmp_path, tok):
    from datasets.table import ConcatenationTable, MemoryMappedTable

    for cache in (False, True):
        train, evals, _ = build(tok, [spec_of(tmp_path, chats(40))], eval_fraction=0.25, cache=cache)
        for ds in (train, evals):
            blocks = [b for row in ds.data.blocks for b in row] if isinstance(ds.data, ConcatenationTable) else [ds.data]
            assert blocks and all(isinstance(b, MemoryMappedTable) for b in blocks)
            assert all(Path(f["filename"]).is_relative_to(tmp_path / "cache") for f in ds.cache_files)


def test_the_build_holds_no_rows_in_python(tmp_path, tok, monkeypatch):
    """Python allocations at the build's peak grow by a few bytes a row (index arrays), not by the rows."""
    for module, name in ((items, "BATCH"), (encoding, "ENCODE_ROWS"), (encoding, "WRITE_ROWS")):
        monkeypatch.setattr(module, name, 64)  # buffers full early: what grows past them grows with the rows

    def peak(n: int) -> int:
        spec = spec_of(tmp_path, chats(n), f"{n}.jsonl")
        tracemalloc.start()
        build(tok, [spec], num_proc=1)
        traced = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return traced

    peak(50)  # imports and first-call caches out of the way
    Console(file=io.StringIO()).print("warm")  # rich loads its emoji table (~0.5 MB) on its first printed text
    small, large = peak(400), peak(2400)
    assert large - small < 2000 * 200, (small, large)  # a row in Python costs kilobytes


# ---------------------------------------------------------------------------------------------- processes


def test_any_number_of_processes_builds_the_same_samples(tmp_path, tok, forks):
    rows = chats(150)
    rows[40] = "{not json"
    rows[90] = {"messages": [{"role": "user", "content": "no reply"}]}
    rows[120]["messages"][0]["content"] = "long " * 300  # truncated at max_length, nothing left to learn: dropped
    alpaca = [{"instruction": f"i{i}", "output": f"o{i} " * (i % 4 + 1)} for i in range(60)]
    specs = [spec_of(tmp_path, rows), spec_of(tmp_path, alpaca, "b.jsonl", weight=1.5)]
    settings = dict(on_bad_row="skip", eval_fraction=0.2, max_length=96, replay=0.2)
    one = build(tok, specs, num_proc=1, **settings)
    many = build(tok, specs, num_proc=3, **settings)
    assert one[0][:] == many[0][:] and one[1][:] == many[1][:]
    assert one[2].as_dict() == many[2].as_dict()
    assert one[2].truncated and one[2].dropped_unsupervised and one[2].bad_rows.total == 2 and one[2].replay
    data = DataSection(datasets=specs, **settings)
    assert check_contract(tok, *one, data, "sdpa").as_dict() == check_contract(tok, *many, data, "sdpa").as_dict()


def test_the_first_bad_row_in_row_order_is_reported(tmp_path, tok, forks):
    rows = chats(400)
    rows[190], rows[201] = "{bad one", "{bad two"  # the second process meets its bad row first
    spec = spec_of(tmp_path, rows)
    with pytest.raises(UserError, match=rf"{spec.path}:191: malformed JSON"):
        build(tok, [spec], num_proc=2)
    rows[190], rows[201] = chats(1)[0], chats(1)[0]
    rows[250]["messages"].insert(1, {"role": "tool", "content": "x"})
    (tmp_path / "strict.jinja").write_text(
        "{% for m in messages %}{% if m['role'] == 'tool' %}{{ raise_exception('no tool role') }}{% endif %}"
        "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    spec = spec_of(tmp_path, rows)
    with pytest.raises(UserError, match=rf"{spec.path}:251: the chat template cannot render it: no tool role"):
        build(tok, [spec], num_proc=2, template=str(tmp_path / "strict.jinja"))


def test_an_error_is_raised_in_row_order_not_in_arrival_order():
    import time

    def work(shard: int, start: int, end: int, advance):
        if shard == 0:
            time.sleep(1.0)  # the first shard's error arrives last
        raise UserError(f"bad row in shard {shard}")

    with pytest.raises(UserError, match="bad row in shard 0"):
        parallel.run_sharded(work, 300, 3, parallel.Meter(None, "", 300))


def test_the_contract_names_a_bad_row_in_the_middle(tmp_path, tok, forks):
    """A template that breaks one reply: the failure names that row's file and line, wherever its process."""
    turn = "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    template = BUILTINS["chatml"].read_text()
    assert turn in template
    (tmp_path / "t.jinja").write_text(template.replace(turn, (
        "{{'<|im_start|>' + message['role'] + '\n'}}{% if 'BREAK' in message['content'] %}<think></think>{% endif %}"
        "{{ message['content'] + '<|im_end|>' + '\n'}}")))
    rows = chats(400)
    rows[310]["messages"][1]["content"] = "BREAK here"
    spec = spec_of(tmp_path, rows)
    data = DataSection(datasets=[spec], template=str(tmp_path / "t.jinja"), cache=False, num_proc=2)
    train, evals, stats = build_datasets(tok, data, seed=0, console=Console(file=io.StringIO()))
    failed = {c.name: c.detail for c in check_contract(tok, train, evals, stats, data, "sdpa").failures}
    assert list(failed) == ["no supervised token in a prompt"]
    assert f"1 supervised spans are not reply text: {spec.path}:311: supervised text is not the reply" in \
        failed["no supervised token in a prompt"]


def test_every_sample_of_a_large_dataset_is_checked(tmp_path):
    """Past several read windows and batches: the first bad sample by its index, then the next kind of problem."""
    from datasets import Dataset

    n = 2 * arrow.WINDOW_ROWS + 6000
    labels = np.tile(np.array([IGNORE, 2, 3], dtype=np.int32), n)
    labels[3 * 65_537 + 1 : 3 * 65_537 + 3] = IGNORE  # sample 65,537: nothing supervised
    labels[3 * (n - 1) + 2] = 7  # the last sample: a label that is not its token

    def dataset(values: np.ndarray):
        ids = pa.ListArray.from_arrays(pa.array(np.arange(0, 3 * n + 1, 3, dtype=np.int32)),
                                       pa.array(np.tile(np.array([1, 2, 3], np.int32), n)))
        path = tmp_path / f"{values.sum()}.arrow"
        with arrow.writing(path, arrow.SAMPLES) as writer:
            writer.write_table(pa.table({"input_ids": ids, "labels": pa.ListArray.from_arrays(ids.offsets, values)}))
        return Dataset.from_file(str(path))

    assert _every_sample_supervised([dataset(labels)]).detail == "sample 65537 has no supervised token"
    labels[3 * 65_537 + 1 : 3 * 65_537 + 3] = [2, 3]
    assert _every_sample_supervised([dataset(labels)]).detail == \
        f"sample {n - 1}: labels differ from the input ids they supervise"
    labels[3 * (n - 1) + 2] = 3
    assert _every_sample_supervised([dataset(labels)]).detail == f"{n} samples, labels = input ids where supervised"


# ---------------------------------------------------------------------------------------------- cache, bad rows


def test_a_cache_hit_reads_and_tokenizes_nothing_whatever_the_processes(tmp_path, tok, forks, monkeypatch):
    spec = spec_of(tmp_path, chats(100))
    first = build(tok, [spec], cache=True, num_proc=2)

    def refuse(*args, **kwargs):
        raise AssertionError("read or tokenized on a cache hit")

    monkeypatch.setattr(build_module, "write_items", refuse)
    monkeypatch.setattr(build_module, "encode", refuse)
    for processes in (1, 2, "auto"):
        again = build(tok, [spec], cache=True, num_proc=processes)
        assert again[2].cache == "hit" and again[0][:] == first[0][:]


def test_bad_row_messages_are_capped_and_all_counted(tmp_path, tok):
    found = BadRows()
    for i in range(BadRows.LIMIT + 5):  # as a process finds them
        found.append(f"row {i}")
    assert len(found) == BadRows.LIMIT and found.total == BadRows.LIMIT + 5
    spec = spec_of(tmp_path, ["{bad"] * (BadRows.LIMIT + 50) + chats(5))
    for _ in range(2):  # built, then from the cache
        _, _, stats = build(tok, [spec], on_bad_row="skip", cache=True)
        assert len(stats.bad_rows) == BadRows.LIMIT and stats.bad_rows.total == BadRows.LIMIT + 50
        assert stats.as_dict()["bad_rows"] == BadRows.LIMIT + 50 and stats.sources[0]["bad"] == BadRows.LIMIT + 50
    assert stats.cache == "hit"


# ---------------------------------------------------------------------------------------------- exactness


def test_masks_read_at_reply_edges_equal_masks_from_every_tokens_offsets(tok):
    """Labels found by bisecting token starts equal labels from the full offset list, multi-byte text included."""
    rng = random.Random(0)
    pieces = ["hi", " there", "😀", "🧑‍🚀", "日本語", "e\u0301", "  ", "\n", "<|im_end|>", "<", "|>", "x" * 20]
    for template in (None, "llama3", "hermes"):
        if template:
            tok.chat_template = BUILTINS[template].read_text()
        for _ in range(60):
            text = lambda: "".join(rng.choice(pieces) for _ in range(rng.randint(0, 8)))  # noqa: E731
            messages = [{"role": "user", "content": text()}, {"role": "assistant", "content": text()}] * rng.randint(1, 2)
            row = rendered(tok, messages, "assistant")
            full = tok(row.text, add_special_tokens=False, return_offsets_mapping=True)
            reference = [t if any(s <= start < e for s, e in row.spans) else IGNORE
                         for t, (start, _) in zip(full["input_ids"], full["offset_mapping"])]
            sample = encode(tok, messages, "assistant", 10_000)
            assert sample.labels == reference and sample.offsets == [tuple(o) for o in full["offset_mapping"]]


@pytest.mark.parametrize("max_length, top, size", [(512, 300, 9500), (256, 300, 2300), (128, 40, 1000)])
def test_packing_statistics_equal_packing_the_whole_dataset(tmp_path, max_length, top, size):
    """Rows counted from the lengths alone equal TRL's pack_dataset over the whole dataset: blocks of 1,000 in
    order, a last part block, samples longer than max_length (truncated) and blocks of many equal lengths."""
    from datasets import Dataset

    from peftsft.data.packing import pack, packing_stats

    rng = np.random.default_rng(max_length)
    lengths = rng.integers(1, top, size=size)
    ids = [np.arange(n, dtype=np.int32) for n in lengths]
    path = tmp_path / "samples.arrow"
    with arrow.writing(path, arrow.SAMPLES) as writer:
        writer.write_table(pa.table({"input_ids": arrow.token_lists(ids), "labels": arrow.token_lists(ids)}))
    dataset = Dataset.from_file(str(path))
    whole = pack(dataset, max_length)
    tokens = sum(sum(row) for row in whole["seq_lengths"])
    assert packing_stats(dataset, max_length) == {"rows": len(whole),
                                                  "efficiency": round(tokens / (len(whole) * max_length), 4)}


# ---------------------------------------------------------------------------------------------- settings, progress


def test_num_proc_is_a_recipe_key_outside_the_cache_key(tok):
    from peftsft.data.cache import fingerprint

    with pytest.raises(ValueError):
        DataSection(num_proc=0)
    keys = {fingerprint(tok, DataSection(num_proc=n), 0) for n in (1, 4, "auto")}
    assert len(keys) == 1
    assert parallel.processes_for("auto", 10**9) == parallel.available_cores()
    assert parallel.processes_for(8, 3 * parallel.MIN_ROWS_PER_PROCESS) == 3 and parallel.processes_for(8, 5) == 1


def test_progress_is_a_bar_in_a_terminal_and_a_line_elsewhere():
    terminal = Console(file=io.StringIO(), force_terminal=True, width=100)
    with parallel.Meter(terminal, "train: tokenizing", 10) as meter:
        meter.advance(4)
        meter._bar.refresh()
    assert "train: tokenizing" in terminal.file.getvalue() and "4/10" in terminal.file.getvalue()
    piped = Console(file=io.StringIO(), force_terminal=False)
    with parallel.Meter(piped, "train: tokenizing", 10) as meter:
        meter.started -= 5  # a step that took a while
        meter.advance(10)
    assert piped.file.getvalue().startswith("train: tokenizing: 10 rows in 5.")
