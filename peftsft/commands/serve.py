"""`serve RUN_DIR [RUN_DIR ...]`: an OpenAI-compatible HTTP server for trained runs (adapters on one base)."""

from __future__ import annotations

import argparse
import json
import os

from rich.console import Console

from peftsft.core.console import console
from peftsft.core.errors import UserError

KEY_ENV = "PEFTSFT_API_KEY"
EXAMPLE_QUESTION = "What is your name?"


def add_commands(subparsers) -> None:
    serve = subparsers.add_parser(
        "serve", help="OpenAI-compatible API (/v1/chat/completions) for one or more runs of one base"
    )
    serve.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run dirs; each is a model id (its folder name)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine)")
    serve.add_argument("--port", type=int, default=8000, help="default 8000; 0 takes any free port")
    serve.add_argument("--api-key", help=f"require 'Authorization: Bearer KEY' (default: ${KEY_ENV} if set)")
    serve.add_argument("--max-tokens", type=int, default=512, help="reply length when a request sets none (512)")
    serve.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    serve.add_argument("--log-level", choices=("critical", "error", "warning", "info", "debug"), default="info",
                       help="uvicorn's log level (requests are logged by path and status, never their contents)")
    serve.add_argument("--debug", action="store_true", help="show full tracebacks")
    serve.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        from peftsft.artifacts.serve import Engine, bind, create_app, run, url_of
    except ImportError as exc:
        raise UserError(f"serve needs FastAPI and uvicorn ({exc.name} is missing)",
                        hint="pip install 'peftsft[serve]'") from None
    if args.max_tokens < 1:
        raise UserError("--max-tokens must be at least 1")
    api_key = args.api_key or os.environ.get(KEY_ENV) or None
    sock = bind(args.host, args.port)  # before loading: a taken port fails in a second, not after the model loads
    with Console(stderr=True).status(f"loading {len(args.runs)} run(s) on one base"):
        engine = Engine.load(args.runs, args.device, args.max_tokens)
    _print_banner(engine, url_of(sock), api_key, key_from_env=not args.api_key)
    try:
        run(create_app(engine, api_key), sock, args.log_level)
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it handled; stopping the server is a clean exit
        pass
    return 0


def _print_banner(engine, url: str, api_key: str | None, key_from_env: bool) -> None:
    runs = [i for i in engine.model_ids if i != "base"]
    console.print(f"[green]serving[/] {url}/v1 — models: {', '.join(runs)}, base (no adapter)", highlight=False)
    sizes = engine.parameter_bytes()
    adapters = ", ".join(f"{i} {_mib(sizes.get(i, 0))}" for i in runs)
    console.print(f"weights in memory: base {_mib(sizes.get('base', 0))} once; adapters {adapters}", highlight=False)
    if api_key:
        note = "" if key_from_env else f" (export {KEY_ENV}=<the key> for the examples)"
        console.print(f"requests need the API key: Authorization: Bearer ${KEY_ENV}{note}", highlight=False)
    console.print("\nopenai client (pip install openai):", highlight=False)
    console.print(_python_example(url, runs[0], api_key is not None), markup=False, highlight=False)
    console.print("\ncurl:", highlight=False)
    console.print(_curl_example(url, runs[0], api_key is not None), markup=False, highlight=False)
    console.print("\nCtrl-C stops the server.", highlight=False)
    console.file.flush()


def _mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"


def _python_example(url: str, model: str, with_key: bool) -> str:
    key = f'os.environ["{KEY_ENV}"]' if with_key else '"none"'
    return "\n".join([
        "import os" if with_key else "",
        "from openai import OpenAI",
        f'client = OpenAI(base_url="{url}/v1", api_key={key})',
        f'reply = client.chat.completions.create(model="{model}", '
        f'messages=[{{"role": "user", "content": "{EXAMPLE_QUESTION}"}}])',
        "print(reply.choices[0].message.content)",
    ]).lstrip("\n")


def _curl_example(url: str, model: str, with_key: bool) -> str:
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": EXAMPLE_QUESTION}]})
    key = f' -H "Authorization: Bearer ${KEY_ENV}"' if with_key else ""
    return f"curl -s {url}/v1/chat/completions -H \"Content-Type: application/json\"{key} -d '{body}'"
