"""Normalise a row into OpenAI-style chat messages."""

from __future__ import annotations

from typing import Any

ROLES = ("system", "user", "assistant", "tool")


class RowError(ValueError):
    """A row that cannot be turned into a conversation."""


def detect_format(row: dict[str, Any]) -> str:
    if "messages" in row:
        return "messages"
    raise RowError(f"cannot tell the format of a row with keys {sorted(row)}; expected a 'messages' list")


def to_messages(row: dict[str, Any], fmt: str) -> list[dict[str, str]]:
    fmt = detect_format(row) if fmt == "auto" else fmt
    if fmt == "messages":
        return _messages(row.get("messages"))
    raise RowError(f"unsupported format {fmt!r}")


def _messages(messages: Any) -> list[dict[str, str]]:
    if not isinstance(messages, list) or not messages:
        raise RowError("'messages' must be a non-empty list")
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise RowError(f"messages[{i}] is not an object")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise RowError(f"messages[{i}].role is {role!r}; expected one of {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise RowError(f"messages[{i}].content must be a string")
        out.append({"role": role, "content": content})
    if not any(m["role"] == "assistant" for m in out):
        raise RowError("the conversation has no assistant turn to learn from")
    return out
