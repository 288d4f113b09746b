"""Adapter strategies: small records of plain functions, registered by name (see registry.py)."""

from .base import Strategy, trainable_summary
from .registry import get_strategy, list_strategies, merge_model, register

__all__ = ["Strategy", "get_strategy", "list_strategies", "merge_model", "register", "trainable_summary"]
