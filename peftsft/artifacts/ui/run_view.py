"""A run's page contents: its charts (loss with the best checkpoint marked, learning rate, speed, one small chart per
task metric logged during training), its summary in human units, and its artifacts."""

from __future__ import annotations

from peftsft.artifacts.export.record import record_path
from peftsft.artifacts.ui.charts import SMALL, WIDE, line_chart
from peftsft.artifacts.ui.fmt import human
from peftsft.artifacts.ui.run_info import RunInfo
from peftsft.core.metric_names import METRICS, direction
from peftsft.core.rundir import Metrics, RunDir
from peftsft.core.units import size

# the summary rows a run page shows, in this order (run_info.SUMMARY_TYPES checked their types)
SUMMARY_ROWS = ("steps", "train_seconds", "train_tokens_per_s", "peak_memory_bytes", "first_loss", "last_loss",
                "eval_loss", "trainable_params", "base_id")


def live(run: RunInfo) -> dict:
    """What the run page refreshes every few seconds: status, progress, the best checkpoint and the charts."""
    m, best = run.metrics, run.best
    marks = ((best["step"], f"best: step {best['step']}"),) if best else ()
    charts = {
        "loss": line_chart({"train loss": curve(run, "loss"), "eval loss": curve(run, "eval_loss")}, "loss", WIDE,
                           "loss", marks),
        "lr": line_chart({"learning rate": curve(run, "learning_rate")}, "learning rate", SMALL, "learning_rate"),
        "speed": line_chart({"tokens/s": curve(run, "tokens_per_s", training=True)}, "train tokens/s", SMALL,
                            "tokens_per_s"),
    }
    for name in task_metrics(run):
        charts[f"metric-{name}"] = line_chart({name: curve(run, f"eval_{name}")}, f"{name} ({direction(name)})",
                                              SMALL, name, marks)
    return {
        "status": run.status, "reason": run.reason, "step": run.step, "max_steps": run.max_steps,
        "eta": human(run.eta_seconds, "eta_seconds"), "errors": run.errors, "row": run.row(),
        "points": len(m.series("loss")), "best": best_line(run), "charts": charts,
    }


def curve(run: RunInfo, key: str, training: bool = False) -> list[tuple[float, float]]:
    """`key`'s points by step, one per step: the final evaluation of the best weights is logged again at the best
    step, and a resumed run logs a step again — the last record of a step is its value. `training`: only the
    training log's records (evaluation records carry a tokens/s that is no training speed)."""
    rows = [r for r in run.metrics.records if "loss" in r] if training else run.metrics.records
    return sorted(dict(Metrics(rows).series(key)).items())


def task_metrics(run: RunInfo) -> list[str]:
    """The task metrics (core/metric_names.py) this run has logged at its evaluations, the loss aside."""
    return [name for name in METRICS if name != "loss" and run.metrics.series(f"eval_{name}")]


def best_line(run: RunInfo) -> str | None:
    """'step 40 — tool_accuracy 0.9123 at step 40 was the highest of 5 evaluation(s) …'; None when the adapter
    holds the last weights."""
    best = run.best
    if not best:
        return None
    return f"step {best['step']} — {best['why']}"


def summary_rows(run: RunInfo) -> list[tuple[str, str]]:
    """(label, human value) for the summary table: the run's figures, then its final evaluation's metrics."""
    rows = [(key.removesuffix("_bytes").replace("_", " "), human(run.summary[key], key))
            for key in SUMMARY_ROWS if key in run.summary]
    final = run.summary.get("eval", {})
    rows += [(f"final eval {key}", human(value, key)) for key, value in final.items()
             if key in METRICS and isinstance(value, (int, float)) and not isinstance(value, bool)]  # fmt: skip
    cost = run.summary.get("task_metrics", {})
    if isinstance(cost.get("seconds"), (int, float)) and isinstance(cost.get("evaluations"), int):
        share = cost.get("share_of_train_time")
        of = f" ({human(100 * share)}% of training)" if isinstance(share, (int, float)) else ""
        spent = human(cost["seconds"], "seconds")
        rows.append(("task metrics cost", f"{cost['evaluations']} evaluations, {spent}{of}"))
    return rows


def artifacts(run: RunInfo) -> list[dict]:
    """Exports (with their verification record, when written) and the adapter's model card."""
    rundir, found = RunDir(run.path), []
    if card := rundir.read_card(run.errors):
        found.append({"name": "adapter/README.md (model card)", "text": card})
    for item in rundir.exports():
        try:
            files = [f for f in item.rglob("*") if f.is_file()] if item.is_dir() else [item]
            nbytes = sum(f.stat().st_size for f in files)
            record = record_path(item).read_text(encoding="utf-8", errors="replace") \
                if record_path(item).is_file() else "no verification record"
        except OSError as exc:
            nbytes, record = 0, f"unreadable: {exc.strerror or exc}"
        found.append({"name": f"exports/{item.name} ({size(nbytes)})", "text": record})
    return found
