"""Render a conversation with the chat template and mark which tokens the loss is computed on.

We do not rely on `{% generation %}` markers (most templates, SmolLM2's included, lack them): each
assistant turn's character span is found by rendering the conversation up to that turn with and
without it, then tokens are supervised by their character offsets. The span ends at the turn's
end-of-turn text (read off the template), so the model learns to stop, and trailing template text
(a newline) stays masked. Rows are tokenized in batches (one call into the tokenizer for many rows).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from peftsft.data.formats import Content, RowError
from peftsft.data.templates import end_of_turn, fit_messages, render
from peftsft.data.tools import tools_of

IGNORE = -100

__all__ = ["IGNORE", "Encoded", "Rendered", "assistant_spans", "encode", "encode_rendered", "end_of_turn", "render",
           "rendered"]


@dataclass
class Encoded:
    input_ids: Any  # a list of ints (encode) or an int32 array (encode_rendered)
    labels: Any
    truncated: bool
    text: str = ""  # what was tokenized, and each token's character span in it (for the pre-flight checks)
    offsets: Any = field(default_factory=list)


@dataclass
class Rendered:
    """A row as the text to tokenize and the character spans to learn; spans None: plain text, all learned."""

    text: str
    spans: list[tuple[int, int]] | None


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
        # the conversation up to the last message is the whole conversation: rendered once already
        upto = text if i == len(messages) - 1 else render(tokenizer, messages[: i + 1], tools=tools)
        if not (text.startswith(upto) and upto.startswith(prompt)):
            raise RowError("the chat template does not render this conversation prefix-stably; cannot mask it")
        start, end = len(prompt), len(upto)
        cut = text.rfind(eot, start, end) if eot else -1
        spans.append((start, cut + len(eot) if cut >= 0 else end))
    return text, spans


def rendered(tokenizer, content: Content, masking: str) -> Rendered:
    """What `encode_rendered` tokenizes for a conversation (or plain text: continued pre-training)."""
    if isinstance(content, str):
        return Rendered(content, None)
    text, spans = assistant_spans(tokenizer, fit_messages(tokenizer, content))
    return Rendered(text, spans[-1:] if masking == "last_turn" else spans)


def encode_rendered(tokenizer, rows: list[Rendered], masking: str, max_length: int) -> list[Encoded]:
    """Token ids and labels (-100 where not supervised) as int32 arrays, truncated to `max_length` from the end.

    Conversations are tokenized without special tokens (the template wrote them); plain text with the tokenizer's
    own (BOS where it adds one) and a closing EOS, every token learned.
    """
    out: list[Encoded | None] = [None] * len(rows)
    for plain in (False, True):
        picked = [i for i, row in enumerate(rows) if (row.spans is None) == plain]
        if not picked:
            continue
        # no attention masks (all ones) and, for conversations, no offset lists: a token's offsets are read from
        # its encoding when needed, for the few tokens at the edges of a reply — converting every token's
        # (start, end) to Python costs as much as the masking itself
        batch = tokenizer([rows[i].text for i in picked], add_special_tokens=plain, return_offsets_mapping=plain,
                          return_attention_mask=False, return_token_type_ids=False)
        for k, (i, ids) in enumerate(zip(picked, batch["input_ids"])):
            ids = np.asarray(ids, dtype=np.int32)
            if plain:
                offsets = np.asarray(batch["offset_mapping"][k], dtype=np.int64).reshape(-1, 2)
                out[i] = _label_text(tokenizer, rows[i], ids, offsets, max_length)
            else:
                out[i] = _label_chat(rows[i], ids, TokenOffsets(batch.encodings[k], len(ids)), masking, max_length)
    return out


def encode(tokenizer, content: Content, masking: str, max_length: int) -> Encoded:
    """One row's ids and labels as lists (`encode_rendered` for many rows)."""
    enc = encode_rendered(tokenizer, [rendered(tokenizer, content, masking)], masking, max_length)[0]
    offsets = [tuple(int(x) for x in pair) for pair in enc.offsets.tolist()]
    return Encoded(enc.input_ids.tolist(), enc.labels.tolist(), enc.truncated, enc.text, offsets)


class TokenOffsets:
    """Each token's (start, end) character span, read from the tokenizer's encoding one token at a time.

    Token starts never decrease along a sequence, so the tokens starting inside a span are found by bisection.
    """

    def __init__(self, encoding, length: int):
        self.encoding, self.length = encoding, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[int, int]:
        if not -self.length <= index < self.length:
            raise IndexError(index)
        span = self.encoding.token_to_chars(index % self.length)
        if span is None:  # a token added by the post-processor: it covers no text
            return (0, 0)
        return span

    def first_starting_at(self, position: int) -> int:
        """The index of the first token that starts at or after `position` (len(self) if none)."""
        return bisect.bisect_left(range(self.length), position, key=lambda i: self[i][0])

    def tolist(self) -> list[tuple[int, int]]:
        return [self[i] for i in range(self.length)]


def _label_chat(row: Rendered, ids: np.ndarray, offsets: TokenOffsets, masking: str, max_length: int):
    """Labels: a token is learned when it starts inside a reply's span."""
    if masking == "all":
        labels = ids.copy()
    else:
        labels = np.full(len(ids), IGNORE, dtype=np.int32)
        for start, end in row.spans:
            first, stop = offsets.first_starting_at(start), offsets.first_starting_at(end)
            labels[first:stop] = ids[first:stop]
    truncated = len(ids) > max_length
    kept = TokenOffsets(offsets.encoding, min(len(ids), max_length))
    return Encoded(ids[:max_length], labels[:max_length], truncated, row.text, kept)


def _label_text(tokenizer, row: Rendered, ids: np.ndarray, offsets: np.ndarray, max_length: int):
    text, eos = row.text, tokenizer.eos_token
    if eos is not None and (not len(ids) or ids[-1] != tokenizer.eos_token_id):
        ids = np.append(ids, np.int32(tokenizer.eos_token_id))
        offsets = np.vstack([offsets, [len(text), len(text) + len(eos)]])
        text += eos
    truncated = len(ids) > max_length
    return Encoded(ids[:max_length], ids[:max_length].copy(), truncated, text, offsets[:max_length])
