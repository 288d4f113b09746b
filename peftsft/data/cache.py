"""Tokenized datasets cached on disk, keyed by a fingerprint of data + tokenizer + template + settings.

The key also covers this package's code, so a fix to masking never reuses datasets built before it.
A build writes its Arrow files into a fresh directory, which becomes the entry by one rename (or, with the cache
off, is removed when the process exits); the least recently used entries beyond KEEP are removed.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

KEEP = 20
_SETTINGS_IGNORED = {"enforce_contract", "cache", "num_proc"}  # they change no token
_FILES = "files.json"  # the entry's Arrow files per split, in row order


def cache_dir() -> Path:
    from peftsft.models import cache_root

    return cache_root() / "datasets"


def fingerprint(tokenizer, data, seed: int) -> str:
    """The cache key of a build: changes whenever any input to tokenization changes."""
    from peftsft.data.replay import replay_spec
    from peftsft.data.sources import fingerprint as source_fingerprint

    digest = hashlib.sha256()
    parts = {
        "code": _code_hash(),
        "settings": data.model_dump(mode="json", exclude=_SETTINGS_IGNORED),
        "seed": seed if _seed_matters(data) else None,
        "tokenizer": _tokenizer_hash(tokenizer),
        "template": tokenizer.chat_template,
        "sources": [source_fingerprint(spec) for spec in data.datasets],
        "eval": source_fingerprint(data.datasets[0].model_copy(update={"path": data.eval_path}))
        if data.eval_path
        else None,
        "replay": source_fingerprint(replay_spec(data)) if data.replay > 0 else None,  # the pool's contents
    }
    digest.update(json.dumps(parts, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:24]


def _seed_matters(data) -> bool:
    return (data.eval_fraction > 0 and not data.eval_path) or data.replay > 0 or any(
        s.samples is not None or s.weight is not None for s in data.datasets
    )


def _code_hash() -> str:
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _tokenizer_hash(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    extra = [type(tokenizer).__name__, tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token]
    return hashlib.sha256((text + json.dumps(extra)).encode()).hexdigest()


def work_dir() -> Path:
    """A fresh directory for a build's files, beside the entries (one file system: the rename is atomic)."""
    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(root)
    return Path(tempfile.mkdtemp(prefix=f".build-{os.getpid()}-", dir=root))


def load(key: str):
    """(train, eval or None, stats dict) of a cached build, or None."""
    entry = cache_dir() / key
    try:
        stats = json.loads((entry / "stats.json").read_text(encoding="utf-8"))
        train, evals = _open(entry)
    except (OSError, ValueError, KeyError):  # missing, or damaged: rebuilt
        return None
    os.utime(entry)  # most recently used
    return train, evals, stats


def keep(key: str | None, work: Path, files: dict[str, list[str]], stats: dict):
    """(train, eval or None) from the build in `work`, stored as the entry `key`; with no key, removed at exit."""
    if key is None:
        atexit.register(shutil.rmtree, work, ignore_errors=True)
        (work / _FILES).write_text(json.dumps(files), encoding="utf-8")
        return _open(work)
    root, entry = cache_dir(), cache_dir() / key
    (work / "stats.json").write_text(json.dumps(stats), encoding="utf-8")
    (work / _FILES).write_text(json.dumps(files), encoding="utf-8")
    shutil.rmtree(entry, ignore_errors=True)  # a damaged entry (one that failed to load)
    try:
        os.replace(work, entry)
    except OSError:  # another process stored the same entry meanwhile: its files are these files
        shutil.rmtree(work, ignore_errors=True)
    _prune(root)
    return _open(entry)


def _open(directory: Path):
    from peftsft.data.arrow import open_files

    files = json.loads((directory / _FILES).read_text(encoding="utf-8"))
    train = open_files([directory / name for name in files["train"]])
    if train is None:
        raise ValueError("no training files")
    return train, open_files([directory / name for name in files["eval"]])


def _prune(root: Path) -> None:
    entries = sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=_mtime)
    for old in entries[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)


def _remove_abandoned(root: Path) -> None:
    """Build directories of processes that died before finishing (killed, out of memory)."""
    for path in root.glob(".build-*-*"):
        pid = path.name.split("-")[1]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
