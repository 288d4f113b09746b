"""Adapter strategies: small records of plain functions, registered by name (see registry.py)."""

from peftsft.strategies.base import Strategy, StrategyContext, trainable_summary
from peftsft.strategies.registry import get_strategy, list_strategies, merge_model, register

__all__ = ["Strategy", "StrategyContext", "get_strategy", "list_strategies", "merge_model", "register",
           "trainable_summary"]
