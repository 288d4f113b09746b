"""Scoring a chat model on references: assistant-token loss, and answers matched the usual (SQuAD) way.

Shared by the general check around training, the task metrics during it and `eval` (artifacts), so all score alike.
Answer metrics compare texts normalised the usual (SQuAD) way: lowercase, punctuation removed, whitespace collapsed;
ROUGE-L (F-measure, `rouge-score`) and BLEU (corpus-level, 0-100, `sacrebleu`, effective n-gram order) use the raw
texts.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import NamedTuple

ANSWER_METRICS = ("exact_match", "contains_reference", "token_f1", "rouge_l", "bleu")


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


def token_f1(prediction: str, reference: str) -> float:
    pred, ref = normalize(prediction).split(), normalize(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def answer_metrics(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Mean per-answer scores, ROUGE-L F-measure, and corpus BLEU (0-100)."""
    from rouge_score import rouge_scorer
    from sacrebleu.metrics import BLEU

    if not references:
        return {}
    n = len(references)
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    pairs = list(zip(predictions, references))
    return {
        "exact_match": sum(exact_match(p, r) for p, r in pairs) / n,
        "contains_reference": sum(contains_reference(p, r) for p, r in pairs) / n,
        "token_f1": sum(token_f1(p, r) for p, r in pairs) / n,
        "rouge_l": sum(scorer.score(r, p)["rougeL"].fmeasure for p, r in pairs) / n,
        # effective order: short answers have no 4-grams, which would make plain BLEU 0 even for exact copies
        "bleu": BLEU(effective_order=True).corpus_score(predictions, [references]).score,
    }


# logits one scoring forward may hold (elements, fp32): a batch takes as many rows as fit, so a 150k-entry
# vocabulary scores fewer rows at a time than a 49k one, and memory stays bounded whatever the vocabulary
LOGITS_BUDGET = 2**25


def assistant_loss(model, tokenizer, conversations: list[list[dict]], max_length: int, batch_size: int) -> dict:
    """Token-weighted mean cross-entropy over assistant tokens (the training mask) and its perplexity.

    Rows are left-padded, so every row's replies sit in the batch's last positions: the model computes logits for
    those positions only (`logits_to_keep`), and the loss reads the supervised ones — never the whole vocabulary for
    every position. At most `batch_size` rows a batch, fewer where their logits would pass LOGITS_BUDGET."""
    import torch

    from peftsft.data.masking import encode

    samples = [encode(tokenizer, messages, "assistant", max_length) for messages in conversations]
    total, tokens = 0.0, 0
    for logits, targets, scored in _scored_batches(model, samples, tokenizer.pad_token_id, batch_size):
        picked = logits[scored].float()  # the supervised positions' logits only
        total += torch.nn.functional.cross_entropy(picked, targets[scored], reduction="sum").item()
        tokens += int(scored.sum())
    loss = total / max(tokens, 1)
    return {"eval_loss": loss, "perplexity": math.exp(min(loss, 700.0)), "eval_tokens": tokens}


class _Sequence(NamedTuple):
    input_ids: list[int]
    labels: list[int]


def answer_logprobs(model, tokenizer, sequences: list[tuple[list[int], list[int]]], batch_size: int):
    """For each (prompt ids, answer ids): the summed log-probability of the answer's tokens after the prompt, and how
    many there are — the prompt's tokens are context, never scored. Batched as assistant_loss is."""
    import torch

    from peftsft.data.masking import IGNORE

    samples = [_Sequence(p + a, [IGNORE] * len(p) + a) for p, a in sequences]
    out = []
    for logits, targets, scored in _scored_batches(model, samples, tokenizer.pad_token_id, batch_size):
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        picked = logprobs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1) * scored
        out += zip(picked.sum(dim=1).tolist(), scored.sum(dim=1).tolist())
    return out


def _scored_batches(model, samples, pad_id: int, batch_size: int):
    """(logits, targets, scored) of each batch's supervised tail: logits at the positions that predict the targets,
    the targets (IGNORE where unscored) and the mask of scored positions; the model in inference mode."""
    from peftsft.data.masking import IGNORE
    from peftsft.generation import inference_mode

    vocab = model.get_output_embeddings().weight.shape[0]
    with inference_mode(model):
        for batch in _batches(samples, vocab, batch_size, IGNORE):
            ids, mask, labels = _left_pad(batch, pad_id, IGNORE)
            keep = _scored_tail(labels, IGNORE)
            logits = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device),
                           logits_to_keep=keep + 1).logits  # fmt: skip
            targets = labels[:, -keep:].to(logits.device)
            yield logits[:, -keep - 1 : -1], targets, targets != IGNORE


def _scored_tail(labels, ignore: int) -> int:
    """How many final positions hold every supervised target of a left-padded batch (at least 1)."""
    supervised = (labels != ignore).any(dim=0).nonzero()
    return max(1, labels.shape[1] - int(supervised[0])) if len(supervised) else 1


def _batches(samples, vocab: int, most: int, ignore: int):
    """Consecutive rows, at most `most` a batch, and no more than the logits of their scored tails allow."""
    batch, tail = [], 0
    for sample in samples:
        labels = sample.labels
        first = next((i for i, label in enumerate(labels) if label != ignore), len(labels))
        grown = max(tail, len(labels) - first + 1)
        if batch and (len(batch) == most or (len(batch) + 1) * grown * vocab > LOGITS_BUDGET):
            yield batch
            batch, grown = [], len(labels) - first + 1
        batch.append(sample)
        tail = grown
    if batch:
        yield batch


def _left_pad(samples, pad_id: int, ignore: int):
    """Left-padded input ids, attention mask and labels."""
    import torch

    width = max(len(s.input_ids) for s in samples)
    ids = torch.full((len(samples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(samples), width), dtype=torch.long)
    labels = torch.full((len(samples), width), ignore, dtype=torch.long)
    for row, sample in enumerate(samples):
        n = len(sample.input_ids)
        ids[row, width - n :] = torch.tensor(sample.input_ids)
        mask[row, width - n :] = 1
        labels[row, width - n :] = torch.tensor(sample.labels)
    return ids, mask, labels
