"""Scoring a chat model on references: assistant-token loss, and answers matched the usual (SQuAD) way.

Shared by the general check around training and by `eval` (artifacts), so both score alike.
"""

from __future__ import annotations

import math
import re


def normalize(text: str) -> str:
    """Lowercase, punctuation removed, whitespace collapsed."""
    text = re.sub(r"[^\w\s]|_", "", text.lower())
    return " ".join(text.split())


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize(prediction) == normalize(reference))


def contains_reference(prediction: str, reference: str) -> float:
    """1 when the whole reference appears in the prediction, on word boundaries."""
    ref = normalize(reference)
    return float(bool(ref) and f" {ref} " in f" {normalize(prediction)} ")


def assistant_loss(model, tokenizer, conversations: list[list[dict]], max_length: int, batch_size: int) -> dict:
    """Token-weighted mean cross-entropy over assistant tokens (the training mask) and its perplexity."""
    import torch

    from peftsft.data.masking import IGNORE, encode
    from peftsft.generation import inference_mode

    samples = [encode(tokenizer, messages, "assistant", max_length) for messages in conversations]
    total, tokens = 0.0, 0
    with inference_mode(model):
        for start in range(0, len(samples), batch_size):
            ids, mask, labels = _pad(samples[start : start + batch_size], tokenizer.pad_token_id, IGNORE)
            logits = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device)).logits.float()
            logits = logits[:, logits.shape[1] - ids.shape[1] :]  # prompt-learning adapters prepend virtual tokens
            targets = labels[:, 1:].to(logits.device)
            total += torch.nn.functional.cross_entropy(
                logits[:, :-1].flatten(0, 1), targets.flatten(), ignore_index=IGNORE, reduction="sum"
            ).item()
            tokens += int((targets != IGNORE).sum())
    loss = total / max(tokens, 1)
    return {"eval_loss": loss, "perplexity": math.exp(min(loss, 700.0)), "eval_tokens": tokens}


def _pad(samples, pad_id: int, ignore: int):
    """Right-padded input ids, attention mask and labels."""
    import torch

    width = max(len(s.input_ids) for s in samples)
    ids = torch.full((len(samples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(samples), width), dtype=torch.long)
    labels = torch.full((len(samples), width), ignore, dtype=torch.long)
    for row, sample in enumerate(samples):
        n = len(sample.input_ids)
        ids[row, :n] = torch.tensor(sample.input_ids)
        mask[row, :n] = 1
        labels[row, :n] = torch.tensor(sample.labels)
    return ids, mask, labels
