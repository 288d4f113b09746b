"""What a sweep dir (`peftsft sweep`) says, for the dashboard: its trials, history and parameter importance.

Read from the Optuna study in study.db (read-only, so a sweep still running shows its trials as they finish), with
results.json as the fallback; whatever cannot be read becomes an error line, never a failed page.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peftsft.artifacts.ui.charts import WIDE, line_chart
from peftsft.artifacts.ui.run_info import scan_folders
from peftsft.core.metric_names import METRICS, direction
from peftsft.workflows.sweep_results import SweepDir, trial_row

STUDY_NAME = "peftsft-sweep"  # as workflows/sweep.py names it; a study.db holding one other study is read too


@dataclass
class SweepInfo:
    name: str
    path: Path
    metric: str = "?"
    direction: str = ""  # "higher is better" | "lower is better"
    trials: list[dict] = field(default_factory=list)  # workflows.sweep_results.trial_row's
    best: dict | None = None  # {"trial", "value", "params"}
    importance: dict[str, float] | str = "not computed"  # parameter → importance, or why there is none
    errors: list[str] = field(default_factory=list)

    @property
    def dir(self) -> SweepDir:
        return SweepDir(self.path)

    def counts(self) -> dict[str, int]:
        states = [t["state"] for t in self.trials]
        return {state: states.count(state) for state in ("complete", "pruned", "fail", "running", "waiting")}

    def trial_runs(self) -> dict[Any, str]:
        """Trial number → the name of its run dir under the sweep's trials/ (those that have one)."""
        found = {}
        for t in self.trials:
            name = Path(t["run_dir"]).name if isinstance(t.get("run_dir"), str) else None
            if name and (self.dir.trials_dir / name).is_dir():
                found[t["trial"]] = name
        return found

    def params(self) -> list[str]:
        return sorted({name for t in self.trials for name in t["params"]})

    def history_chart(self) -> str:
        """Optuna's optimisation history: each complete trial's value by trial number, and the best so far."""
        done = [(t["trial"], t["value"]) for t in self.trials if t["state"] == "complete" and _number(t["value"])]
        better = max if self.direction.startswith("higher") else min
        best_so_far, best = [], None
        for number, value in done:
            best = value if best is None else better(best, value)
            best_so_far.append((number, best))
        marks = ((self.best["trial"], f"best: trial {self.best['trial']}"),) if self.best else ()
        return line_chart({self.metric: done, "best so far": best_so_far}, f"optimisation history: {self.metric} "
                          f"({self.direction})", WIDE, self.metric, marks, x_label="trial")


def looks_like_sweep(path: Path) -> bool:
    folder = SweepDir(path)
    return path.is_dir() and (folder.study_file.is_file() or folder.results_json.is_file())


def read_sweep(path: Path) -> SweepInfo:
    """A sweep dir's trials from its study (else results.json); each part that cannot be read is an error line."""
    info, folder = SweepInfo(path.name, path), SweepDir(path)
    study = None
    if folder.study_file.is_file():
        try:
            study = _load_study(folder)
        except Exception as exc:  # a damaged or foreign file: said on the page, results.json still tried
            info.errors.append(f"study.db: cannot be read as an Optuna study ({type(exc).__name__}: {str(exc)[:160]})")
    if study is not None:
        _from_study(info, study)
    elif folder.results_json.is_file():
        _from_results(info, folder.results_json)
    elif not info.errors:
        info.errors.append("neither study.db nor results.json is there yet")
    if info.metric in METRICS:
        info.direction = direction(info.metric)
    return info


def unreadable_sweep(path: Path, exc: Exception) -> SweepInfo:
    return SweepInfo(path.name, path, errors=[f"this sweep dir cannot be read: {type(exc).__name__}: {exc}"])


def scan_sweeps(root: Path) -> list[SweepInfo]:
    """Every sweep dir under `root`, each read on its own: one that fails is a broken row, not a failed table."""
    return scan_folders(root, looks_like_sweep, read_sweep, unreadable_sweep)


def _load_study(folder: SweepDir):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # read-only: the dashboard never writes into a sweep dir (nor creates a study.db where a file is damaged)
    storage = optuna.storages.RDBStorage(f"sqlite:///file:{folder.study_file.resolve()}?mode=ro&uri=true",
                                         skip_compatibility_check=True, skip_table_creation=True)
    names = optuna.get_all_study_names(storage)
    name = STUDY_NAME if STUDY_NAME in names else (names[0] if len(names) == 1 else None)
    if name is None:
        raise ValueError(f"expected the study {STUDY_NAME!r}, found {names or 'none'}")
    return optuna.load_study(study_name=name, storage=storage)


def _from_study(info: SweepInfo, study) -> None:
    info.metric = str(study.user_attrs.get("metric", "value"))
    for trial in study.trials:
        try:
            info.trials.append(trial_row(trial))
        except Exception as exc:  # one odd trial: a broken row, the others still listed
            info.trials.append(_broken_row(trial.number, exc))
    try:
        best = study.best_trial  # Optuna's choice: the best complete trial that meets the constraints
        info.best = {"trial": best.number, "value": best.value, "params": dict(best.params)}
    except ValueError:
        info.best = None
    info.importance = _importance(study)


def _importance(study) -> dict[str, float] | str:
    """Optuna's parameter importance (its default evaluator, PED-ANOVA), or why it cannot be computed yet."""
    import warnings

    import optuna

    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if len(complete) < 2:
        return f"needs 2 complete trials, the study has {len(complete)}"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return dict(optuna.importance.get_param_importances(study))
    except (ValueError, RuntimeError, ZeroDivisionError) as exc:  # e.g. every trial drew the same values
        return f"not computed: {exc}"


def _from_results(info: SweepInfo, path: Path) -> None:
    """results.json, as write_results left it (study.db gone or damaged): the trials, without the importance."""
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
        info.metric = str(results.get("metric", "value"))
        rows = results.get("trials", [])
        best = results.get("best")
    except (OSError, ValueError, AttributeError) as exc:
        info.errors.append(f"results.json: unreadable ({type(exc).__name__}: {str(exc)[:160]})")
        return
    for index, row in enumerate(rows if isinstance(rows, list) else []):
        ok = isinstance(row, dict) and isinstance(row.get("state"), str) and isinstance(row.get("params"), dict)
        info.trials.append(row if ok else _broken_row(index, ValueError(f"not a trial: {json.dumps(row)[:60]}")))
    info.best = best if isinstance(best, dict) and "trial" in best else None
    info.importance = "computed from the study (study.db), which could not be read"


def _broken_row(number: Any, exc: Exception) -> dict:
    return {"trial": number, "state": "unreadable", "value": None, "params": {}, "pruned_at_step": None,
            "seconds": None, "failed": f"{type(exc).__name__}: {exc}", "run_dir": None, "broken": True}


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
