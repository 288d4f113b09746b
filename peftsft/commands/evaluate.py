"""`peftsft eval`: parse the options, let the run's task evaluate (chat: loss and answers; classification: scores)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_commands(subparsers) -> None:
    parser = subparsers.add_parser("eval", help="loss, perplexity and answer metrics: base vs tuned, saved as JSON")
    parser.add_argument("model", metavar="RUN_DIR|MODEL", help="a run dir, a merged model dir, a .gguf or a model id")
    parser.add_argument("--data", help="held-out chat .jsonl/.json (default: the run's eval_path or eval split)")
    parser.add_argument("--out", help="where to save the JSON (default: RUN_DIR/eval.json, else ./eval.json)")
    parser.add_argument(
        "--base", metavar="MODEL", help="base to compare a merged/model dir with (default: its recipe.resolved.toml)"
    )
    parser.add_argument("--no-base", action="store_true", help="evaluate the tuned model only")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="answer length limit (default 256)")
    parser.add_argument("--batch-size", type=int, default=4, help="rows per forward/generate batch (default 4)")
    parser.add_argument("--limit", type=int, help="evaluate the first N rows only")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    parser.set_defaults(func=cmd_eval)


def cmd_eval(args: argparse.Namespace) -> int:
    from peftsft.artifacts.evaluate import EvalRequest
    from peftsft.artifacts.tasks import task_of_path
    from peftsft.core.console import console
    from peftsft.core.errors import UserError
    from peftsft.core.rundir import RunDir

    if args.batch_size < 1 or args.max_new_tokens < 1 or (args.limit is not None and args.limit < 1):
        raise UserError("--batch-size, --max-new-tokens and --limit must be at least 1")
    request = EvalRequest(
        model=args.model, data=args.data, out=args.out, base=args.base, compare=not args.no_base,
        max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, limit=args.limit, device=args.device,
    )
    task = task_of_path(args.model)
    out = task.evaluate(request, console)
    console.print(f"[green]saved[/] → {out}")
    if task.write_card is not None and RunDir.holds_run(args.model) and \
            Path(out).resolve() == RunDir(args.model).eval_file.resolve():  # the run's own eval.json: its card shows it
        console.print(f"model card updated → {task.write_card(Path(args.model))}")
    return 0
