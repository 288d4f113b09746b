"""`chat`: talk to a run dir, a merged dir or any model source (streaming; scriptable through stdin).

The chat template is the one the model was trained with. `--compare-base` answers with the base model and the tuned
model side by side. Tool schemas (`--tools FILE.json`) go into the prompt, and `<tool_call>` blocks in a reply come
back as OpenAI `tool_calls` (generation.reply_message).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

from rich.console import Console

from peftsft.commands.model_args import add_model_args, add_sampling_args, load_for_args, read_tools, sampling_from_args
from peftsft.core.errors import UserError

COMMANDS_HELP = (
    "/reset clears the conversation · /tool RESULT answers the last tool call · /quit (or Ctrl-D) leaves · "
    "Ctrl-C stops an answer"
)


def add_commands(subparsers) -> None:
    chat = subparsers.add_parser("chat", help="talk to a run dir or a model (streams; reads stdin when piped)")
    add_model_args(chat)
    chat.add_argument("--jsonl", action="store_true", help="print one JSON object per answer (for scripts)")
    chat.add_argument("--show-prompt", action="store_true", help="print the exact templated prompt before answers")
    add_sampling_args(chat, temperature=0.7, top_p=0.9, top_k=50, max_new_tokens=256)
    chat.set_defaults(func=cmd_chat)


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
    if sys.stdin is None or sys.stdin.closed:  # `peftsft chat RUN <&-`, or a service without a terminal
        raise UserError("chat reads your messages from standard input, and standard input is closed",
                        hint="run it in a terminal, or pipe the messages in: echo 'Hello' | peftsft chat RUN; "
                        "for a file of prompts use `peftsft generate RUN --prompts FILE.jsonl --out OUT.jsonl`")
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
    try:
        sampling = _within_context(loaded, prompts, sampling)
    except UserError as exc:  # on a terminal the conversation goes on; a script gets exit 2
        if not interactive:
            raise
        console.print(f"[bold red]error:[/] {exc}", markup=True, highlight=False)
        return
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


def _within_context(loaded, prompts: dict[str, list[dict]], sampling):
    """`sampling` with the reply's length cut to the room the context leaves (as `serve` does); a UserError when
    the conversation alone fills it (a pasted 100 kB line would otherwise run for minutes, or forever)."""
    from peftsft.generation import chat_inputs, context_length

    limit = context_length(loaded.model, loaded.tokenizer)
    longest = max(chat_inputs(loaded.tokenizer, messages, "cpu")["input_ids"].shape[1] for messages in prompts.values())
    if longest >= limit:
        raise UserError(f"the message does not fit: the conversation takes {longest} tokens and the model's context "
                        f"is {limit} tokens; it was not answered", hint="shorten the message, or /reset the conversation")
    return replace(sampling, max_new_tokens=min(sampling.max_new_tokens, limit - longest))


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


