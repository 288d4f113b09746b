"""`merge` and `export`: parse the options, let the run's task write the verified export."""

from __future__ import annotations

import argparse
from pathlib import Path

from peftsft.artifacts.export.formats import DTYPES, FORMATS, QUANTS


def add_commands(sub) -> None:
    merge = sub.add_parser("merge", help="fold the adapter into the base: a standard Hugging Face model dir")
    merge.add_argument("run_dir", help="a finished run dir (runs/<name>)")
    merge.add_argument("--out", required=True, help="the model dir to write")
    merge.add_argument("--dtype", choices=DTYPES, help="weights dtype (default: the base checkpoint's own)")
    _common(merge)
    merge.set_defaults(func=cmd_merge)

    export = sub.add_parser("export", help="export a run: adapter dir, merged model dir, GGUF or GGUF LoRA + Ollama Modelfile")
    export.add_argument("run_dir", help="a finished run dir (runs/<name>)")
    export.add_argument("--format", required=True, choices=FORMATS, dest="fmt")
    export.add_argument("--out", required=True, help="a dir (adapter, merged) or a .gguf file (gguf, gguf-lora)")
    export.add_argument("--quant", choices=QUANTS, help="GGUF weight type (default f16; gguf-lora: of the base GGUF "
                        "it writes when the base did not come as GGUF); *_k*: needs llama-cpp-python (.[gguf])")
    export.add_argument("--dtype", choices=DTYPES, help="merged weights dtype (default: the base checkpoint's own)")
    export.add_argument("--no-modelfile", action="store_true", help="gguf, gguf-lora: skip the Ollama Modelfile")
    _common(export)
    export.set_defaults(func=cmd_export)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--force", action="store_true", help="replace an existing --out")
    parser.add_argument("--no-verify", action="store_true", help="skip the logit check against base + adapter")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")


def cmd_merge(args: argparse.Namespace) -> int:
    args.fmt, args.quant, args.no_modelfile = "merged", None, False
    return cmd_export(args)


def cmd_export(args: argparse.Namespace) -> int:
    from peftsft.artifacts.export.pipeline import ExportRequest
    from peftsft.artifacts.tasks import task_of_path
    from peftsft.core.console import console

    request = ExportRequest(args.fmt, Path(args.out), quant=args.quant, dtype=args.dtype,
                            modelfile=not args.no_modelfile, verify=not args.no_verify, force=args.force)
    task_of_path(args.run_dir).export(args.run_dir, request, console)
    return 0
