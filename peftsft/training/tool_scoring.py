"""Tool-call accuracy, for `eval` and for every evaluation during training: on rows that offer tools, did the
model call the right function with the right arguments, in JSON that parses, and stay quiet when no call was needed?

A row's expectation is its last assistant message: its `tool_calls` (a call row) or plain text (a no-call
row). Replies are parsed with `data.tools.parse_tool_calls`, as chat, generate and serve parse them.
"""

from __future__ import annotations

import json
from typing import Any

from peftsft.data.tools import ParsedReply, parse_tool_calls, tools_of

TOOL_METRICS = ("tool_accuracy", "tool_name_accuracy", "tool_call_exact", "tool_json_valid", "no_call_accuracy")


def expected_calls(messages: Any) -> list[tuple[str, Any]] | None:
    """(name, arguments) of each call the last assistant message makes; [] for a plain reply; None if no reply."""
    last = messages[-1] if isinstance(messages, list) and messages else None
    if not last or last["role"] != "assistant":
        return None
    return [(c["function"]["name"], _as_json(c["function"]["arguments"])) for c in last.get("tool_calls") or []]


def _as_json(arguments: Any) -> Any:
    if isinstance(arguments, str):
        try:
            return json.loads(arguments)
        except ValueError:
            return arguments
    return arguments


def predicted_calls(reply: ParsedReply) -> list[tuple[str, Any]]:
    return [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in reply.tool_calls]


def tool_metrics(predictions: list[str], conversations: list) -> dict[str, float]:
    """Means over the rows that offer tools ({} when none does):

    - tool_name_accuracy: call rows whose reply calls exactly the expected functions, in order
    - tool_call_exact: call rows whose reply also has the expected arguments (equal as JSON)
    - tool_json_valid: call rows whose reply holds at least one call and every call block parses
      (JSON object with a name and object arguments)
    - no_call_accuracy: rows answered in plain text whose reply calls nothing
    - tool_accuracy: every such row handled right — a call row by the expected functions (as tool_name_accuracy),
      a no-call row by no call — so that neither calling always nor never scores well
    """
    calls, quiet = [], []
    for text, messages in zip(predictions, conversations):
        expected = expected_calls(messages)
        if not tools_of(messages) or expected is None:
            continue
        (calls if expected else quiet).append((parse_tool_calls(text), expected))
    out: dict[str, float] = {}
    named = [[n for n, _ in predicted_calls(r)] == [n for n, _ in e] for r, e in calls]
    silent = [r.attempted == 0 for r, _ in quiet]
    if calls or quiet:
        out["tool_accuracy"] = _mean(named + silent)
    if calls:
        out["tool_name_accuracy"] = _mean(named)
        out["tool_call_exact"] = _mean([predicted_calls(r) == e for r, e in calls])
        out["tool_json_valid"] = _mean([bool(r.tool_calls) and not r.invalid for r, _ in calls])
    if quiet:
        out["no_call_accuracy"] = _mean(silent)
    if out:
        out |= {"tool_call_rows": len(calls), "no_call_rows": len(quiet)}
    return out


def _mean(flags: list[bool]) -> float:
    return sum(flags) / len(flags)
