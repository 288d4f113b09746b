"""What a run dir says, for the dashboard: read leniently through RunDir, every value type-checked.

A broken file becomes an error line on its run's page and the rest is still shown; a run dir that cannot be read
at all is one broken row in the runs table, never a failed page.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peftsft.core.rundir import Metrics, RunDir

# a run whose metrics.jsonl has not moved for this long, without a status saying so, is shown as stopped
STALE_SECONDS = 120
# summary.json's keys the dashboard shows, and the type each must have (anything else is reported, not shown)
SUMMARY_TYPES: dict[str, tuple[type, ...]] = {
    "steps": (int,), "first_loss": (int, float), "last_loss": (int, float), "eval_loss": (int, float),
    "train_tokens_per_s": (int, float), "peak_memory_bytes": (int, float), "trainable_params": (int,),
    "strategy": (str,), "model": (str,), "base_id": (str,),
}
TYPE_NAMES = {(int,): "an integer", (int, float): "a number", (str,): "a string"}


@dataclass
class RunInfo:
    name: str
    path: Path
    status: str  # running | done | stopped | failed | unknown | unreadable
    reason: str | None
    recipe: dict[str, Any]
    summary: dict[str, Any]  # only SUMMARY_TYPES' keys, each of its type
    metrics: Metrics = field(default_factory=Metrics)
    errors: list[str] = field(default_factory=list)

    @property
    def strategy(self) -> str:
        return self.summary.get("strategy") or _text(_section(self.recipe, "strategy").get("name")) or "?"

    @property
    def model(self) -> str:
        return self.summary.get("model") or _text(_section(self.recipe, "model").get("source")) or "?"

    @property
    def step(self) -> int:
        steps = [r["step"] for r in self.metrics.records if _is_int(r.get("step"))]
        return self.summary.get("steps") or (max(steps) if steps else 0)

    @property
    def max_steps(self) -> int | None:
        totals = [r["max_steps"] for r in self.metrics.records if _is_int(r.get("max_steps"))]
        return totals[-1] if totals else self.summary.get("steps")

    def last(self, key: str) -> float | None:
        values = [v for _, v in self.metrics.series(key)]
        return values[-1] if values else None

    @property
    def train_loss(self) -> float | None:
        return self.summary.get("last_loss", self.last("loss"))

    @property
    def eval_loss(self) -> float | None:
        return self.summary.get("eval_loss", self.last("eval_loss"))

    @property
    def tokens_per_s(self) -> float | None:
        return self.summary.get("train_tokens_per_s", self.last("tokens_per_s"))

    @property
    def peak_memory_gib(self) -> float | None:
        peak = self.summary.get("peak_memory_bytes")
        return round(peak / 2**30, 2) if peak else None

    @property
    def eta_seconds(self) -> float | None:
        """Remaining time at the pace so far (running runs only)."""
        if self.status != "running" or not self.max_steps:
            return None
        timed = [(r["step"], r["elapsed_s"]) for r in self.metrics.records
                 if _is_number(r.get("elapsed_s")) and _is_number(r.get("step")) and r["step"] > 0]  # fmt: skip
        if not timed:
            return None
        step, elapsed = timed[-1]
        return round(elapsed / step * max(self.max_steps - step, 0), 1)

    def row(self) -> dict[str, Any]:
        """The runs table's cells (also the JSON API's)."""
        return {
            "name": self.name, "status": self.status, "strategy": self.strategy, "model": self.model,
            "steps": self.step, "train_loss": self.train_loss, "eval_loss": self.eval_loss,
            "tokens_per_s": self.tokens_per_s, "peak_memory_gib": self.peak_memory_gib,
        }


def read_run(path: Path) -> RunInfo:
    """Everything the dashboard shows of one run dir; what cannot be read becomes an error line."""
    run, errors = RunDir(path), []
    recipe = run.read_recipe(errors)
    summary = typed_summary(run.read_summary(errors), errors)
    status = run.read_status(errors)
    metrics = run.read_metrics()
    state, reason = _state(run, bool(summary), status)
    return RunInfo(path.name, path, state, reason, recipe, summary, metrics, errors + metrics.errors)


def unreadable_run(path: Path, exc: Exception) -> RunInfo:
    """A run dir that could not be read at all: one row saying so (the table goes on)."""
    message = f"{type(exc).__name__}: {exc.strerror if isinstance(exc, OSError) and exc.strerror else exc}"
    return RunInfo(path.name, path, "unreadable", message, {}, {}, errors=[f"this run dir cannot be read: {message}"])


def typed_summary(summary: dict[str, Any], errors: list[str]) -> dict[str, Any]:
    """summary.json's shown keys whose values have the expected type; each other one becomes an error line."""
    kept = {}
    for key, types in SUMMARY_TYPES.items():
        value = summary.get(key)
        if value is None:
            continue
        if isinstance(value, types) and not isinstance(value, bool):
            kept[key] = value
        else:
            errors.append(f"summary.json: {key!r} should be {TYPE_NAMES[types]}, not {json.dumps(value, default=str)[:40]}")
    return kept


def _state(run: RunDir, finished: bool, status: dict) -> tuple[str, str | None]:
    state, reason = status.get("state"), _text(status.get("reason"))
    if state in ("stopped", "failed"):
        return state, reason
    if finished and state in (None, "done"):
        return "done", None
    if state == "running":
        if time.time() - run.last_write() > STALE_SECONDS and not _alive(status.get("pid")):
            return "stopped", "the training process is gone (killed?) without a final status"
        return "running", None
    return ("done", None) if finished else ("unknown", None)


def _alive(pid: Any) -> bool:
    if not _is_int(pid) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def scan_runs(root: Path) -> list[RunInfo]:
    """Every run dir under `root`, each read on its own: one that fails is a broken row, not a failed table."""
    try:
        folders = sorted(root.iterdir()) if root.is_dir() else []
    except OSError:
        return []
    runs = []
    for path in folders:
        try:
            if RunDir.looks_like_run(path):
                runs.append(read_run(path))
        except Exception as exc:  # a run dir nobody foresaw broken this way: shown as such, the others still are
            runs.append(unreadable_run(path, exc))
    return runs


def recipe_differences(recipes: list[dict]) -> dict[str, list[Any]]:
    """Every dotted key whose value differs between the recipes (absent counts as a value)."""
    flat = [_flatten(r) for r in recipes]
    keys = sorted(set().union(*flat)) if flat else []
    return {key: [f.get(key) for f in flat] for key in keys
            if len({json.dumps(f.get(key), default=str) for f in flat}) > 1}  # fmt: skip


def flatten_recipe(recipe: dict) -> dict[str, Any]:
    return _flatten(recipe)


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    if isinstance(node, list) and node and all(isinstance(item, dict) for item in node):
        out = {}
        for index, item in enumerate(node):
            out.update(_flatten(item, f"{prefix}{index}."))
        return out
    return {prefix.rstrip("."): node}


def _section(recipe: dict, name: str) -> dict:
    section = recipe.get(name)
    return section if isinstance(section, dict) else {}


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
