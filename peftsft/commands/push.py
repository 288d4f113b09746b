"""`push`: parse the options, let the artifacts layer stage (and upload) a run's verified export."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_commands(sub) -> None:
    push = sub.add_parser("push", help="upload a run's verified export (adapter, merged, gguf) to the Hugging Face Hub")
    push.add_argument("run_dir", help="a finished run dir (runs/<name>) with a verified export")
    push.add_argument("--repo", required=True, help="the Hub repository, OWNER/NAME (created if missing)")
    push.add_argument("--what", choices=("adapter", "merged", "gguf"), default="adapter",
                      help="which export to upload (default adapter): <run>/exports/adapter | merged | *.gguf")
    push.add_argument("--from", dest="source", type=Path,
                      help="the export to upload when it is not in <run>/exports/ (a dir, or a .gguf)")
    push.add_argument("--private", action="store_true", help="create the repository private")
    push.add_argument("--dry-run", action="store_true",
                      help="write the folder that would be uploaded, list it and its size, upload nothing")
    push.add_argument("--out", type=Path, help="where the upload folder is staged (default <run>/push/<what>)")
    push.add_argument("--debug", action="store_true", help="show full tracebacks")
    push.set_defaults(func=cmd_push)


def cmd_push(args: argparse.Namespace) -> int:
    from peftsft.artifacts.push import PushRequest, push
    from peftsft.core.console import console

    request = PushRequest(Path(args.run_dir), args.repo, what=args.what, private=args.private, dry_run=args.dry_run,
                          source=args.source, out=args.out)
    push(request, console)
    return 0
