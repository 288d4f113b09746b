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
from jinja2 import TemplateError

from peftsft.data.formats import Content, RowError
from peftsft.data.templates import end_of_turn, fit_messages, render
from peftsft.data.tools import tools_of

IGNORE = -100

__all__ = ["IGNORE", "Encoded", "Rendered", "assistant_spans", "encode", "encode_rendered", "end_of_turn", "render",
           "rendered", "rendered_rows"]


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
    prompts = [render(tokenizer, part, add_generation_prompt=True, tools=tools) for part in _prompts(messages)]
    uptos = [render(tokenizer, part, tools=tools) for part in _uptos(messages)]
    return text, _spans(text, messages, prompts, uptos, end_of_turn(tokenizer))


def _replies(messages: list[dict[str, Any]]) -> list[int]:
    return [i for i, message in enumerate(messages) if message["role"] == "assistant"]


def _prompts(messages: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """The conversation before each reply (none before a reply that opens it: its prompt is empty)."""
    return [messages[:i] for i in _replies(messages) if i]


def _uptos(messages: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """The conversation through each reply but the last message (through that, it is the whole conversation)."""
    return [messages[: i + 1] for i in _replies(messages) if i < len(messages) - 1]


def _spans(text: str, messages, prompts: list[str], uptos: list[str], eot: str | None) -> list[tuple[int, int]]:
    """Each reply's span from the renders of `_prompts` and `_uptos`; a template that is not prefix-stable refuses."""
    prompts, uptos, spans = iter(prompts), iter(uptos), []
    for i in _replies(messages):
        prompt = next(prompts) if i else ""
        upto = text if i == len(messages) - 1 else next(uptos)
        if not (text.startswith(upto) and upto.startswith(prompt)):
            raise RowError("the chat template does not render this conversation prefix-stably; cannot mask it")
        start, end = len(prompt), len(upto)
        cut = text.rfind(eot, start, end) if eot else -1
        spans.append((start, cut + len(eot) if cut >= 0 else end))
    return spans


def rendered(tokenizer, content: Content, masking: str) -> Rendered:
    """What `encode_rendered` tokenizes for a conversation (or plain text: continued pre-training)."""
    if isinstance(content, str):
        return Rendered(content, None)
    text, spans = assistant_spans(tokenizer, fit_messages(tokenizer, content))
    return Rendered(text, _learned(spans, masking))


def _learned(spans: list[tuple[int, int]], masking: str) -> list[tuple[int, int]]:
    return spans[-1:] if masking == "last_turn" else spans


def rendered_rows(tokenizer, contents: list[Content], masking: str) -> list[Rendered | RowError | TemplateError]:
    """`rendered` for many rows: each row's Rendered, or the error that refused it.

    The conversations without tool schemas (a call takes one `tools`) render in one `apply_chat_template` call for
    their whole texts and one for the prompts before their replies (and one for earlier turns'): the same texts as
    row by row, without apply_chat_template's work per call. When a batched call raises, its rows are rendered one
    by one, so that each error names its own row.
    """
    out: list[Rendered | RowError | TemplateError | None] = [None] * len(contents)
    batched: dict[int, list[dict[str, Any]]] = {}
    for k, content in enumerate(contents):
        messages = None if isinstance(content, str) else fit_messages(tokenizer, content)
        if messages and not tools_of(messages):
            batched[k] = list(messages)
        else:
            out[k] = _rendered_or_error(tokenizer, content, masking)
    if batched:
        try:
            _render_batched(tokenizer, batched, masking, out)
        except Exception:  # noqa: BLE001 - whatever the template raised, row by row says which row and why
            for k in batched:
                out[k] = _rendered_or_error(tokenizer, contents[k], masking)
    return out


def _render_batched(tokenizer, batched: dict[int, list[dict[str, Any]]], masking: str, out: list) -> None:
    rows = list(batched.values())
    texts = _render_many(tokenizer, rows, add_generation_prompt=False)
    prompts = iter(_render_many(tokenizer, [p for m in rows for p in _prompts(m)], add_generation_prompt=True))
    uptos = iter(_render_many(tokenizer, [u for m in rows for u in _uptos(m)], add_generation_prompt=False))
    eot = end_of_turn(tokenizer)
    for (k, messages), text in zip(batched.items(), texts):
        mine = [next(prompts) for _ in _prompts(messages)], [next(uptos) for _ in _uptos(messages)]
        try:
            out[k] = Rendered(text, _learned(_spans(text, messages, *mine, eot), masking))
        except RowError as exc:
            out[k] = exc


def _render_many(tokenizer, conversations: list[list[dict[str, Any]]], add_generation_prompt: bool) -> list[str]:
    """Many conversations rendered in one call (transformers renders a list of conversations one by one)."""
    if not conversations:
        return []
    return tokenizer.apply_chat_template(conversations, tools=None, tokenize=False,
                                         add_generation_prompt=add_generation_prompt)


def _rendered_or_error(tokenizer, content: Content, masking: str) -> Rendered | RowError | TemplateError:
    try:
        return rendered(tokenizer, content, masking)
    except (RowError, TemplateError) as exc:  # the template itself refused the row (raise_exception, a role it lacks)
        return exc


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
        texts = [rows[i].text for i in picked]
        if not plain:
            for i, encoding in zip(picked, _encodings(tokenizer, texts)):
                ids = np.asarray(encoding.ids, dtype=np.int32)
                out[i] = _label_chat(rows[i], ids, TokenOffsets(encoding, len(ids)), masking, max_length)
            continue
        batch = tokenizer(texts, add_special_tokens=True, return_offsets_mapping=True, return_attention_mask=False,
                          return_token_type_ids=False)
        for k, (i, ids) in enumerate(zip(picked, batch["input_ids"])):
            offsets = np.asarray(batch["offset_mapping"][k], dtype=np.int64).reshape(-1, 2)
            out[i] = _label_text(tokenizer, rows[i], np.asarray(ids, dtype=np.int32), offsets, max_length)
    return out


def _encodings(tokenizer, texts: list[str]) -> list:
    """The conversations' encodings (ids; offsets read from them when needed, for the few tokens at the edges of a
    reply), without special tokens: the template wrote them.

    Straight from the fast tokenizer's backend (`tokenizers`) when it is set up as a plain call leaves it (no
    truncation or padding, special tokens split as the tokenizer says): the same encodings, without the call's
    conversion of every one into Python lists and dicts; otherwise through the call."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    plain_call = (backend is not None and backend.truncation is None and backend.padding is None
                  and backend.encode_special_tokens == bool(getattr(tokenizer, "split_special_tokens", False)))
    if plain_call:
        return backend.encode_batch(texts, add_special_tokens=False)
    return tokenizer(texts, add_special_tokens=False, return_attention_mask=False, return_token_type_ids=False).encodings


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
