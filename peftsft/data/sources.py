"""Where a dataset's rows come from: a local file, a directory of files, or a Hugging Face Hub dataset id."""

from __future__ import annotations

import hashlib
import os
import pickle
from collections.abc import Iterator
from pathlib import Path

from peftsft.core.config import DatasetSpec
from peftsft.core.errors import UserError
from peftsft.data.rows import SUFFIXES, Row, jsonl_lines, read_rows


def looks_like_hub_id(path: str) -> bool:
    """`name` or `owner/name`, without a file suffix (a missing local file is not mistaken for a Hub id)."""
    parts = path.split("/")
    return 1 <= len(parts) <= 2 and all(parts) and not path.startswith((".", "~")) and Path(path).suffix == ""


def source_problem(path: str) -> str | None:
    """Why a recipe's dataset path cannot be read (checked without loading anything), or None."""
    local = Path(path)
    if local.is_dir():
        return None if data_files(local) else f"directory has no {'/'.join(SUFFIXES)} files: {path}"
    if local.exists() or looks_like_hub_id(path):
        return None
    return f"file not found: {path}"


def data_files(directory: Path) -> list[Path]:
    """The dataset files inside a directory (recursively, in a stable order); hidden files are skipped."""
    files = (p for p in directory.rglob("*") if p.is_file() and p.suffix in SUFFIXES)
    return sorted(p for p in files if not any(part.startswith(".") for part in p.relative_to(directory).parts))


def iter_rows(spec: DatasetSpec, on_bad_row: str, bad: list[str]) -> Iterator[Row]:
    """Every row of a dataset, each with where it came from (file:line, or hub id[split]#index)."""
    local = Path(spec.path)
    if local.is_dir():
        files = data_files(local)
        if not files:
            raise UserError(f"{spec.path}: no {'/'.join(SUFFIXES)} files in this directory")
        for file in files:
            yield from read_rows(file, on_bad_row, bad)
    elif local.exists() or not looks_like_hub_id(spec.path):
        yield from read_rows(local, on_bad_row, bad)
    else:
        dataset = load_hub_dataset(spec)
        for index, data in enumerate(dataset):
            yield Row(dict(data), f"{spec.path}[{spec.split}]#{index}")


def iter_raw_rows(spec: DatasetSpec) -> Iterator[tuple[str | None, bytes | None, str]]:
    """Every row as (JSON line, None, where) from .jsonl files — parsed later, in the processes that normalise
    them — or (None, pickled row, where) from the other sources."""
    local = Path(spec.path)
    files = data_files(local) if local.is_dir() else [local]
    if local.is_dir() and not files:
        raise UserError(f"{spec.path}: no {'/'.join(SUFFIXES)} files in this directory")
    if not local.exists() and looks_like_hub_id(spec.path):
        rows = iter_rows(spec, "fail", [])
        yield from ((None, pickle.dumps(row.data, protocol=5), row.where) for row in rows)
        return
    for file in files:
        if file.suffix == ".jsonl" and file.is_file():
            yield from ((line, None, where) for line, where in jsonl_lines(file))
        else:  # other formats have no malformed rows of their own to report: "fail" is never acted on
            yield from ((None, pickle.dumps(row.data, protocol=5), row.where) for row in read_rows(file, "fail", []))


def load_hub_dataset(spec: DatasetSpec):
    """A Hub dataset through `datasets` (its own cache); offline or missing gives one clear error."""
    import datasets

    try:
        return datasets.load_dataset(spec.path, spec.subset, split=spec.split)
    except Exception as exc:  # noqa: BLE001 - datasets raises many types (connection, not found, bad config)
        offline = os.environ.get("HF_HUB_OFFLINE") == "1" or datasets.config.HF_HUB_OFFLINE
        first_line = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise UserError(
            f"[data] datasets.path: cannot load Hub dataset {spec.path!r} (split {spec.split!r}): {first_line}",
            hint="offline (HF_HUB_OFFLINE=1) only datasets already in the local Hugging Face cache load: download it "
            "while online, or point path at a local .jsonl/.json/.parquet/.csv file or directory"
            if offline
            else "check the dataset id, subset and split, and your network",
        ) from None


def fingerprint(spec: DatasetSpec) -> str:
    """A hash of a dataset's content: file bytes for local data, the datasets fingerprint for Hub data."""
    digest = hashlib.sha256()
    local = Path(spec.path)
    if local.is_dir():
        for file in data_files(local):
            digest.update(str(file.relative_to(local)).encode() + b"\0" + _file_hash(file).encode())
    elif local.is_file():
        digest.update(_file_hash(local).encode())
    elif looks_like_hub_id(spec.path):
        digest.update(load_hub_dataset(spec)._fingerprint.encode())
    return digest.hexdigest()


def _file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
