"""Replay against forgetting: `[data] replay = 0.2` makes a fifth of the training rows general instruction data.

The pool is peftsft's shipped general/replay.jsonl (written by recipes/data/make_general_data.py, disjoint from
the general check's general/check.jsonl) or `[data] replay_path`. The share is exact up to rounding:
`task × share / (1 − share)` replay rows join the task's rows, spread evenly among them.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np

from peftsft.core.config import DatasetSpec, DataSection

GENERAL_DIR = Path(__file__).with_name("general")
CHECK_SET = GENERAL_DIR / "check.jsonl"
REPLAY_POOL = GENERAL_DIR / "replay.jsonl"


def replay_spec(data: DataSection) -> DatasetSpec:
    """The pool as a dataset: the user's file (format detected) or the shipped one."""
    if data.replay_path:
        return DatasetSpec(path=data.replay_path)
    return DatasetSpec(path=str(REPLAY_POOL), format="messages")


def replay_count(task_rows: int, share: float) -> int:
    """Replay rows that make up `share` of task + replay rows (0 when there is no share)."""
    return round(task_rows * share / (1.0 - share)) if share > 0 else 0


def draw_replay(pool: list, n: int, seed: int) -> list:
    """`n` rows of the pool: a seeded random subset, whole passes over it first when it is smaller than `n`."""
    if not pool or n <= 0:
        return []
    whole, rest = divmod(n, len(pool))
    rng = random.Random(f"replay-{seed}")
    return [row for _ in range(whole) for row in rng.sample(pool, len(pool))] + rng.sample(pool, rest)


def interleave_order(n_task: int, n_replay: int) -> np.ndarray:
    """Positions in task rows + replay rows (concatenated): replay rows spread evenly among the task rows, whose
    order is kept (for `sampling = "sequential"`); row i of n sits at (i + 0.5) / n, the task row first on a tie."""
    keys = np.concatenate([(np.arange(n_task) + 0.5) / max(n_task, 1), (np.arange(n_replay) + 0.5) / max(n_replay, 1)])
    is_replay = np.concatenate([np.zeros(n_task, dtype=np.int8), np.ones(n_replay, dtype=np.int8)])
    return np.lexsort((is_replay, keys))
