"""A sweep's outputs: the sweep dir's layout, its results table (results.md, results.json), its plots (optimisation
history, parameter importance) and the best trial's recipe (best.toml)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from peftsft.core.rundir import write_json, write_text


@dataclass(frozen=True)
class SweepDir:
    """runs/<name>-sweep/: study.db (the Optuna study), sweep.toml (the recipe swept), trials/trial-NNN/ (one run
    dir each), results.md, results.json, history.png, importance.png and best.toml."""

    path: Path

    study_file = property(lambda self: self.path / "study.db")
    recipe_file = property(lambda self: self.path / "sweep.toml")
    trials_dir = property(lambda self: self.path / "trials")
    results_md = property(lambda self: self.path / "results.md")
    results_json = property(lambda self: self.path / "results.json")
    history_plot = property(lambda self: self.path / "history.png")
    importance_plot = property(lambda self: self.path / "importance.png")
    best_recipe = property(lambda self: self.path / "best.toml")

    @property
    def storage(self) -> str:
        return f"sqlite:///{self.study_file.resolve()}"


def trial_row(trial) -> dict:
    """One trial as the results list it: number, state, value, values, where it stopped, cost, run dir."""
    state = trial.state.name.lower()
    steps = sorted(trial.intermediate_values)
    return {
        "trial": trial.number, "state": state, "value": trial.value, "params": dict(trial.params),
        "pruned_at_step": steps[-1] if state == "pruned" and steps else None,
        "intermediate": {str(step): trial.intermediate_values[step] for step in steps},
        "general_excess": trial.user_attrs.get("general_excess"),
        "feasible": _feasible(trial), "seconds": trial.user_attrs.get("seconds"),
        "failed": trial.user_attrs.get("failed"), "run_dir": trial.user_attrs.get("run_dir"),
    }


def _feasible(trial) -> bool | None:
    """Whether the general check stayed within its limit (None: not judged)."""
    excess = trial.user_attrs.get("general_excess")
    return None if excess is None else excess <= 0


def describe_trial(trial, metric: str) -> str:
    """One line per finished trial: 'trial 2 complete: token_f1 0.4512 · learning_rate 3e-4, r 8 · 41.2 s'."""
    row = trial_row(trial)
    values = ", ".join(f"{k} {_short(v)}" for k, v in row["params"].items())
    if row["state"] == "complete":
        outcome = f"{metric} {row['value']:.4g}"
    elif row["state"] == "pruned":
        outcome = f"pruned at step {row['pruned_at_step']}"
    else:
        outcome = f"failed ({row['failed'] or 'interrupted'})"
    general = "" if row["feasible"] in (None, True) else " · general check regressed"
    return f"trial {row['trial']} {row['state']}: {outcome} · {values}{general} · {row['seconds'] or 0:.1f} s"


def write_results(study, folder: SweepDir, metric: str, recipe_for: Callable[[dict], str], console: Console) -> dict:
    """results.json, results.md, the plots and best.toml (from `recipe_for(best params)`); returns results.json."""
    rows = [trial_row(t) for t in study.trials]
    best = _best_trial(study)
    results = {
        "metric": metric, "direction": study.direction.name.lower(), "trials": rows,
        "counts": {state: sum(r["state"] == state for r in rows) for state in ("complete", "pruned", "fail")},
        "best": None if best is None else {"trial": best.number, "value": best.value, "params": dict(best.params),
                                           "recipe": str(folder.best_recipe)},  # fmt: skip
    }
    if best is not None:
        write_text(folder.best_recipe, recipe_for(dict(best.params)))
    results["plots"] = write_plots(study, folder, metric)
    write_json(folder.results_json, results)
    write_text(folder.results_md, results_markdown(results))
    console.print(results_table(results))
    if best is not None:
        console.print(f"best: trial {best.number}, {metric} {best.value:.4g} → {folder.best_recipe} "
                      f"(python -m peftsft run {folder.best_recipe})", highlight=False)  # fmt: skip
    return results


def _best_trial(study):
    """The best complete trial that meets the constraints (Optuna's choice); None when there is none."""
    try:
        return study.best_trial
    except ValueError:
        return None


def results_markdown(results: dict) -> str:
    names = sorted({k for r in results["trials"] for k in r["params"]})
    head = ["trial", "state", results["metric"], *names, "pruned at", "general ok", "seconds"]
    lines = [f"# Sweep: {results['metric']} ({results['direction']})", "", "| " + " | ".join(head) + " |",
             "|" + "---|" * len(head)]  # fmt: skip
    for r in results["trials"]:
        cells = [r["trial"], r["state"], _short(r["value"]), *(_short(r["params"].get(n)) for n in names),
                 r["pruned_at_step"] or "", {None: "", True: "yes", False: "no"}[r["feasible"]], r["seconds"] or ""]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    best = results["best"]
    lines += ["", f"Best: trial {best['trial']} ({_short(best['value'])}), recipe {best['recipe']}" if best
              else "No complete trial meets the constraints yet."]  # fmt: skip
    return "\n".join(lines) + "\n"


def results_table(results: dict) -> Table:
    names = sorted({k for r in results["trials"] for k in r["params"]})
    table = Table(title=f"sweep: {results['metric']} ({results['direction']})")
    for column in ("trial", "state", results["metric"], *names, "pruned at", "s"):
        table.add_column(column, justify="right" if column not in ("state",) else "left")
    best = (results["best"] or {}).get("trial")
    for r in results["trials"]:
        style = "bold green" if r["trial"] == best else ("dim" if r["state"] != "complete" else None)
        table.add_row(str(r["trial"]), r["state"], _short(r["value"]), *(_short(r["params"].get(n)) for n in names),
                      str(r["pruned_at_step"] or ""), str(r["seconds"] or ""), style=style)  # fmt: skip
    return table


def write_plots(study, folder: SweepDir, metric: str) -> dict[str, str]:
    """history.png (every trial's value, the best so far) and importance.png (which values mattered, Optuna's
    PED-ANOVA); each where the study has enough complete trials for it, else a note why not."""
    import warnings

    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization.matplotlib import plot_optimization_history, plot_param_importances

    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    plots: dict[str, str] = {}
    for name, path, plot, needs in (("history", folder.history_plot, plot_optimization_history, 1),
                                    ("importance", folder.importance_plot, plot_param_importances, 2)):  # fmt: skip
        if len(complete) < needs:
            plots[name] = f"not drawn: needs {needs} complete trial(s), the study has {len(complete)}"
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
                axes = plot(study, target_name=metric)
            if name == "history":  # trial numbers: whole ticks
                axes.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
            figure = axes.figure
            figure.set_size_inches(8, 4.5)
            figure.tight_layout()
            figure.savefig(path, dpi=110)
            plt.close(figure)
            plots[name] = str(path)
        except (ValueError, RuntimeError) as exc:  # e.g. every complete trial drew the same values
            plots[name] = f"not drawn: {exc}"
    return plots


def _short(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)
