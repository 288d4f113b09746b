"""Data: read rows, normalise them to chat messages, render with the chat template, mask, tokenize."""

from .build import DataStats, build_datasets

__all__ = ["DataStats", "build_datasets"]
