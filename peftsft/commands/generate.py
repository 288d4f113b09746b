"""`generate`: answer every prompt of a .jsonl file into another .jsonl (batched; base and tuned with
--compare-base). Rows may offer tools (a "tools" column, or --tools for all); calls come back as "tool_calls"."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from peftsft.commands.model_args import add_model_args, add_sampling_args, load_for_args, read_tools, sampling_from_args
from peftsft.core.errors import UserError

ROLES = ("system", "user", "assistant", "tool")


def add_commands(subparsers) -> None:
    generate = subparsers.add_parser("generate", help="answer every prompt of a .jsonl file into another .jsonl")
    add_model_args(generate)
    generate.add_argument(
        "--prompts", required=True,
        help='.jsonl: rows with "messages" (ending with a user or tool turn) or "prompt", and optionally "tools"',
    )
    generate.add_argument(
        "--out", required=True, help='output .jsonl: each input row plus "response" (and "tool_calls" when it calls)'
    )
    generate.add_argument("--batch-size", type=int, default=8, help="prompts generated together (default 8)")
    add_sampling_args(generate, temperature=0.0, top_p=1.0, top_k=0, max_new_tokens=256)
    generate.set_defaults(func=cmd_generate)


@dataclass
class Prompt:
    row: dict
    messages: list[dict[str, str]]


def read_prompts(path: str, system: str | None, tools: list[dict] | None = None) -> list[Prompt]:
    """Prompt rows: {"messages": [... ending with a user turn]} or {"prompt": "...", "system"?: "..."}, each with
    optional "tools" (schemas; `tools` from --tools for rows without their own)."""
    from peftsft.data.rows import read_rows
    from peftsft.data.tools import with_tools

    prompts = [
        Prompt(row.data, with_tools(prompt_messages(row.data, row.where), prompt_tools(row.data, row.where) or tools))
        for row in read_rows(path)
    ]
    if not prompts:
        raise UserError(f"{path}: no prompts", hint='one JSON object per line, e.g. {"prompt": "Hello"}')
    if system:
        for prompt in prompts:
            if prompt.messages[0]["role"] != "system":
                prompt.messages.insert(0, {"role": "system", "content": system})
    return prompts


def prompt_tools(row: dict, where: str) -> list[dict]:
    from peftsft.data.tools import ToolsError, normalize_tools

    try:
        return normalize_tools(row.get("tools"))
    except ToolsError as exc:
        raise UserError(f"{where}: \"tools\" {exc}", hint='a JSON list like [{"name": ..., "parameters": {...}}]') from None


def prompt_messages(row: dict, where: str) -> list[dict[str, str]]:
    """The conversation to answer; a trailing assistant turn (a reference answer) is left out."""
    if isinstance(row.get("prompt"), str):
        head = [{"role": "system", "content": row["system"]}] if isinstance(row.get("system"), str) else []
        return head + [{"role": "user", "content": row["prompt"]}]
    messages = row.get("messages")
    hint = 'rows are {"messages": [{"role": "user", "content": "..."}]} or {"prompt": "..."}'
    if not isinstance(messages, list) or not messages:
        raise UserError(f"{where}: no \"prompt\" string or \"messages\" list", hint=hint)
    messages = [_prompt_message(message, i, where, hint) for i, message in enumerate(messages)]
    if messages[-1]["role"] == "assistant":
        messages = messages[:-1]
    if not messages or messages[-1]["role"] not in ("user", "tool"):
        raise UserError(f"{where}: the conversation must end with a user turn (or a tool result) to answer", hint=hint)
    return messages


def _prompt_message(message, i: int, where: str, hint: str) -> dict:
    """role + content, and an assistant's tool calls (structured) or a tool result's name / call id."""
    from peftsft.data.tools import ToolsError, normalize_tool_calls

    calls = message.get("tool_calls") if isinstance(message, dict) and message.get("role") == "assistant" else None
    content = message.get("content") if isinstance(message, dict) else None
    if not (isinstance(message, dict) and message.get("role") in ROLES and (isinstance(content, str) or calls)):
        raise UserError(f"{where}: messages[{i}] needs a role ({', '.join(ROLES)}) and a string content", hint=hint)
    out = {"role": message["role"], "content": content or ""}
    if calls:
        try:
            out["tool_calls"] = normalize_tool_calls(calls)
        except ToolsError as exc:
            raise UserError(f"{where}: messages[{i}].tool_calls {exc}", hint=hint) from None
    return out | {k: message[k] for k in ("name", "tool_call_id") if message["role"] == "tool" and k in message}


def cmd_generate(args: argparse.Namespace) -> int:
    from peftsft.generation import answer_batch
    from peftsft.core.rundir import write_text

    if args.batch_size < 1:
        raise UserError("--batch-size must be at least 1")
    out = Path(args.out)
    if not out.parent.exists():
        raise UserError(f"--out {out}: folder {out.parent} does not exist")
    sampling = sampling_from_args(args)
    loaded = load_for_args(args)
    prompts = read_prompts(args.prompts, args.system or loaded.system_prompt, read_tools(args.tools))
    console = Console(stderr=True)
    conversations = [p.messages for p in prompts]
    results = {}
    for side in ["base", "tuned"] if args.compare_base else ["tuned"]:
        with console.status(f"{side}: answering {len(prompts)} prompt(s)"), loaded.use(side) as model:
            results[side] = answer_batch(model, loaded.tokenizer, conversations, sampling, args.batch_size)
    rows = [json.dumps({**prompt.row, **_responses(results, i)}, ensure_ascii=False) for i, prompt in enumerate(prompts)]
    write_text(out, "\n".join(rows) + "\n")
    console.print(f"[green]wrote[/] {len(rows)} response(s) → {out}")
    return 0


def _responses(results: dict[str, list[str]], i: int) -> dict:
    """"response" (+ "tool_calls" when the reply calls tools), and "base_response" / "base_tool_calls"."""
    from peftsft.data.tools import parse_tool_calls

    out = {}
    for side, prefix in (("tuned", ""), ("base", "base_")):
        if side in results:
            out[f"{prefix}response"] = results[side][i]
            if calls := parse_tool_calls(results[side][i]).tool_calls:
                out[f"{prefix}tool_calls"] = calls
    return out
