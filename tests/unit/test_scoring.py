"""training/scoring.assistant_loss: the loss on assistant tokens, computed without full-vocabulary logits."""

from __future__ import annotations

import pytest
import torch

from peftsft.data.masking import IGNORE, encode
from peftsft.training import scoring

CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}, {"role": "assistant", "content": "Paris."}],
    [{"role": "user", "content": "Two plus two?"}, {"role": "assistant", "content": "Four, of course."},
     {"role": "user", "content": "And three plus three, written out in words please?"},
     {"role": "assistant", "content": "Six."}],
    [{"role": "user", "content": "Say something long."},
     {"role": "assistant", "content": "A longer reply with several words to score at the end of the row."}],
]


def _reference(model, tokenizer, conversations) -> float:
    """The definition: every row alone, full logits, cross-entropy over the supervised targets."""
    total, count = 0.0, 0
    with torch.no_grad():
        for messages in conversations:
            sample = encode(tokenizer, messages, "assistant", 256)
            ids = torch.tensor([sample.input_ids])
            logits = model(input_ids=ids).logits.float()
            logits = logits[:, logits.shape[1] - ids.shape[1] :]  # prompt tuning prepends virtual tokens
            targets = torch.tensor([sample.labels])[:, 1:]
            total += torch.nn.functional.cross_entropy(logits[0, :-1], targets[0], ignore_index=IGNORE,
                                                       reduction="sum").item()  # fmt: skip
            count += int((targets != IGNORE).sum())
    return total / count


@pytest.fixture
def model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()


@pytest.mark.parametrize("adapter", ["none", "lora", "prompt"])
def test_equals_the_full_logits_definition(model, tokenizer, adapter):
    from peft import LoraConfig, PromptTuningConfig, get_peft_model

    if adapter == "lora":
        model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    elif adapter == "prompt":
        model = get_peft_model(model, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3))
    got = scoring.assistant_loss(model, tokenizer, CONVERSATIONS, 256, batch_size=8)
    assert got["eval_loss"] == pytest.approx(_reference(model, tokenizer, CONVERSATIONS), rel=1e-5)
    supervised = [encode(tokenizer, c, "assistant", 256).labels[1:] for c in CONVERSATIONS]
    assert got["eval_tokens"] == sum(label != IGNORE for labels in supervised for label in labels)


def test_logits_stay_within_the_budget_whatever_the_batch(model, tokenizer, monkeypatch):
    """Only the replies' tail positions get logits, and batches shrink so their logits fit the budget."""
    vocab = model.config.vocab_size
    monkeypatch.setattr(scoring, "LOGITS_BUDGET", 24 * vocab)  # room for 24 positions' logits
    shapes = []
    model.register_forward_hook(lambda module, args, out: shapes.append(tuple(out.logits.shape)))
    many = CONVERSATIONS * 4
    got = scoring.assistant_loss(model, tokenizer, many, 256, batch_size=8)
    longest = max(len(encode(tokenizer, c, "assistant", 256).input_ids) for c in many)
    assert all(rows * positions * vocab <= 24 * vocab or rows == 1 for rows, positions, _ in shapes)
    assert max(positions for _, positions, _ in shapes) < longest  # never every position of a row
    assert got["eval_loss"] == pytest.approx(_reference(model, tokenizer, many), rel=1e-5)
