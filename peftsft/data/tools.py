"""Tool calling: per-row tool schemas, structured calls in training data, and calls parsed back out of a reply.

Schemas are normalised to OpenAI's `{"type": "function", "function": {name, description, parameters}}`
(what transformers' chat templates expect in `apply_chat_template(..., tools=...)`). A conversation that offers
tools is a `ToolChat`: a list of messages (so every message-list code path keeps working) carrying `.tools`.

`parse_tool_calls(text)` reads Hermes-style `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` blocks
(what the built-in `hermes` template teaches) back into OpenAI `tool_calls`; `serve`, `chat`, `generate` and
`eval` all use it, so a reply is judged the same way everywhere.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any


class ToolsError(ValueError):
    """A `tools` value or a tool call that cannot be read (the caller adds where it came from)."""


class ToolChat(list):
    """A conversation (list of messages) plus the tool schemas its row offers."""

    def __init__(self, messages=(), tools: list[dict] | None = None):
        super().__init__(messages)
        self.tools = tools or []


def tools_of(conversation: Any) -> list[dict] | None:
    """The conversation's tool schemas, or None (no tools: templates render exactly as before)."""
    return getattr(conversation, "tools", None) or None


def with_tools(messages: list[dict], tools: list[dict] | None) -> list[dict]:
    """`messages` carrying `tools` (a plain list when there are none)."""
    return ToolChat(messages, tools) if tools else list(messages)


# ---------------------------------------------------------------------------------------------- schemas


def normalize_tools(value: Any) -> list[dict]:
    """Tool schemas from a JSON list (or a JSON string of one) of OpenAI or bare {name, description, parameters}."""
    if value is None or value == "":
        return []
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise ToolsError(f"is not valid JSON ({exc})") from None
    if hasattr(value, "tolist"):  # numpy arrays from parquet
        value = value.tolist()
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        raise ToolsError(f"must be a list of tool schemas (got {type(value).__name__})")
    return [_schema(item, i) for i, item in enumerate(value)]


def _schema(item: Any, i: int) -> dict:
    function = item.get("function", item) if isinstance(item, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
        raise ToolsError(f"[{i}] needs a function name ({{\"name\": ..., \"parameters\": {{...}}}})")
    parameters = function.get("parameters", {"type": "object", "properties": {}})
    if isinstance(parameters, str):
        try:
            parameters = json.loads(parameters)
        except ValueError:
            raise ToolsError(f"[{i}].parameters is a string that is not JSON") from None
    if not isinstance(parameters, dict):
        raise ToolsError(f"[{i}].parameters must be a JSON schema object")
    out = {"name": function["name"]}
    if isinstance(function.get("description"), str):
        out["description"] = function["description"]
    return {"type": "function", "function": out | {"parameters": parameters}}


def tool_names(tools: list[dict] | None) -> list[str]:
    return [tool["function"]["name"] for tool in tools or []]


# ---------------------------------------------------------------------------------------------- calls in data


def normalize_tool_calls(calls: Any) -> list[dict]:
    """OpenAI tool calls (or bare {name, arguments}), arguments parsed to objects where they are JSON strings."""
    if isinstance(calls, str):
        try:
            calls = json.loads(calls)
        except ValueError:
            raise ToolsError("is a string that is not JSON") from None
    if isinstance(calls, dict):
        calls = [calls]
    if not isinstance(calls, list) or not calls:
        raise ToolsError("must be a non-empty list of calls")
    out = []
    for i, call in enumerate(calls):
        function = call.get("function", call) if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise ToolsError(f"[{i}] needs a function name")
        out.append({"type": "function", "function": {"name": function["name"], "arguments": _arguments(function)}})
    return out


def _arguments(function: dict) -> Any:
    arguments = function.get("arguments", function.get("parameters", {}))
    if isinstance(arguments, str):
        try:
            return json.loads(arguments)
        except ValueError:
            return arguments  # kept as the string it is
    return arguments


def function_call_turn(value: Any) -> list[dict] | None:
    """A ShareGPT `function_call` turn's value as tool calls; None when it is not a JSON call (kept as text)."""
    try:
        return normalize_tool_calls(value)
    except ToolsError:
        return None


# ---------------------------------------------------------------------------------------------- calls out of a reply

_BLOCK = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.DOTALL)


@dataclass
class ParsedReply:
    """A model's reply split into its text and its tool calls; `invalid` counts call blocks that did not parse."""

    content: str
    tool_calls: list[dict] = field(default_factory=list)
    invalid: int = 0

    @property
    def attempted(self) -> int:
        return len(self.tool_calls) + self.invalid

    def message(self) -> dict:
        """The reply as an OpenAI assistant message (content None when it only calls tools)."""
        out: dict[str, Any] = {"role": "assistant", "content": self.content or (None if self.tool_calls else "")}
        return out | ({"tool_calls": self.tool_calls} if self.tool_calls else {})


def parse_tool_calls(text: str) -> ParsedReply:
    """`<tool_call>{json}</tool_call>` blocks → OpenAI `tool_calls` (arguments as a JSON string, ids call_0…).

    A block whose JSON does not parse, or lacks a name or object arguments, is no call: it is counted in
    `invalid` and left out. Text outside the blocks is the reply's content.
    """
    calls, invalid = [], 0
    for match in _BLOCK.finditer(text):
        call = _parse_call(match.group(1))
        if call is None:
            invalid += 1
        else:
            name, arguments = call
            calls.append({"id": f"call_{len(calls)}", "type": "function",
                          "function": {"name": name, "arguments": json.dumps(arguments, ensure_ascii=False)}})
    return ParsedReply(_BLOCK.sub("", text).strip(), calls, invalid)


def _parse_call(body: str) -> tuple[str, dict] | None:
    try:
        data = json.loads(body.strip())
    except ValueError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("name"), str) or not data["name"]:
        return None
    arguments = data.get("arguments", data.get("parameters", {}))
    if isinstance(arguments, str):  # some models double-encode the arguments
        try:
            arguments = json.loads(arguments)
        except ValueError:
            return None
    return (data["name"], arguments) if isinstance(arguments, dict) else None


def call_text(function: dict[str, Any]) -> str:
    """One call as the Hermes block the built-in template renders (for templates without tool support)."""
    payload = {"name": function["name"], "arguments": function["arguments"]}
    return f"<tool_call>\n{json.dumps(payload, ensure_ascii=False)}\n</tool_call>"


# ---------------------------------------------------------------------------------------------- templates


def template_renders_tools(template: str | None) -> bool:
    """Whether a chat template's source uses the `tools` schemas (Jinja templates name the variable)."""
    return bool(template) and re.search(r"\btools\b", template) is not None
