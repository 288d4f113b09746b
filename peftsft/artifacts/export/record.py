"""What an export verified, kept with the artifact: its checks and a SHA-256 of every file they covered.

`push` uploads an export only when its record says it passed and every file still has the hash it had when it was
checked, so a file changed (or an export made with --no-verify) after the fact is never published.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

from peftsft.artifacts.export.verify import TOLERANCES, Check
from peftsft.core.rundir import write_json

RECORD = "verification.json"
# written or rewritten around the verified weights (the card differs per destination): not part of the hashes
UNHASHED = {"README.md", "loss.png", RECORD}


def record_path(artifact: Path) -> Path:
    """verification.json inside an export dir; <name>.verification.json beside a GGUF file."""
    return artifact / RECORD if artifact.suffix != ".gguf" else artifact.with_suffix(".verification.json")


def check_entry(check: Check) -> dict:
    """A check as the record (and the model card) keep it: the measured values and the limits they met."""
    tolerance = TOLERANCES[check.tolerance_name]
    return asdict(check) | {
        "passed": check.passed,
        "max_allowed": tolerance.max_rel * check.scale,
        "mean_allowed": tolerance.mean_rel * check.scale,
        "min_agreement": tolerance.min_agreement,
    }


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def artifact_files(artifact: Path) -> dict[str, Path]:
    """The files an export consists of, by the name they are uploaded under."""
    if artifact.suffix == ".gguf":
        modelfile = artifact.with_suffix(".Modelfile")
        return {p.name: p for p in (artifact, modelfile) if p.is_file()}
    return {p.name: p for p in sorted(artifact.iterdir()) if p.is_file() and p.name not in UNHASHED}


def write_record(artifact: Path, fmt: str, checks: list[Check], where: Path | None = None) -> None:
    """Record the checks of `artifact` (`where`: the folder it is still being written in, for dirs)."""
    files = artifact_files(where or artifact)
    write_json(
        record_path(where or artifact),
        {
            "format": fmt,
            "verified": bool(checks) and all(c.passed for c in checks),
            "checks": [check_entry(c) for c in checks],
            "files": {name: sha256(path) for name, path in files.items()},
        },
    )


def read_record(artifact: Path) -> dict | None:
    try:
        return json.loads(record_path(artifact).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def unverified_reason(artifact: Path) -> str | None:
    """Why `artifact` is not exactly what export verified (None: it is)."""
    record = read_record(artifact)
    if record is None:
        return f"it has no verification record ({record_path(artifact).name})"
    if not record.get("verified"):
        return "it was exported without verification (--no-verify)"
    files = artifact_files(artifact)
    if set(files) != set(record["files"]):
        changed = sorted(set(files) ^ set(record["files"]))
        return f"its files differ from the verified ones: {', '.join(changed)}"
    for name, path in files.items():
        if sha256(path) != record["files"][name]:
            return f"{name} changed after it was verified"
    return None
