"""`peftsft ui [--runs runs/] [--port 7860]`: the local web dashboard (binds to 127.0.0.1 unless told otherwise)."""

from __future__ import annotations

import argparse


def add_commands(subparsers) -> None:
    parser = subparsers.add_parser("ui", help="a local web dashboard: runs, live curves, data with masks, chat")
    parser.add_argument("--runs", default="runs", help="the folder of run dirs (default: runs)")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="for the chat page")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    parser.set_defaults(func=cmd_ui)


def cmd_ui(args: argparse.Namespace) -> int:
    from pathlib import Path

    from peftsft.core.console import console
    from peftsft.core.errors import UserError

    try:
        import uvicorn

        from peftsft.artifacts.ui.app import ChatBackend, create_app
    except ImportError as exc:
        raise UserError(f"peftsft ui needs the web extra ({exc.name} is missing)",
                        hint='pip install -e ".[serve]"') from None
    from peftsft.models import pick_device

    app = create_app(Path(args.runs), ChatBackend(pick_device(args.device)))
    console.print(f"peftsft ui on [bold]http://{args.host}:{args.port}/[/] (runs from {args.runs}); Ctrl-C stops it")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
