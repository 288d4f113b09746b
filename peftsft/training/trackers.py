"""Experiment trackers (`[training] report_to`): transformers' integrations log the losses and every eval metric;
this module gives TensorBoard, MLflow and Weights & Biases a place inside the run dir, the run's name and its
resolved recipe as parameters.

Defaults, each only where the environment does not say otherwise: TensorBoard events in <run>/trackers/tensorboard;
MLflow in a local SQLite store, <run>/trackers/mlflow.db (MLflow ≥ 3 keeps its plain-file store read-mostly);
W&B offline in <run>/trackers/wandb (`wandb sync` uploads it later). The MLflow and W&B runs are opened here, before
the Trainer, so its integrations log into them and the run's final evaluation lands in the same run; they are
closed when the block ends.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib.util
import json
import os
from collections.abc import Iterator

from peftsft.core.compat import tracker_names
from peftsft.core.config import Recipe
from peftsft.core.rundir import RunDir

CLIENTS = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}  # the trackers set up here → package


def tracker_problems(report_to: list[str]) -> list[str]:
    """Unknown tracker names (with a "did you mean") and trackers whose client is not installed."""
    known = [*tracker_names(), "all", "none"]
    problems = []
    for name in report_to:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
            hint = f" — did you mean {close[0]!r}?" if close else f" (one of: {', '.join(known)})"
            problems.append(f"[training] report_to: unknown tracker {name!r}{hint}")
        elif name in CLIENTS and importlib.util.find_spec(CLIENTS[name]) is None:
            problems.append(f"[training] report_to: {name!r} needs the {CLIENTS[name]} package: "
                            f"pip install {CLIENTS[name]} (or pip install 'peftsft[trackers]')")  # fmt: skip
    return problems


def reported(recipe: Recipe) -> list[str]:
    """The trackers set up here that the run reports to ("all": those installed)."""
    names = set(recipe.training.report_to)
    if "all" in names:
        names |= {name for name, package in CLIENTS.items() if importlib.util.find_spec(package)}
    return [name for name in CLIENTS if name in names]


def environment(recipe: Recipe, rundir: RunDir) -> dict[str, str]:
    """The trackers' settings the run gives them (environment variables are their documented interface)."""
    where, names, env = rundir.trackers_dir, reported(recipe), {}
    if "tensorboard" in names:
        env["TENSORBOARD_LOGGING_DIR"] = str(where / "tensorboard")
    if "mlflow" in names:
        env["MLFLOW_TRACKING_URI"] = f"sqlite:///{where.resolve() / 'mlflow.db'}"
    if "wandb" in names:
        env |= {"WANDB_MODE": "offline", "WANDB_DIR": str(where), "WANDB_PROJECT": "peftsft", "WANDB_CONSOLE": "off"}
    return env


@contextlib.contextmanager
def tracking(recipe: Recipe, rundir: RunDir, main: bool) -> Iterator[None]:
    """While the block trains and evaluates: the trackers' settings (where the environment leaves them unset), and
    on the main process their runs opened under the run's name with the recipe as parameters, closed at the end."""
    names = reported(recipe)
    if not names:
        yield
        return
    defaults = {k: v for k, v in environment(recipe, rundir).items() if k not in os.environ}
    os.environ.update(defaults)
    try:
        with contextlib.ExitStack() as runs:
            if main:
                rundir.trackers_dir.mkdir(parents=True, exist_ok=True)
                params = recipe_params(recipe)
                for name in names:
                    runs.enter_context(OPEN[name](recipe, params))
            yield
    finally:
        for key in defaults:
            os.environ.pop(key, None)


def recipe_params(recipe: Recipe) -> dict[str, str | int | float | bool]:
    """The resolved recipe flattened to `section.key` → a scalar (lists and tables as JSON), unset keys left out."""
    flat: dict = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict) and not prefix.endswith(("fields", "roles")) and value:
            for key, item in value.items():
                walk(f"{prefix}.{key}" if prefix else key, item)
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for i, item in enumerate(value):
                walk(f"{prefix}.{i}", item)
        elif value is not None:
            flat[prefix] = value if isinstance(value, (str, int, float, bool)) else json.dumps(value)

    walk("", recipe.model_dump(mode="json"))
    return flat


@contextlib.contextmanager
def _tensorboard(recipe: Recipe, params: dict) -> Iterator[None]:
    """The recipe as hyperparameters (the HPARAMS tab) and as text, beside the Trainer's scalars."""
    from torch.utils.tensorboard import SummaryWriter

    from peftsft.core.config import recipe_to_toml

    with SummaryWriter(log_dir=os.environ["TENSORBOARD_LOGGING_DIR"]) as writer:
        writer.add_text("run_name", recipe.run.name)
        writer.add_text("recipe", "```toml\n" + recipe_to_toml(recipe) + "```")
        writer.add_hparams({f"recipe.{k}": v for k, v in params.items()}, {}, run_name=".")
    yield


@contextlib.contextmanager
def _mlflow(recipe: Recipe, params: dict) -> Iterator[None]:
    import mlflow

    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    with mlflow.start_run(run_name=recipe.run.name):
        items = [(f"recipe.{k}", str(v)[:6000]) for k, v in params.items()]  # MLflow's limit per value
        for start in range(0, len(items), 100):  # and per call
            mlflow.log_params(dict(items[start : start + 100]))
        yield


@contextlib.contextmanager
def _wandb(recipe: Recipe, params: dict) -> Iterator[None]:
    import wandb

    run = wandb.init(project=os.environ.get("WANDB_PROJECT"), name=recipe.run.name, dir=os.environ.get("WANDB_DIR"),
                     config={"recipe": recipe.model_dump(mode="json")}, reinit="finish_previous")  # fmt: skip
    try:
        yield
    finally:
        run.finish()


OPEN = {"tensorboard": _tensorboard, "mlflow": _mlflow, "wandb": _wandb}
