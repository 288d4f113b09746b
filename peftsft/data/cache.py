"""Tokenized datasets cached on disk, keyed by a fingerprint of data + tokenizer + template + settings.

The key also covers this package's code, so a fix to masking never reuses datasets built before it.
Entries are written whole (temp dir, then rename); the least recently used beyond KEEP are removed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

KEEP = 20
_SETTINGS_IGNORED = {"enforce_contract", "cache"}  # they change no token


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


def load(key: str):
    """(train, eval or None, stats dict) of a cached build, or None."""
    from datasets import load_from_disk

    entry = cache_dir() / key
    if not (entry / "stats.json").is_file():
        return None
    try:
        stats = json.loads((entry / "stats.json").read_text(encoding="utf-8"))
        train = load_from_disk(str(entry / "train"))
        evals = load_from_disk(str(entry / "eval")) if (entry / "eval").is_dir() else None
    except (OSError, ValueError):  # a damaged entry is rebuilt
        return None
    os.utime(entry)  # most recently used
    return train, evals, stats


def save(key: str, train, evals, stats: dict) -> None:
    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=root))
    try:
        train.save_to_disk(str(tmp / "train"))
        if evals is not None:
            evals.save_to_disk(str(tmp / "eval"))
        (tmp / "stats.json").write_text(json.dumps(stats), encoding="utf-8")
        shutil.rmtree(root / key, ignore_errors=True)  # a damaged entry (one that failed to load)
        os.replace(tmp, root / key)
    except OSError:  # another process stored the same entry meanwhile (or the disk is full): the build stands
        shutil.rmtree(tmp, ignore_errors=True)
        return
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _prune(root)


def _prune(root: Path) -> None:
    entries = sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=_mtime)
    for old in entries[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
