"""`merge` and `export` subcommands, and the `[export]` step that runs after training."""

from __future__ import annotations

import argparse
from pathlib import Path

FORMATS = ("adapter", "merged", "gguf")
DTYPES = ("bfloat16", "float16", "float32")
QUANTS = ("f16", "q8_0")


def add_commands(sub) -> None:
    merge = sub.add_parser("merge", help="fold the adapter into the base: a standard Hugging Face model dir")
    merge.add_argument("run_dir", help="a finished run dir (runs/<name>)")
    merge.add_argument("--out", required=True, help="the model dir to write")
    merge.add_argument("--dtype", choices=DTYPES, help="weights dtype (default: the base checkpoint's own)")
    _common(merge)
    merge.set_defaults(func=cmd_merge)

    export = sub.add_parser("export", help="export a run: adapter dir, merged model dir, or GGUF + Ollama Modelfile")
    export.add_argument("run_dir", help="a finished run dir (runs/<name>)")
    export.add_argument("--format", required=True, choices=FORMATS, dest="fmt")
    export.add_argument("--out", required=True, help="a dir (adapter, merged) or a .gguf file (gguf)")
    export.add_argument("--quant", choices=QUANTS, help="GGUF weight type (default f16)")
    export.add_argument("--dtype", choices=DTYPES, help="merged weights dtype (default: the base checkpoint's own)")
    export.add_argument("--no-modelfile", action="store_true", help="gguf: skip the Ollama Modelfile")
    _common(export)
    export.set_defaults(func=cmd_export)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--force", action="store_true", help="replace an existing --out")
    parser.add_argument("--no-verify", action="store_true", help="skip the logit check against base + adapter")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")


def cmd_merge(args: argparse.Namespace) -> int:
    from ..classify import is_classification_run
    from ..cli import console
    from .pipeline import ExportJob, export_run

    if is_classification_run(args.run_dir):  # an encoder with a classification head: peftsft.classify exports it
        from ..classify.commands import cmd_export_classification

        return cmd_export_classification(args, "merged")

    job = ExportJob("merged", Path(args.out), dtype=args.dtype)
    export_run(args.run_dir, [job], console, verify=not args.no_verify, force=args.force)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from ..classify import is_classification_run
    from ..cli import console
    from ..errors import UserError
    from .pipeline import ExportJob, export_run

    if is_classification_run(args.run_dir):  # an encoder with a classification head: peftsft.classify exports it
        from ..classify.commands import cmd_export_classification

        return cmd_export_classification(args, args.fmt)

    if args.quant and args.fmt != "gguf":
        raise UserError(f"--quant applies to --format gguf, not {args.fmt!r}", hint="drop --quant")
    if args.dtype and args.fmt != "merged":
        raise UserError(f"--dtype applies to --format merged, not {args.fmt!r}", hint="drop --dtype")
    job = ExportJob(args.fmt, Path(args.out), quant=args.quant or "f16", dtype=args.dtype,
                    modelfile=not args.no_modelfile)
    export_run(args.run_dir, [job], console, verify=not args.no_verify, force=args.force)
    return 0


def export_after_training(recipe, console) -> list[str]:
    """Run the recipe's `[export] formats` into <run dir>/exports/ (verified like the CLI's exports)."""
    from .pipeline import Exporter, default_jobs
    from .runs import open_run

    run = open_run(recipe.run_dir)
    jobs = default_jobs(run, recipe.export.formats, recipe.export.quant, recipe.export.dtype)
    exporter = Exporter(run, console)
    return [str(exporter.export(job)) for job in jobs]
