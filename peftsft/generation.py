"""Answer chat prompts with a model, using its tokenizer's chat template."""

from __future__ import annotations

import torch


@torch.no_grad()
def answer(model, tokenizer, messages: list[dict[str, str]], max_new_tokens: int = 64) -> str:
    """Greedy reply to a conversation, decoded without special tokens."""
    inputs = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    ).to(model.device)
    was_training = model.training
    model.eval()
    output = model.generate(
        **inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
    )
    model.train(was_training)
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()


def answer_prompts(model, tokenizer, prompts: list[str], max_new_tokens: int = 64) -> list[str]:
    return [answer(model, tokenizer, [{"role": "user", "content": p}], max_new_tokens) for p in prompts]
