"""Normalise a row of any supported dataset format into OpenAI-style chat messages (or plain text).

Formats: OpenAI `messages`, ShareGPT `conversations` (from/value), Alpaca (instruction/input/output,
optional system/history), prompt-completion, and plain `text` for continued pre-training. A recipe maps
differently named columns with `fields` and differently named roles with `roles`. A row's `tools` column (tool
schemas) makes the conversation a `tools.ToolChat`; ShareGPT `function_call` turns become structured `tool_calls`,
and so does OpenAI's legacy function calling (`functions` column, assistant `function_call`, `function` results).
"""

from __future__ import annotations

from peftsft.core.config import FIELDS, ROLES
from peftsft.data.tools import (
    ToolsError,
    function_call_turn,
    normalize_tool_calls,
    normalize_tools,
    tool_names,
    with_tools,
)

import json
from dataclasses import dataclass, field
from typing import Any

FORMATS = ("messages", "sharegpt", "alpaca", "prompt_completion", "text")

REQUIRED: dict[str, tuple[str, ...]] = {
    "messages": ("messages",),
    "sharegpt": ("conversations",),
    "alpaca": ("instruction", "output"),
    "prompt_completion": ("prompt", "completion"),
    "text": ("text",),
}

# Role names seen in the wild (ShareGPT and its variants) → ours; a recipe's `roles` adds to / overrides these.
KNOWN_ROLES = {
    **{role: role for role in ROLES},
    "human": "user",
    "gpt": "assistant",
    "model": "assistant",
    "bot": "assistant",
    "chatgpt": "assistant",
    "function_call": "assistant",
    "observation": "tool",
    "function": "tool",
    "ipython": "tool",
}

Content = list[dict[str, Any]] | str  # a conversation, or plain text (format "text")


class RowError(ValueError):
    """A row that cannot be turned into a conversation."""


@dataclass(frozen=True)
class Mapping:
    """A dataset's column names (`fields`: our name → its name) and role names (`roles`: its → ours)."""

    fields: dict[str, str] = field(default_factory=dict)
    roles: dict[str, str] = field(default_factory=dict)

    def col(self, name: str) -> str:
        return self.fields.get(name, name)

    def role(self, name: Any) -> str:
        role = self.roles.get(name, KNOWN_ROLES.get(name)) if isinstance(name, str) else None
        if role not in ROLES:
            raise RowError(
                f"unknown role {name!r}; expected one of {', '.join(ROLES)}",
            )
        return role


NO_MAPPING = Mapping()


_PREFERENCE_DATA = 'a row of {} is preference data, not chat data: set task = "preference" in the recipe'


def detect_format(row: dict[str, Any], mapping: Mapping = NO_MAPPING) -> str:
    """The format of a row, judged by which (mapped) columns it has."""
    for fmt in FORMATS:
        if all(mapping.col(name) in row for name in REQUIRED[fmt]):
            if fmt in ("messages", "sharegpt"):
                return _list_format(row[mapping.col(REQUIRED[fmt][0])], fmt, mapping)
            if fmt == "prompt_completion":
                _refuse_unpaired_preference(row)
            return fmt
    if "chosen" in row and "rejected" in row:
        raise RowError(_PREFERENCE_DATA.format("chosen + rejected answers (preference)"))
    raise RowError(
        f"cannot tell the format of a row with keys {sorted(row)}; expected 'messages' (OpenAI), "
        "'conversations' (ShareGPT), 'instruction' + 'output' (Alpaca), 'prompt' + 'completion', or 'text' "
        "— or set format and fields for this dataset in the recipe"
    )


def _refuse_unpaired_preference(row: dict[str, Any]) -> None:
    """A prompt + completion row with a true/false label is unpaired preference data: SFT would learn its bad answers.
    Checked where the format is judged and on every row read as prompt + completion (a file's later rows too)."""
    if isinstance(row.get("label"), bool):
        raise RowError(_PREFERENCE_DATA.format("prompt + completion + a true/false label (unpaired_preference)"))


def _list_format(messages: Any, default: str, mapping: Mapping) -> str:
    """ShareGPT if the turns use from/value, OpenAI messages if role/content, whatever the list is called."""
    first = _as_list(messages, "messages")[0] if messages else None
    if isinstance(first, dict) and mapping.col("from") in first and mapping.col("value") in first:
        return "sharegpt"
    if isinstance(first, dict) and mapping.col("role") in first:
        return "messages"
    return default


