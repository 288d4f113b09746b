"""Render a conversation with the chat template and mark which tokens the loss is computed on.

We do not rely on `{% generation %}` markers (most templates, SmolLM2's included, lack them): each
assistant turn's character span is found by rendering the conversation up to that turn with and
without it, then tokens are supervised by their character offsets. The span ends at the turn's
end-of-turn text (read off the template), so the model learns to stop, and trailing template text
(a newline) stays masked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from peftsft.data.formats import Content, RowError
from peftsft.data.templates import end_of_turn, fit_messages, render
from peftsft.data.tools import tools_of

IGNORE = -100

__all__ = ["IGNORE", "Encoded", "assistant_spans", "encode", "end_of_turn", "render"]


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    truncated: bool
    text: str = ""  # what was tokenized, and each token's character span in it (for the pre-flight checks)
    offsets: list[tuple[int, int]] = field(default_factory=list)


def assistant_spans(tokenizer, messages: list[dict[str, Any]]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered text and the character spans of every assistant reply (through its end-of-turn token)."""
    tools = tools_of(messages)  # the schemas are in every prefix too (they sit in the system turn)
    text = render(tokenizer, messages, tools=tools)
    eot = end_of_turn(tokenizer)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = render(tokenizer, messages[:i], add_generation_prompt=True, tools=tools) if i else ""
        upto = render(tokenizer, messages[: i + 1], tools=tools)
        if not (text.startswith(upto) and upto.startswith(prompt)):
            raise RowError("the chat template does not render this conversation prefix-stably; cannot mask it")
        start, end = len(prompt), len(upto)
        cut = text.rfind(eot, start, end) if eot else -1
        spans.append((start, cut + len(eot) if cut >= 0 else end))
    return text, spans


def encode(tokenizer, content: Content, masking: str, max_length: int) -> Encoded:
    """Token ids and labels (-100 where not supervised), truncated to `max_length` from the end.

    `content` is a conversation, or plain text (continued pre-training: every token and a closing EOS learned).
    """
    if isinstance(content, str):
        return _encode_text(tokenizer, content, max_length)
    text, spans = assistant_spans(tokenizer, fit_messages(tokenizer, content))
    if masking == "last_turn":
        spans = spans[-1:]
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], [tuple(o) for o in enc["offset_mapping"]]
    if masking == "all":
        labels = list(ids)
    else:
        labels = [tok if _inside(start, spans) else IGNORE for tok, (start, _) in zip(ids, offsets)]
    truncated = len(ids) > max_length
    return Encoded(ids[:max_length], labels[:max_length], truncated, text, offsets[:max_length])


def _encode_text(tokenizer, text: str, max_length: int) -> Encoded:
    """Plain text with the tokenizer's own special tokens (BOS where it adds one) and a closing EOS."""
    enc = tokenizer(text, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
    eos = tokenizer.eos_token
    if eos is not None and (not ids or ids[-1] != tokenizer.eos_token_id):
        ids.append(tokenizer.eos_token_id)
        offsets.append((len(text), len(text) + len(eos)))
        text += eos
    truncated = len(ids) > max_length
    return Encoded(ids[:max_length], ids[:max_length], truncated, text, offsets[:max_length])


def _inside(position: int, spans: list[tuple[int, int]]) -> bool:
    return any(start <= position < end for start, end in spans)
