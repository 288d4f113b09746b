"""OpenAI's chat-completions wire format: the request schema (pydantic) and the response / chunk bodies."""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from peftsft.artifacts.serve.engine import Completion
from peftsft.data.tools import ToolsError, normalize_tool_calls, normalize_tools, tool_names
from peftsft.generation import reply_message

TOOL_CHOICES = ("none", "auto", "required")


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")  # name, tool_call_id, ...: accepted, not used
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    tool_calls: list[dict] | None = None  # an assistant turn that called tools (OpenAI format), normalised

    @field_validator("tool_calls")
    @classmethod
    def _calls(cls, calls: list[dict] | None) -> list[dict] | None:
        try:
            return normalize_tool_calls(calls) if calls else None
        except ToolsError as exc:  # a 400 naming the field, as every other malformed value
            raise ValueError(f"{exc} (OpenAI's {{\"function\": {{\"name\": ..., \"arguments\": ...}}}})") from None

    def as_dict(self) -> dict:
        """{"role", "content"(, "tool_calls")} as chat templates take them; `developer` is OpenAI's newer `system`."""
        content = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content or [])
        message = {"role": "system" if self.role == "developer" else self.role, "content": content}
        return message | ({"tool_calls": self.tool_calls} if self.tool_calls else {})


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class ChatRequest(BaseModel):
    """The fields of POST /v1/chat/completions that are honoured; other OpenAI fields are accepted and ignored."""

    model_config = ConfigDict(extra="ignore")
    model: str
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)  # the newer name of max_tokens
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    tools: list[dict] | None = None  # OpenAI function schemas: rendered by the run's template, calls parsed back
    # none: no tools offered; auto: the model decides; required / {"type": "function", "function": {"name": …}}:
    # the reply starts with a call (of that function), generated after the opening of a <tool_call> block
    tool_choice: str | dict | None = None

    @field_validator("tools")
    @classmethod
    def _schemas(cls, tools: list[dict] | None) -> list[dict] | None:
        return normalize_tools(tools) if tools else None

    @field_validator("tool_choice")
    @classmethod
    def _choice(cls, choice: Any, info: ValidationInfo) -> str | None:
        """"none" | "auto" | "required" | the named function; refused when it asks for what `tools` lacks."""
        if choice is None:
            return None
        named = choice.get("function", {}).get("name") if isinstance(choice, dict) else None
        if choice not in TOOL_CHOICES and not (isinstance(named, str) and named):
            raise ValueError('must be "none", "auto", "required" or {"type": "function", "function": {"name": ...}}')
        offered = tool_names(info.data.get("tools"))
        if choice != "none" and choice != "auto" and not offered:
            raise ValueError("asks for a tool call, but the request offers no tools")
        if named is not None and named not in offered:
            raise ValueError(f"names the function {named!r}, which is not in tools ({', '.join(offered)})")
        return named or choice

    @field_validator("n")
    @classmethod
    def _one_choice(cls, n: int | None) -> int | None:
        if n not in (None, 1):
            raise ValueError("only n = 1 is supported")
        return n

    def engine_options(self) -> dict:
        """Keyword arguments for Engine.astream (unset fields take OpenAI's defaults there)."""
        options = {"max_tokens": self.max_completion_tokens or self.max_tokens, "stop": self.stop, "seed": self.seed,
                   "temperature": self.temperature, "top_p": self.top_p, **self._tool_options()}
        return {key: value for key, value in options.items() if value is not None}

    def _tool_options(self) -> dict:
        """tools as offered under tool_choice, and `call`: the function the reply must call ("" any, None no)."""
        if self.tool_choice in (None, "auto"):
            return {"tools": self.tools}
        if self.tool_choice == "none":
            return {}
        if self.tool_choice == "required":
            return {"tools": self.tools, "call": ""}
        return {"tools": [t for t in self.tools if t["function"]["name"] == self.tool_choice], "call": self.tool_choice}

    @property
    def offers_tools(self) -> bool:
        return bool(self.tools) and self.tool_choice != "none"

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


def new_id() -> tuple[str, int]:
    return f"chatcmpl-{uuid.uuid4().hex}", int(time.time())


def usage(completion: Completion) -> dict:
    return {"prompt_tokens": completion.prompt_tokens, "completion_tokens": completion.completion_tokens,
            "total_tokens": completion.prompt_tokens + completion.completion_tokens}


def reply(completion: Completion, tools: bool) -> tuple[dict, str]:
    """The assistant message and finish reason: with tools offered, `<tool_call>` blocks become `tool_calls`."""
    if not tools:
        return {"role": "assistant", "content": completion.text}, completion.finish_reason
    message = reply_message(completion.text)
    return message, "tool_calls" if message.get("tool_calls") else completion.finish_reason


def completion_body(ident: str, created: int, model: str, completion: Completion, tools: bool = False) -> dict:
    message, finish_reason = reply(completion, tools)
    return {
        "id": ident, "object": "chat.completion", "created": created, "model": model, "system_fingerprint": None,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}],
        "usage": usage(completion),
    }


def chunk_body(ident: str, created: int, model: str, delta: dict | None, finish_reason: str | None = None,
               completion: Completion | None = None) -> dict:
    """One streamed chunk: a delta (role first, then content pieces), the finish reason, or (choices empty) usage."""
    choices = [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]
    body = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": model,
            "system_fingerprint": None, "choices": choices}
    if completion is not None:
        body["usage"] = usage(completion)
    return body


def model_list(ids: list[str], created: int) -> dict:
    return {"object": "list", "data": [model_card(i, created) for i in ids]}


def model_card(model_id: str, created: int) -> dict:
    return {"id": model_id, "object": "model", "created": created, "owned_by": "peftsft"}
