"""Render a conversation with the chat template and mark which tokens the loss is computed on.

We do not rely on `{% generation %}` markers (most templates, SmolLM2's included, lack them): each
assistant turn's character span is found by rendering the conversation up to that turn with and
without it, then tokens are supervised by their character offsets. The span ends at the turn's
end-of-turn token, so the model learns to stop, and trailing template text (a newline) stays masked.
"""

from __future__ import annotations

from dataclasses import dataclass

from .formats import RowError

IGNORE = -100


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    truncated: bool


def render(tokenizer, messages: list[dict[str, str]], add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def end_of_turn(tokenizer) -> str:
    """The token that closes an assistant turn: the tokenizer's EOS (`<|im_end|>` for ChatML models)."""
    return tokenizer.eos_token


def assistant_spans(tokenizer, messages: list[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered text and the character spans of every assistant reply (through its end-of-turn token)."""
    text = render(tokenizer, messages)
    eot = end_of_turn(tokenizer)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = render(tokenizer, messages[:i], add_generation_prompt=True) if i else ""
        upto = render(tokenizer, messages[: i + 1])
        if not (text.startswith(upto) and upto.startswith(prompt)):
            raise RowError("the chat template does not render this conversation prefix-stably; cannot mask it")
        start, end = len(prompt), len(upto)
        cut = text.rfind(eot, start, end) if eot else -1
        spans.append((start, cut + len(eot) if cut >= 0 else end))
    return text, spans


def encode(tokenizer, messages: list[dict[str, str]], masking: str, max_length: int) -> Encoded:
    """Token ids and labels (-100 where not supervised), truncated to `max_length` from the end."""
    text, spans = assistant_spans(tokenizer, messages)
    if masking == "last_turn":
        spans = spans[-1:]
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = enc["input_ids"]
    if masking == "all":
        labels = list(ids)
    else:
        labels = [tok if _inside(start, spans) else IGNORE for tok, (start, _) in zip(ids, enc["offset_mapping"])]
    truncated = len(ids) > max_length
    return Encoded(ids[:max_length], labels[:max_length], truncated)


def _inside(position: int, spans: list[tuple[int, int]]) -> bool:
    return any(start <= position < end for start, end in spans)
