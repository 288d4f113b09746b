"""Data: read rows, normalise them to chat messages, render with the chat template, mask, tokenize."""

from __future__ import annotations

__all__ = ["DataStats", "build_datasets"]


def __getattr__(name: str):
    # lazy, so that `peftsft --help` (which imports the `data preview` command module) stays fast
    if name in __all__:
        from peftsft.data import build

        return getattr(build, name)
    raise AttributeError(name)
