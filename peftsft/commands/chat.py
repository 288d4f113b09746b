"""`chat` (interactive, streaming; scriptable through stdin) and `generate` (a prompts file → replies file).

Both talk to a run dir, a merged dir or any model source (see loading.py) with the chat template the model
was trained with. `--compare-base` answers with the base model and the tuned model side by side.
Tool schemas (`--tools FILE.json`, or a `tools` column per prompt row in `generate`) go into the prompt, and
`<tool_call>` blocks in a reply come back as OpenAI `tool_calls` (generation.reply_message).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from peftsft.core.errors import UserError

COMMANDS_HELP = (
    "/reset clears the conversation · /tool RESULT answers the last tool call · /quit (or Ctrl-D) leaves · "
    "Ctrl-C stops an answer"
)
ROLES = ("system", "user", "assistant", "tool")


def add_commands(subparsers) -> None:
    chat = subparsers.add_parser("chat", help="talk to a run dir or a model (streams; reads stdin when piped)")
    _model_args(chat)
    chat.add_argument("--jsonl", action="store_true", help="print one JSON object per answer (for scripts)")
    chat.add_argument("--show-prompt", action="store_true", help="print the exact templated prompt before answers")
    add_sampling_args(chat, temperature=0.7, top_p=0.9, top_k=50, max_new_tokens=256)
    chat.set_defaults(func=cmd_chat)

    generate = subparsers.add_parser("generate", help="answer every prompt of a .jsonl file into another .jsonl")
    _model_args(generate)
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


def _model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="RUN_DIR|MODEL", help="a run dir, a merged model dir, a .gguf or a model id")
    parser.add_argument("--compare-base", action="store_true", help="also answer with the base model, side by side")
    parser.add_argument(
        "--base", metavar="MODEL", help="base to compare a merged/model dir with (default: its recipe.resolved.toml)"
    )
    parser.add_argument("--system", help="system prompt (default: the recipe's, else the chat template's own)")
    parser.add_argument(
        "--tools", metavar="FILE.json", help="tool schemas offered to the model (a JSON list; OpenAI or bare)"
    )
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--seed", type=int, help="seed for sampling, for repeatable answers")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")


def add_sampling_args(parser, temperature: float, top_p: float, top_k: int, max_new_tokens: int) -> None:
    """Decoding flags shared by chat, generate and eval; defaults differ per command."""
    group = parser.add_argument_group("sampling")
    group.add_argument("--max-new-tokens", type=int, default=max_new_tokens, help=f"default {max_new_tokens}")
    group.add_argument("--temperature", type=float, default=temperature, help=f"0 = greedy (default {temperature})")
    group.add_argument("--top-p", type=float, default=top_p, help=f"nucleus sampling (default {top_p})")
    group.add_argument("--top-k", type=int, default=top_k, help=f"0 = off (default {top_k})")
    group.add_argument("--repetition-penalty", type=float, default=1.0, help="1.0 = off (default)")


def sampling_from_args(args: argparse.Namespace):
    from peftsft.generation import Sampling

    if args.max_new_tokens < 1 or args.temperature < 0 or not 0 < args.top_p <= 1 or args.top_k < 0:
        raise UserError(
            "invalid sampling flags",
            hint="--max-new-tokens ≥ 1, --temperature ≥ 0, 0 < --top-p ≤ 1, --top-k ≥ 0",
        )
    return Sampling(args.max_new_tokens, args.temperature, args.top_p, args.top_k, args.repetition_penalty)


def load_for_args(args: argparse.Namespace):
    """Load the model named on the command line; fail early if --compare-base has no base to use."""
    from peftsft.loading import load

    console = Console(stderr=True)
    with console.status(f"loading {args.model}"):
        loaded = load(args.model, args.device, base=args.base)
    if args.compare_base and not loaded.has_base:
        raise UserError(
            f"{args.model}: --compare-base needs to know the base model",
            hint="pass --base MODEL_SOURCE, or point at a run dir",
        )
    if args.seed is not None:
        from transformers import set_seed

        set_seed(args.seed)
    return loaded


# ---------------------------------------------------------------------------------------------- chat


def read_tools(path: str | None) -> list[dict] | None:
    """The --tools file's schemas, normalised (None without the flag)."""
    from peftsft.data.tools import ToolsError, normalize_tools

    if not path:
        return None
    try:
        return normalize_tools(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise UserError(f"--tools {path}: cannot read it: {exc}") from None
    except ToolsError as exc:
        raise UserError(f"--tools {path}: {exc}", hint='a JSON list like [{"name": ..., "parameters": {...}}]') from None


@dataclass
class Conversation:
    """One model's side of the chat: the system prompt, the tools offered and every turn so far."""

    system: str | None = None
    turns: list[dict] = field(default_factory=list)
    tools: list[dict] | None = None

    def with_turn(self, message: dict) -> list[dict]:
        from peftsft.data.tools import with_tools

        head = [{"role": "system", "content": self.system}] if self.system else []
        return with_tools(head + self.turns + [message], self.tools)

    def add(self, message: dict, reply: dict) -> None:
        self.turns += [message, reply]

    def reset(self) -> None:
        self.turns.clear()


def cmd_chat(args: argparse.Namespace) -> int:
    sampling = sampling_from_args(args)
    loaded = load_for_args(args)
    interactive = sys.stdin.isatty()
    console = Console(highlight=False)
    sides = ["base", "tuned"] if args.compare_base else ["tuned"]
    tools = read_tools(args.tools)
    chats = {side: Conversation(args.system or loaded.system_prompt, tools=tools) for side in sides}
    if interactive:
        console.print(f"[bold]{args.model}[/] ({_describe(loaded)})  [dim]{COMMANDS_HELP}[/]")
    for line in read_messages(console, interactive):
        text = line.strip()
        if text in ("/quit", "/exit"):
            break
        if text == "/reset":
            for chat in chats.values():
                chat.reset()
            if not args.jsonl:
                console.print("[dim]conversation cleared[/]")
            continue
        if text.startswith("/tool "):  # a tool's result, for the model to answer from
            _answer_turn(console, loaded, chats, {"role": "tool", "content": text[6:].strip()}, sampling, args,
                         interactive)
        elif text:
            _answer_turn(console, loaded, chats, {"role": "user", "content": text}, sampling, args, interactive)
    return 0


def _describe(loaded) -> str:
    what = "run dir: base + adapter" if loaded.kind == "run" else "model"
    return what + (", quantized base" if loaded.quantized else "") + f", {loaded.device}"


def read_messages(console: Console, interactive: bool) -> Iterator[str]:
    """User messages: prompted on a terminal, one per line from stdin otherwise; ends at EOF."""
    if not interactive:
        yield from sys.stdin
        return
    while True:
        try:
            yield console.input("[bold cyan]you ›[/] ")
        except EOFError:
            console.print()
            return


def _answer_turn(console, loaded, chats, message, sampling, args, interactive) -> None:
    """Every side answers `message`; each keeps its own history. An answer stopped with Ctrl-C is not kept."""
    prompts = {side: chat.with_turn(message) for side, chat in chats.items()}
    if args.show_prompt:
        for side, messages in prompts.items():
            _show_prompt(console, loaded.tokenizer, messages, side)
    streams = {side: _stream(loaded, side, messages, sampling) for side, messages in prompts.items()}
    try:
        if args.jsonl:
            replies = {side: "".join(stream) for side, stream in streams.items()}
        elif len(streams) == 2 and interactive:
            replies = _side_by_side(console, streams)
        else:
            replies = {side: _print_stream(console, stream, _label(side, args, interactive))
                       for side, stream in streams.items()}
    except KeyboardInterrupt:
        if not interactive:
            raise
        console.print("\n[yellow]answer stopped; not kept in the history[/]")
        return
    replies = {side: reply.strip() for side, reply in replies.items()}
    calls = {}
    for side, reply in replies.items():
        history, calls[side] = _parse_reply(loaded.tokenizer, reply)
        chats[side].add(message, history)
    calls = {side: side_calls for side, side_calls in calls.items() if side_calls}
    if args.jsonl:
        record = {message["role"]: message["content"]}
        record |= {"assistant": replies["tuned"]} if len(replies) == 1 else replies
        record |= {("tool_calls" if len(replies) == 1 else f"{side}_tool_calls"): c for side, c in calls.items()}
        print(json.dumps(record, ensure_ascii=False), flush=True)
    else:
        from rich.text import Text

        for side, side_calls in calls.items():
            console.print(Text(f"{side} tool_calls: {json.dumps(side_calls, ensure_ascii=False)}", style="dim"))


def _parse_reply(tokenizer, reply: str) -> tuple[dict, list[dict]]:
    """(the reply as the history keeps it, its OpenAI tool calls): structured calls in the history when the
    template renders them, else the reply's text as it was."""
    from peftsft.data.templates import supports_tools
    from peftsft.generation import reply_message

    parsed = reply_message(reply)
    calls = parsed.get("tool_calls") or []
    if calls and supports_tools(tokenizer):
        return {"role": "assistant", "content": parsed["content"] or "", "tool_calls": calls}, calls
    return {"role": "assistant", "content": reply}, calls


def _stream(loaded, side: str, messages, sampling) -> Iterator[str]:
    """A lazy stream of one side's reply: the model is switched (base/tuned) only while it generates."""
    from peftsft.generation import stream_answer

    with loaded.use(side) as model:
        yield from stream_answer(model, loaded.tokenizer, messages, sampling)


def _label(side: str, args, interactive: bool) -> str:
    if args.compare_base:
        return {"base": "[magenta]base ›[/] ", "tuned": "[green]tuned ›[/] "}[side]
    return "[green]bot ›[/] " if interactive else ""


def _show_prompt(console, tokenizer, messages, side: str) -> None:
    from peftsft.data.masking import render

    console.print(f"[dim]── prompt ({side}) ──[/]")
    console.print(render(tokenizer, messages, add_generation_prompt=True), markup=False, soft_wrap=True)
    console.print("[dim]── end of prompt ──[/]")


def _print_stream(console, stream: Iterator[str], label: str) -> str:
    """Print a reply as it streams in, after its label; return its full text."""
    console.print(label, end="")
    pieces = []
    for piece in stream:
        pieces.append(piece)
        console.print(piece, end="", markup=False, soft_wrap=True)
    console.print()
    return "".join(pieces)


def _side_by_side(console, streams: dict[str, Iterator[str]]) -> dict[str, str]:
    """Two panels, base and tuned, filled live as each model generates (one after the other)."""
    from rich.live import Live

    texts = {side: "" for side in streams}
    with Live(_panels(texts), console=console, refresh_per_second=12) as live:
        for side, stream in streams.items():
            for piece in stream:
                texts[side] += piece
                live.update(_panels(texts))
    return texts


def _panels(texts: dict[str, str]):
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    grid = Table.grid(expand=True, padding=(0, 1))
    for _ in texts:
        grid.add_column(ratio=1)
    colours = {"base": "magenta", "tuned": "green"}
    grid.add_row(*(Panel(Text(text), title=side, border_style=colours[side]) for side, text in texts.items()))
    return grid


# ---------------------------------------------------------------------------------------------- generate


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
