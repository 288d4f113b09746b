"""Packing, exactly as the trainer does it (TRL best-fit-decreasing + padding-free collation), and its checks.

SFTTrainer with `packing=True, packing_strategy="bfd"` packs whole samples into `max_length` rows and
flattens each batch into one sequence whose position ids restart at every sample, with no attention
mask. Transformers then derives per-sample causal masks from those position ids (sdpa, eager, flex) or
per-sample lengths (flash attention), so samples never attend to each other.
"""

from __future__ import annotations

import bisect

import numpy as np

# Attention backends that keep packed samples apart given restarting position ids and no attention mask.
ISOLATING_ATTENTION = ("sdpa", "eager", "flex_attention", "flash_attention_2", "flash_attention_3")
PACKING_STRATEGY = "bfd"  # TRL's best-fit decreasing; levers/batching.py passes the same to SFTConfig
MAP_BATCH = 1000  # datasets.Dataset.map's default batch: TRL's pack_dataset packs each batch on its own


def pack(dataset, max_length: int):
    """Rows of whole samples (input_ids, labels where present, seq_lengths), at most `max_length` tokens each."""
    from trl import pack_dataset

    columns = [c for c in ("input_ids", "labels") if c in dataset.column_names]
    return pack_dataset(dataset.select_columns(columns), max_length, PACKING_STRATEGY)


def packing_stats(dataset, max_length: int, meter=None) -> dict:
    """Packed rows and their fill: the share of the rows' `max_length` slots that hold real tokens.

    The trainer packs blocks of 1,000 samples (datasets.map's default batch) with TRL's best-fit decreasing, whose
    rows depend on the samples' lengths alone: the same binning on each block's lengths gives its exact row count
    (tests/unit/test_data_scale.py checks it against TRL's `pack_dataset`). Our own loop rather than TRL's: TRL
    builds the packed table, gathering every token, for a figure that needs only the lengths.
    """
    import pyarrow.compute as pc

    from peftsft.data.arrow import scan

    rows = tokens = 0
    block: list[int] = []
    for batch in scan(dataset, ["input_ids"], batch_rows=MAP_BATCH * 8):
        lengths = np.minimum(pc.list_value_length(batch.column("input_ids")).to_numpy(zero_copy_only=False),
                             max_length)  # TRL truncates to max_length
        block.extend(lengths.tolist())
        # whole blocks of MAP_BATCH samples, in the dataset's order; a part block waits for the next batch
        while len(block) >= MAP_BATCH:
            rows += best_fit_decreasing_rows(block[:MAP_BATCH], max_length)
            tokens += sum(block[:MAP_BATCH])
            del block[:MAP_BATCH]
        if meter is not None:
            meter.advance(batch.num_rows)
    if block:
        rows += best_fit_decreasing_rows(block, max_length)
        tokens += sum(block)
    return {"rows": rows, "efficiency": round(tokens / max(rows * max_length, 1), 4)}


def best_fit_decreasing_rows(lengths: list[int], max_length: int) -> int:
    """How many rows TRL's best-fit decreasing packs `lengths` into: longest first, each into the open row with
    the least room that still fits it, else a new row (empty samples are dropped, as TRL drops them)."""
    rows, rooms = 0, []  # rooms: the open rows' free slots, sorted
    for length in sorted(lengths, reverse=True):
        if length <= 0:
            continue
        i = bisect.bisect_left(rooms, length)
        if i < len(rooms):
            room = rooms.pop(i) - length
        else:
            rows, room = rows + 1, max_length - length
        if room > 0:
            bisect.insort(rooms, room)
    return rows


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
