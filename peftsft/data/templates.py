"""Chat templates: pick the one to train with, and read what it implies (end-of-turn text, tool support).

`[data] template` is "auto" (the tokenizer's own), a built-in name (templates/*.jinja: chatml, llama3,
smollm2), or a path to a Jinja file. The chosen template is set on the tokenizer, so the adapter's saved
tokenizer carries exactly the template the data was rendered with.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from peftsft.core.errors import UserError

BUILTIN_DIR = Path(__file__).with_name("templates")
BUILTINS = {path.stem: path for path in sorted(BUILTIN_DIR.glob("*.jinja"))}

_USER, _REPLY = "PEFTSFTUSERMARK", "PEFTSFTREPLYMARK"


@dataclass(frozen=True)
class TemplateInfo:
    name: str  # "tokenizer", a built-in name, or the file's path
    sha256: str
    end_of_turn: str | None

    def as_dict(self) -> dict:
        return asdict(self)


def template_sha(text: str | None) -> str:
    return hashlib.sha256((text or "").encode("utf-8")).hexdigest()


def template_text(setting: str, tokenizer) -> tuple[str, str]:
    """(name, Jinja text) of the template a recipe asks for."""
    if setting == "auto":
        if not tokenizer.chat_template:
            raise UserError(
                "the tokenizer has no chat template",
                hint=f"set [data] template to a built-in ({', '.join(BUILTINS)}) or a path to a .jinja file",
            )
        return "tokenizer", tokenizer.chat_template
    if setting in BUILTINS:
        return setting, BUILTINS[setting].read_text(encoding="utf-8")
    path = Path(setting)
    if not path.is_file():
        raise UserError(
            f"[data] template: {setting!r} is neither a built-in template nor a file",
            hint=f"use auto, one of {', '.join(BUILTINS)}, or a path to a .jinja file",
        )
    return str(path), path.read_text(encoding="utf-8")


def apply_template(tokenizer, data) -> TemplateInfo:
    """Set the recipe's template on the tokenizer (training renders and the saved adapter both use it)."""
    name, text = template_text(data.template, tokenizer)
    tokenizer.chat_template = text
    try:
        eot = end_of_turn(tokenizer)
    except Exception as exc:  # noqa: BLE001 - a broken template raises Jinja's own errors
        raise UserError(f"[data] template {name}: cannot render a simple conversation: {exc}") from None
    return TemplateInfo(name, template_sha(text), eot)


def render(tokenizer, messages: list[dict[str, Any]], add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


_EOT_CACHE: dict[tuple[str, str | None], str | None] = {}


def end_of_turn(tokenizer) -> str | None:
    """The text that closes an assistant turn, read off the template ("<|im_end|>", "<|eot_id|>", "</s>").

    None when the template puts nothing but whitespace after a reply: the model could never learn to stop.
    """
    key = (tokenizer.chat_template or "", tokenizer.eos_token)
    if key not in _EOT_CACHE:
        text = render(tokenizer, [{"role": "user", "content": _USER}, {"role": "assistant", "content": _REPLY}])
        _EOT_CACHE[key] = text.split(_REPLY, 1)[1].strip() or None
    return _EOT_CACHE[key]


def generation_header(tokenizer) -> str:
    """What the template puts between a prompt and the reply ("<|im_start|>assistant\\n")."""
    prompt = [{"role": "user", "content": _USER}]
    return render(tokenizer, prompt, add_generation_prompt=True)[len(render(tokenizer, prompt)) :]


def supports_tools(tokenizer) -> bool:
    """Whether the template renders structured tool calls itself."""
    return "tool_calls" in (tokenizer.chat_template or "")


def fit_messages(tokenizer, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages the template can render: tool calls become text in the reply when the template has no tool support."""
    if supports_tools(tokenizer) or not any(m.get("tool_calls") or len(m) > 2 for m in messages):
        return messages
    return [_plain(message) for message in messages]


def _plain(message: dict[str, Any]) -> dict[str, str]:
    """A message reduced to role + content; tool calls written out as <tool_call> blocks (Hermes style)."""
    content = message["content"]
    calls = [_call_text(call["function"]) for call in message.get("tool_calls") or []]
    return {"role": message["role"], "content": "\n".join(([content] if content else []) + calls)}


def _call_text(function: dict[str, Any]) -> str:
    return f"<tool_call>\n{json.dumps({'name': function['name'], 'arguments': function['arguments']})}\n</tool_call>"


def end_of_turn_tokens(tokenizer, eot: str) -> int:
    """How many tokens the end-of-turn text takes (1 when it is a special token of the vocabulary)."""
    return len(tokenizer(eot, add_special_tokens=False)["input_ids"])
