"""Resuming a run: find its last complete checkpoint and refuse a changed recipe unless forced."""

from __future__ import annotations

import re
import shutil
import tomllib
from pathlib import Path
from typing import Any

from peftsft.training.callbacks import CHECKPOINT_SEAL as COMPLETE_MARKER  # written after the Trainer's last checkpoint file
from peftsft.core.errors import UserError
_STEP = re.compile(r"^checkpoint-(\d+)$")


def checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    folder = run_dir / "checkpoints"
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if _STEP.match(p.name) and (p / COMPLETE_MARKER).is_file()]
    return sorted(found, key=lambda p: int(_STEP.match(p.name).group(1)))


def remove_partial_checkpoints(run_dir: Path) -> list[Path]:
    folder = run_dir / "checkpoints"
    partial = [p for p in folder.iterdir() if _STEP.match(p.name) and not (p / COMPLETE_MARKER).is_file()] if folder.is_dir() else []
    for path in partial:
        shutil.rmtree(path)
    return partial


def checkpoint_to_resume(run_dir: Path, resume: str | bool) -> Path:
    """`--resume` (True): the latest complete checkpoint of the run; `--resume PATH`: that checkpoint."""
    if isinstance(resume, str):
        path = Path(resume)
        if not (path / COMPLETE_MARKER).is_file():
            raise UserError(f"--resume {resume}: not a complete checkpoint (no {COMPLETE_MARKER})",
                            hint=f"pick one of {run_dir / 'checkpoints'}/checkpoint-N")
        return path
    if not run_dir.is_dir():
        raise UserError(f"--resume: no run to resume at {run_dir}", hint="run without --resume first")
    remove_partial_checkpoints(run_dir)
    found = checkpoints(run_dir)
    if not found:
        raise UserError(
            f"--resume: {run_dir} has no checkpoint",
            hint="set [training] save_steps to checkpoint during training; or start again with --overwrite",
        )
    return found[-1]


def recipe_differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two resolved recipes."""
    keys = sorted(set(old) | set(new))
    out = []
    for key in keys:
        a, b, name = old.get(key), new.get(key), f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out += recipe_differences(a, b, f"{name}.")
        elif a != b:
            out.append(f"{name}: {a!r} → {b!r}")
    return out


# Changing these does not change what is learned or in which order, so a resume may change them freely.
RESUME_SAFE = (
    "run.sample_prompts", "run.sample_max_new_tokens", "export.", "training.logging_steps", "data.enforce_contract",
)


def check_same_recipe(run_dir: Path, resolved_toml: str, force: bool) -> None:
    saved = run_dir / "recipe.resolved.toml"
    if not saved.is_file():
        raise UserError(f"--resume: {saved} is missing; cannot tell what the run was trained with")
    diffs = recipe_differences(tomllib.loads(saved.read_text(encoding="utf-8")), tomllib.loads(resolved_toml))
    diffs = [d for d in diffs if not d.startswith(RESUME_SAFE)]
    if diffs and not force:
        raise UserError(
            "--resume: the recipe differs from the one this run was trained with",
            problems=diffs,
            hint="resume with the same recipe, or pass --force to resume with these changes",
        )