def to_messages(row: dict[str, Any], fmt: str, mapping: Mapping = NO_MAPPING) -> Content:
    """The row as chat messages (or, for format "text", the text itself)."""
    fmt = detect_format(row, mapping) if fmt == "auto" else fmt
    if fmt not in PARSERS:
        raise RowError(f"unsupported format {fmt!r}")
    for name in REQUIRED[fmt]:
        if mapping.col(name) not in row:
            raise RowError(f"missing column {mapping.col(name)!r} ({fmt} format); the row has {sorted(row)}")
    content = PARSERS[fmt](row, mapping)
    if isinstance(content, str):
        return content
    tools = row_tools(row, mapping)
    _refuse_unoffered_calls(content, tools)
    return with_tools(content, tools)


def row_tools(row: dict[str, Any], mapping: Mapping = NO_MAPPING) -> list[dict]:
    """The row's tool schemas (its `tools` column, as a list or a JSON string), normalised; [] when it has none.
    Without a `tools` column, OpenAI's legacy `functions` column (bare schemas) is read instead."""
    column = mapping.col("tools")
    if row.get(column) is None and "tools" not in mapping.fields:
        column = "functions"
    try:
        return normalize_tools(row.get(column))
    except ToolsError as exc:
        raise RowError(f"{column!r} {exc}") from None


def _refuse_unoffered_calls(messages: list[dict], tools: list[dict]) -> None:
    """A reply must call only functions its row offers: learning a call to a function the prompt never showed
    teaches the model to invent functions. A bad row (file:line; `on_bad_row` stops or skips and counts it), as
    the call is wrong in the data itself. Rows without schemas are not judged: their tools may be described in
    the system prompt's text."""
    offered = tool_names(tools)
    if not offered:
        return
    for message in messages:
        for call in message.get("tool_calls") or []:
            if (name := call["function"]["name"]) not in offered:
                raise RowError(
                    f"a reply calls {name!r}, which the row's tools do not offer ({', '.join(offered)}): add its "
                    "schema to the row's tools or fix the call's name"
                )


# ---------------------------------------------------------------------------------------------- parsers


def _messages_row(row: dict[str, Any], mapping: Mapping, list_field: str = "messages") -> list[dict]:
    column = mapping.col(list_field)
    return _with_system(_turn_list(row.get(column), column, mapping, list_field), row, mapping)


def _turn_list(value: Any, column: str, mapping: Mapping, list_field: str = "messages") -> list[dict]:
    items = _as_list(value, column)
    keys = _turn_keys(items, mapping, list_field)
    return [_message(item, i, column, keys, mapping) for i, item in enumerate(items)]


def _sharegpt_row(row: dict[str, Any], mapping: Mapping) -> list[dict]:
    return _messages_row(row, mapping, "conversations")


def _turn_keys(items: list, mapping: Mapping, list_field: str) -> tuple[str, str]:
    """(role key, content key): role/content for OpenAI turns, from/value for ShareGPT, as the first turn shows."""
    sharegpt = (mapping.col("from"), mapping.col("value"))
    openai = (mapping.col("role"), mapping.col("content"))
    first = items[0] if isinstance(items[0], dict) else {}
    if sharegpt[0] in first:
        return sharegpt
    if openai[0] in first:
        return openai
    return sharegpt if list_field == "conversations" else openai


def _message(item: Any, i: int, column: str, keys: tuple[str, str], mapping: Mapping) -> dict[str, Any]:
    role_key, content_key = keys
    if not isinstance(item, dict):
        raise RowError(f"{column}[{i}] is not an object")
    try:
        role = mapping.role(item.get(role_key))
    except RowError as exc:
        raise RowError(f"{column}[{i}].{role_key}: {exc} — map it with roles = {{...}} in the recipe") from None
    message: dict[str, Any] = {"role": role}
    calls_key = "tool_calls" if item.get("tool_calls") else "function_call"  # OpenAI's legacy single call
    tool_calls = item.get(calls_key) if role == "assistant" else None
    if role == "assistant" and item.get(role_key) == "function_call":  # ShareGPT: the value is {"name", "arguments"}
        if (calls := function_call_turn(item.get(content_key))) is not None:
            return {"role": "assistant", "content": "", "tool_calls": calls}
    message["content"] = _text(item.get(content_key), f"{column}[{i}].{content_key}", allow_none=bool(tool_calls))
    if tool_calls:
        message["tool_calls"] = _tool_calls(tool_calls, f"{column}[{i}].{calls_key}")
    for key in ("name", "tool_call_id"):
        if role == "tool" and isinstance(item.get(key), str):
            message[key] = item[key]
    return message


