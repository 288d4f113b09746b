"""Packing, exactly as the trainer does it (TRL best-fit-decreasing + padding-free collation), and its checks.

SFTTrainer with `packing=True, packing_strategy="bfd"` packs whole samples into `max_length` rows and
flattens each batch into one sequence whose position ids restart at every sample, with no attention
mask. Transformers then derives per-sample causal masks from those position ids (sdpa, eager, flex) or
per-sample lengths (flash attention), so samples never attend to each other.
"""

from __future__ import annotations

# Attention backends that keep packed samples apart given restarting position ids and no attention mask.
ISOLATING_ATTENTION = ("sdpa", "eager", "flex_attention", "flash_attention_2", "flash_attention_3")
PACKING_STRATEGY = "bfd"  # TRL's best-fit decreasing; levers/batching.py passes the same to SFTConfig


def pack(dataset, max_length: int):
    """Rows of whole samples (input_ids, labels, seq_lengths), at most `max_length` tokens each."""
    from trl import pack_dataset

    return pack_dataset(dataset.select_columns(["input_ids", "labels"]), max_length, PACKING_STRATEGY)


def packing_stats(dataset, max_length: int) -> dict:
    """Packed rows and their fill: the share of the rows' `max_length` slots that hold real tokens."""
    packed = pack(dataset, max_length)
    tokens = sum(sum(lengths) for lengths in packed["seq_lengths"])
    return {"rows": len(packed), "efficiency": round(tokens / max(len(packed) * max_length, 1), 4)}


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
