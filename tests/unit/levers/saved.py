"""What autograd keeps for the backward: the bytes of every distinct tensor a step saves, its weights left out."""

from __future__ import annotations

import contextlib

import torch


def saved_bytes(model, ids, patches: contextlib.AbstractContextManager) -> int:
    """Bytes saved for the backward by one training step of `model` on `ids` under `patches`."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen, total = set(), 0

    def pack(t):
        nonlocal total
        ptr = t.untyped_storage().data_ptr()
        if ptr not in seen and ptr not in params:
            seen.add(ptr)
            total += t.untyped_storage().nbytes()
        return t

    with patches, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=ids, labels=ids).loss.backward()
    return total
