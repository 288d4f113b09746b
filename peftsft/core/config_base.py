"""What every recipe section is built from: `Key` (a default, its help text and its constraints) and `Section`."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


def Key(default: Any = ..., help: str = "", **constraints: Any) -> Any:  # noqa: N802 (reads like a declaration)
    """A recipe key: its default, its help text (shown by `validate --explain`, in errors and as a comment in
    recipe.resolved.toml) and its pydantic constraints, in one place."""
    if callable(default):  # list, dict, a section class: a fresh one per recipe
        return Field(default_factory=default, description=help, **constraints)
    return Field(default, description=help, **constraints)


class Section(BaseModel):
    """Base for recipe sections: unknown keys are errors, values are checked strictly."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
