"""Packing, exactly as the trainer does it (TRL best-fit-decreasing + padding-free collation), and its checks.

SFTTrainer with `packing=True, packing_strategy="bfd"` packs whole samples into `max_length` rows and
flattens each batch into one sequence whose position ids restart at every sample, with no attention
mask. Transformers then derives per-sample causal masks from those position ids (sdpa, eager, flex) or
per-sample lengths (flash attention), so samples never attend to each other.
"""

from __future__ import annotations

import contextlib

# Attention backends that keep packed samples apart given restarting position ids and no attention mask.
ISOLATING_ATTENTION = ("sdpa", "eager", "flex_attention", "flash_attention_2", "flash_attention_3")
PACKING_STRATEGY = "bfd"  # TRL's best-fit decreasing; levers/batching.py passes the same to SFTConfig
MAP_BATCH = 1000  # datasets.Dataset.map's default batch: TRL's pack_dataset packs each batch on its own
PACK_CHUNK = 8000


def pack(dataset, max_length: int):
    """Rows of whole samples (input_ids, labels where present, seq_lengths), at most `max_length` tokens each."""
    from trl import pack_dataset

    columns = [c for c in ("input_ids", "labels") if c in dataset.column_names]
    return pack_dataset(dataset.select_columns(columns), max_length, PACKING_STRATEGY)


def packing_stats(dataset, max_length: int, processes: int = 1, meter=None) -> dict:
    """Packed rows and their fill: the share of the rows' `max_length` slots that hold real tokens.

    The trainer packs blocks of 1,000 samples (datasets.map's default batch), so packing aligned chunks of a few
    thousand samples apart gives its exact rows, holding one chunk in memory rather than the whole packed copy;
    the chunks are spread over `processes`.
    """
    from trl import pack_dataset  # noqa: F401 - imported once here, not in every process

    from peftsft.data.arrow import WINDOW_ROWS
    from peftsft.data.parallel import Meter, run_sharded

    assert WINDOW_ROWS % PACK_CHUNK == 0 and PACK_CHUNK % MAP_BATCH == 0  # chunks start on the trainer's blocks
    chunks = -(-len(dataset) // PACK_CHUNK)

    def work(shard: int, first: int, last: int, advance) -> tuple[int, int]:
        return _pack_chunks(dataset, range(first * PACK_CHUNK, min(last * PACK_CHUNK, len(dataset))), max_length, advance)

    with _datasets_quiet():
        parts = run_sharded(work, chunks, min(processes, chunks), meter or Meter(None, "", None))
    rows, tokens = sum(p[0] for p in parts), sum(p[1] for p in parts)
    return {"rows": rows, "efficiency": round(tokens / max(rows * max_length, 1), 4)}


def _pack_chunks(dataset, rows: range, max_length: int, advance) -> tuple[int, int]:
    import pyarrow.compute as pc
    from datasets import Dataset

    from peftsft.data.arrow import scan

    packed_rows = tokens = 0
    for chunk in scan(dataset, ["input_ids"], rows=rows, batch_rows=PACK_CHUNK):
        # a fingerprint given: datasets would otherwise hash the chunk's contents to name it
        packed = pack(Dataset(chunk.replace_schema_metadata(None), fingerprint="packing-stats"), max_length)
        packed_rows += len(packed)
        tokens += pc.sum(pc.list_value_length(packed.data.column("input_ids"))).as_py() or 0
        advance(chunk.num_rows)
    return packed_rows, tokens


@contextlib.contextmanager
def _datasets_quiet():
    """No tqdm bar per packed chunk (the caller shows one bar for all of them)."""
    import datasets

    was_disabled = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            datasets.enable_progress_bars()


def collate(rows: list[dict]) -> dict:
    """A padding-free batch, as the trainer's collator builds it."""
    from peftsft.core.compat import padding_free_collator

    return padding_free_collator()(rows)


def isolation_problem(dataset, max_length: int, attention: str) -> str | None:
    """Why packed samples could see each other with this data and attention backend, or None."""
    import torch

    from peftsft.core.compat import packed_sequence_starts

    attention = "sdpa" if attention == "auto" else attention  # transformers' default where torch has it
    if attention not in ISOLATING_ATTENTION:
        return f"attention {attention!r} is not known to keep packed samples apart; use sdpa or eager"
    packed = pack(dataset.select(range(min(len(dataset), 256))), max_length)
    rows = [packed[i] for i in range(min(4, len(packed)))]
    batch = collate(rows)
    if "attention_mask" in batch:
        return "the packed batch carries an attention mask, which hides the sample boundaries from the model"
    lengths = torch.tensor([n for row in rows for n in row["seq_lengths"]])
    expected = torch.repeat_interleave(torch.arange(len(lengths)), lengths)
    found = packed_sequence_starts(batch["position_ids"])
    found = torch.zeros_like(expected) if found is None else found[0]
    if not torch.equal(found, expected):
        return "position ids do not restart at every sample boundary, so samples would attend to each other"
    starts = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)[:-1]])
    if (batch["labels"][0, starts] != -100).any():
        return "a sample's first token is a training target of the sample before it"
    return None
