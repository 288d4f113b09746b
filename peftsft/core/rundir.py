"""Run directory writes: every file and folder appears whole or not at all."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from peftsft.core.errors import UserError


def prepare_run_dir(run_dir: Path, overwrite: bool) -> None:
    """Create the run dir; refuse an existing one unless told to overwrite it."""
    if run_dir.exists() and any(run_dir.iterdir()):
        if not overwrite:
            raise UserError(
                f"run directory already exists: {run_dir}",
                hint="pass --overwrite to replace it, or --set run.name=<new name>",
            )
        shutil.rmtree(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create run directory {run_dir}: {exc.strerror}", hint="use --output DIR") from None
    if not os.access(run_dir, os.W_OK):
        raise UserError(f"run directory is not writable: {run_dir}", hint="use --output DIR")


def write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_json(path: Path, data) -> None:
    write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def write_dir(path: Path, fill: Callable[[Path], None]) -> None:
    """Let `fill` write into a temp folder beside `path`, then move it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    try:
        fill(tmp)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