def _alpaca_row(row: dict[str, Any], mapping: Mapping) -> list[dict]:
    instruction = _text(row.get(mapping.col("instruction")), mapping.col("instruction"))
    extra = row.get(mapping.col("input"))
    extra = _text(extra, mapping.col("input")) if extra is not None else ""
    output = _text(row.get(mapping.col("output")), mapping.col("output"))
    messages = []
    for i, pair in enumerate(_as_list(row.get(mapping.col("history")) or [], mapping.col("history"), empty_ok=True)):
        if not (isinstance(pair, list | tuple) and len(pair) == 2):
            raise RowError(f"{mapping.col('history')}[{i}] must be a [instruction, output] pair")
        messages += [_turn("user", pair[0], f"history[{i}][0]"), _turn("assistant", pair[1], f"history[{i}][1]")]
    prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": output}]
    return _with_system(messages, row, mapping)


def _prompt_completion_row(row: dict[str, Any], mapping: Mapping) -> list[dict]:
    """A prompt (text or messages) answered by a completion (text or assistant messages)."""
    _refuse_unpaired_preference(row)
    prompt, completion = row.get(mapping.col("prompt")), row.get(mapping.col("completion"))
    head = (
        _turn_list(prompt, mapping.col("prompt"), mapping)
        if isinstance(prompt, list)
        else [_turn("user", prompt, mapping.col("prompt"))]
    )
    tail = (
        _turn_list(completion, mapping.col("completion"), mapping)
        if isinstance(completion, list)
        else [_turn("assistant", completion, mapping.col("completion"))]
    )
    return _with_system(head + tail, row, mapping)


def _text_row(row: dict[str, Any], mapping: Mapping) -> str:
    text = _text(row.get(mapping.col("text")), mapping.col("text"))
    if not text.strip():
        raise RowError(f"{mapping.col('text')!r} is empty")
    return text


PARSERS = {
    "messages": _messages_row,
    "sharegpt": _sharegpt_row,
    "alpaca": _alpaca_row,
    "prompt_completion": _prompt_completion_row,
    "text": _text_row,
}


# ---------------------------------------------------------------------------------------------- pieces


def _as_list(value: Any, name: str, empty_ok: bool = False) -> list:
    """A list of turns; CSV and some exports store it as a JSON string."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise RowError(f"{name!r} is a string that is not a JSON list") from None
    if hasattr(value, "tolist"):  # numpy arrays from parquet
        value = value.tolist()
    if not isinstance(value, list) or (not value and not empty_ok):
        raise RowError(f"{name!r} must be a non-empty list")
    return value


def _text(value: Any, name: str, allow_none: bool = False) -> str:
    """Message content: a string, or OpenAI content parts whose text parts are joined."""
    if value is None and allow_none:
        return ""
    if isinstance(value, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in value):
        return "".join(str(p.get("text", "")) for p in value)
    if not isinstance(value, str):
        raise RowError(f"{name} must be a string (got {type(value).__name__})")
    return value


def _turn(role: str, content: Any, name: str) -> dict[str, str]:
    return {"role": role, "content": _text(content, name)}


def _tool_calls(calls: Any, name: str) -> list[dict]:
    """OpenAI tool calls (or a legacy `function_call` object), arguments parsed to objects where they are JSON."""
    try:
        return normalize_tool_calls(_as_list([calls] if isinstance(calls, dict) else calls, name))
    except ToolsError as exc:
        raise RowError(f"{name}: {exc}") from None


def _with_system(messages: list[dict], row: dict[str, Any], mapping: Mapping) -> list[dict]:
    """Prepend the row's separate system column (if any); the conversation must have a reply to learn."""
    system = row.get(mapping.col("system"))
    if isinstance(system, str) and system.strip() and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": system}, *messages]
    if not any(m["role"] == "assistant" for m in messages):
        raise RowError("the conversation has no assistant turn to learn from")
    first = next(m["role"] for m in messages if m["role"] != "system")
    if first == "assistant":  # the template would render the reply as if it answered the system prompt
        raise RowError("the conversation starts with an assistant reply: no user turn before it to answer")
    return messages
