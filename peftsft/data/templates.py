"""Chat templates: pick the one to train with, and read what it implies (end-of-turn text, tool support).

`[data] template` is "auto" (the tokenizer's own), a built-in name (templates/*.jinja: chatml, hermes,
llama3, smollm2), or a path to a Jinja file; `hermes` is ChatML with tool calling (see tools.py). The chosen
template is set on the tokenizer, so the adapter's saved tokenizer carries exactly the template the data was
rendered with.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from peftsft.core.errors import UserError
from peftsft.data.tools import call_text, template_renders_tools, tools_of, with_tools

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


def render(
    tokenizer, messages: list[dict[str, Any]], add_generation_prompt: bool = False, tools: list[dict] | None = None
) -> str:
    """The conversation as text; `tools` defaults to the schemas a ToolChat carries."""
    tools = tools if tools is not None else tools_of(messages)
    return tokenizer.apply_chat_template(
        list(messages), tools=tools or None, tokenize=False, add_generation_prompt=add_generation_prompt
    )


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


def supports_tool_schemas(tokenizer) -> bool:
    """Whether the template puts `tools` (the schemas) into the prompt; if not, they would be silently dropped."""
    return template_renders_tools(tokenizer.chat_template)


def dropped_tools_problem(data) -> str | None:
    """For `validate`: rows offer tool schemas but the recipe's template (a built-in or a file) cannot render them.

    Judged from the template's source; "auto" (the tokenizer's template) is checked when the data is built.
    """
    path = BUILTINS.get(data.template) or Path(data.template)
    if data.template == "auto" or not path.is_file() or template_renders_tools(path.read_text(encoding="utf-8")):
        return None
    if (where := first_row_with_tools(data)) is None:
        return None
    return (
        f"[data] template: {data.template!r} does not render tool schemas, but {where} offers tools — they would be "
        'dropped from every prompt; use template = "hermes" (ChatML with <tool_call> blocks) or a template using `tools`'
    )


def first_row_with_tools(data, limit: int = 1000) -> str | None:
    """file:line of the first row (of the first `limit` per local file) with a non-empty tools column."""
    from peftsft.data.rows import SUFFIXES, read_rows

    specs = [(spec.path, spec.fields) for spec in data.datasets]
    specs += [(data.eval_path, data.datasets[0].fields if data.datasets else {})] if data.eval_path else []
    for path, fields in specs:
        if Path(path).suffix not in SUFFIXES or not Path(path).is_file():
            continue
        for index, row in enumerate(read_rows(path, "skip", [])):
            if row.data.get(fields.get("tools", "tools")) not in (None, "", "[]", []):
                return row.where
            if index >= limit:
                break
    return None


def fit_messages(tokenizer, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages the template can render: tool calls become text in the reply when the template has no tool support."""
    if supports_tools(tokenizer) or not any(m.get("tool_calls") or len(m) > 2 for m in messages):
        return messages
    return with_tools([_plain(message) for message in messages], tools_of(messages))


def _plain(message: dict[str, Any]) -> dict[str, str]:
    """A message reduced to role + content; tool calls written out as <tool_call> blocks (Hermes style)."""
    content = message["content"]
    calls = [call_text(call["function"]) for call in message.get("tool_calls") or []]
    return {"role": message["role"], "content": "\n".join(([content] if content else []) + calls)}


def end_of_turn_tokens(tokenizer, eot: str) -> int:
    """How many tokens the end-of-turn text takes (1 when it is a special token of the vocabulary)."""
    return len(tokenizer(eot, add_special_tokens=False)["input_ids"])
