"""What a run dir says, read defensively: the UI shows a broken file as an error panel, never crashes on it."""

from __future__ import annotations

import json
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# a run whose metrics.jsonl has not moved for this long, without a status saying so, is shown as stopped
STALE_SECONDS = 120


@dataclass
class Metrics:
    records: list[dict] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # "metrics.jsonl:7: not JSON" — shown, the rest still drawn

    def series(self, key: str) -> list[tuple[float, float]]:
        return [(r["step"], float(r[key])) for r in self.records if isinstance(r.get(key), (int, float)) and "step" in r]


@dataclass
class RunInfo:
    name: str
    path: Path
    status: str  # running | done | stopped | failed | unknown
    reason: str | None
    recipe: dict[str, Any]
    summary: dict[str, Any]
    metrics: Metrics
    errors: list[str]

    @property
    def strategy(self) -> str:
        return str(self.summary.get("strategy") or self.recipe.get("strategy", {}).get("name", "?"))

    @property
    def model(self) -> str:
        return str(self.summary.get("model") or self.recipe.get("model", {}).get("source", "?"))

    @property
    def step(self) -> int:
        steps = [r["step"] for r in self.metrics.records if isinstance(r.get("step"), int)]
        return int(self.summary.get("steps") or (max(steps) if steps else 0))

    @property
    def max_steps(self) -> int | None:
        totals = [r["max_steps"] for r in self.metrics.records if isinstance(r.get("max_steps"), int)]
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
        timed = [(r["step"], r["elapsed_s"]) for r in self.metrics.records if "elapsed_s" in r and r.get("step")]
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


def read_metrics(path: Path) -> Metrics:
    metrics = Metrics()
    if not path.is_file():
        return metrics
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            metrics.errors.append(f"{path.name}:{number}: not a JSON record: {line[:80]!r}")
            continue
        if isinstance(record, dict):
            metrics.records.append(record)
        else:
            metrics.errors.append(f"{path.name}:{number}: not a JSON object")
    return metrics


def _read_json(path: Path, errors: list[str]) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except ValueError as exc:
        errors.append(f"{path.name}: unreadable JSON ({exc})")
        return {}


def _read_recipe(path: Path, errors: list[str]) -> dict:
    if not path.is_file():
        return {}
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        errors.append(f"{path.name}: unreadable TOML ({exc})")
        return {}


def read_run(path: Path) -> RunInfo:
    errors: list[str] = []
    recipe = _read_recipe(path / "recipe.resolved.toml", errors)
    summary = _read_json(path / "summary.json", errors)
    status = _read_json(path / "status.json", errors)
    metrics = read_metrics(path / "metrics.jsonl")
    state, reason = _state(path, summary, status)
    return RunInfo(path.name, path, state, reason, recipe, summary, metrics, errors + metrics.errors)


def _state(path: Path, summary: dict, status: dict) -> tuple[str, str | None]:
    state = status.get("state")
    if state in ("stopped", "failed"):
        return state, status.get("reason")
    if summary and state in (None, "done"):
        return "done", None
    if state == "running":
        metrics = path / "metrics.jsonl"
        newest = max((p.stat().st_mtime for p in (metrics, path / "status.json") if p.exists()), default=0)
        if time.time() - newest > STALE_SECONDS and not _alive(status.get("pid")):
            return "stopped", "the training process is gone (killed?) without a final status"
        return "running", None
    return ("done", None) if summary else ("unknown", None)


def _alive(pid: Any) -> bool:
    import os

    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def is_run_dir(path: Path) -> bool:
    return path.is_dir() and any((path / name).exists() for name in ("recipe.resolved.toml", "metrics.jsonl"))


def scan_runs(root: Path) -> list[RunInfo]:
    if not root.is_dir():
        return []
    return [read_run(p) for p in sorted(root.iterdir()) if is_run_dir(p)]


def recipe_differences(recipes: list[dict]) -> dict[str, list[Any]]:
    """Every dotted key whose value differs between the recipes (absent counts as a value)."""
    flat = [_flatten(r) for r in recipes]
    keys = sorted(set().union(*flat)) if flat else []
    return {key: [f.get(key) for f in flat] for key in keys if len({json.dumps(f.get(key)) for f in flat}) > 1}


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
