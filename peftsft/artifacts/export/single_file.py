"""Single-file artifacts (a GGUF, its Modelfile): written under a temporary name beside the target (same file
system, so the final rename is atomic), renamed into place only once checked; removed otherwise."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from peftsft.core.rundir import require_parent_folders


@contextmanager
def staged(path: Path) -> Iterator[Path]:
    """A temporary name beside `path`; removed unless it was renamed into place."""
    require_parent_folders(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}-{uuid.uuid4().hex[:8]}.tmp{path.suffix}")
    try:
        yield tmp
    finally:
        tmp.unlink(missing_ok=True)


def modelfile_path(out: Path) -> Path:
    return out.with_suffix(".Modelfile")


def place(stack: ExitStack, files: dict[Path, Path], out: Path, modelfile: str | None) -> list[Path]:
    """Rename every checked temporary into place, then the Modelfile (written last: it names the others)."""
    for target, tmp in files.items():
        os.replace(tmp, target)
    written = list(files)
    if modelfile is not None:
        path = modelfile_path(out)
        tmp = stack.enter_context(staged(path))
        tmp.write_text(modelfile, encoding="utf-8")
        os.replace(tmp, path)
        written.append(path)
    return written
