"""Resuming a run: find its last complete checkpoint and refuse a changed recipe unless forced."""

from __future__ import annotations

import shutil
import tomllib
from pathlib import Path
from typing import Any

from peftsft.core.errors import UserError
from peftsft.core.rundir import CHECKPOINT_SEAL, RunDir


def checkpoint_to_resume(rundir: RunDir, resume: str | bool) -> Path:
    """`--resume` (True): the latest complete checkpoint of the run (partial ones are removed); `--resume PATH`:
    that checkpoint."""
    if isinstance(resume, str):
        path = Path(resume)
        if not (path / CHECKPOINT_SEAL).is_file():
            raise UserError(f"--resume {resume}: not a complete checkpoint (no {CHECKPOINT_SEAL})",
                            hint=f"pick one of {rundir.checkpoints_dir}/checkpoint-N")
        return path
    if not rundir.path.is_dir():
        raise UserError(f"--resume: no run to resume at {rundir.path}", hint="run without --resume first")
    for partial in rundir.partial_checkpoints():
        shutil.rmtree(partial)
    found = rundir.checkpoints()
    if not found:
        raise UserError(
            f"--resume: {rundir.path} has no checkpoint",
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


def check_same_recipe(rundir: RunDir, resolved_toml: str, force: bool) -> None:
    if not rundir.recipe_file.is_file():
        raise UserError(f"--resume: {rundir.recipe_file} is missing; cannot tell what the run was trained with")
    diffs = recipe_differences(rundir.raw_recipe(), tomllib.loads(resolved_toml))
    diffs = [d for d in diffs if not d.startswith(RESUME_SAFE)]
    if diffs and not force:
        raise UserError(
            "--resume: the recipe differs from the one this run was trained with",
            problems=diffs,
            hint="resume with the same recipe, or pass --force to resume with these changes",
        )
