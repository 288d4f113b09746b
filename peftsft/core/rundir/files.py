"""Files written whole or not at all (temp name, then rename), and JSON read leniently for the dashboard."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from peftsft.core.errors import UserError


def write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_json(path: Path, data) -> None:
    write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def require_parent_folders(path: Path, flag: str | None = None) -> None:
    """Every existing folder on the way to `path` is a folder (else mkdir fails with a bare FileExistsError)."""
    blocking = next((p for p in reversed(path.parents) if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        where = f"{flag} {path}" if flag else str(path)
        raise UserError(f"{where}: {blocking} is a file, not a folder, so nothing can be written under it",
                        hint=f"choose another {flag or 'output path'} (its folders must be folders or not exist yet)")


def write_dir(path: Path, fill: Callable[[Path], None]) -> None:
    """Let `fill` write into a temp folder beside `path`, then move it into place."""
    require_parent_folders(path)
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


def read_json_object(path: Path, errors: list[str] | None) -> dict[str, Any]:
    """`path` as a JSON object; {} (and a line in `errors`) when it is missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        if errors is not None:
            errors.append(f"{path.name}: unreadable JSON ({first_line(exc)})")
        return {}
    if not isinstance(data, dict):
        if errors is not None:
            errors.append(f"{path.name}: not a JSON object")
        return {}
    return data


def read_text_or_empty(path: Path, errors: list[str] | None = None) -> str:
    """A text file's contents; "" (and a line in `errors`) when it is missing or unreadable."""
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return ""
    except OSError as exc:
        if errors is not None:
            errors.append(f"{path.name}: unreadable ({exc.strerror or exc})")
        return ""


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
