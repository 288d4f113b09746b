"""`report_to` trackers, read back from what they wrote: TensorBoard events, MLflow's local store, W&B's offline
run file — losses, task metrics at their steps, the resolved recipe as parameters, the run name."""

from __future__ import annotations

import importlib.util
import json
import struct

import pytest
from rich.console import Console

from peftsft.training.recipe import load_recipe

TRACKERS = [name for name in ("tensorboard", "mlflow", "wandb") if importlib.util.find_spec(name)]
EVAL_STEPS = [2, 4]


def needs(name: str):
    return pytest.mark.skipif(name not in TRACKERS, reason=f"{name} is not installed (pip install 'peftsft[trackers]')")


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory, tiny_model_dir):
    """A 4-step run evaluating every 2 steps, reporting to every installed tracker; (recipe, run dir)."""
    from peftsft.artifacts.tasks import run
    from tests.conftest import write_tiny_recipe

    if not TRACKERS:
        pytest.skip("no tracker client installed (pip install 'peftsft[trackers]')")
    recipe = load_recipe(write_tiny_recipe(tmp_path_factory.mktemp("trackers"), tiny_model_dir), [
        "data.eval_fraction=0.25", "training.eval_steps=2", "training.max_steps=4", "eval.task_max_new_tokens=4",
        "run.name=\"tracked\"", f"training.report_to={json.dumps(TRACKERS)}"])  # fmt: skip
    run(recipe, Console(quiet=True))
    return recipe, recipe.run_dir


def logged(run_dir, key: str) -> dict[int, float]:
    """metrics.jsonl's values of an eval metric, one per evaluation step (what every tracker must hold too)."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    values = {r["step"]: r[key] for r in records if key in r}
    assert sorted(values) == EVAL_STEPS, key
    return values


@needs("tensorboard")
def test_tensorboard_has_losses_task_metrics_recipe_and_name(tracked_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    recipe, run_dir = tracked_run
    events = EventAccumulator(str(run_dir / "trackers" / "tensorboard"), size_guidance={"tensors": 0}).Reload()
    scalars = {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}
    assert sorted(scalars["train/loss"]) == [1, 2, 3, 4]
    for key in ("loss", "general_loss", "token_f1", "exact_match"):
        assert scalars[f"eval/{key}"] == pytest.approx(logged(run_dir, f"eval_{key}")), key
    texts = {tag: events.Tensors(tag)[0].tensor_proto.string_val[0].decode() for tag in events.Tags()["tensors"]}
    assert texts["run_name/text_summary"] == "tracked"
    assert "learning_rate = 0.01" in texts["recipe/text_summary"]
    content = events.SummaryMetadata("_hparams_/session_start_info").plugin_data.content
    hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    assert hparams["recipe.training.learning_rate"].number_value == 0.01
    assert hparams["recipe.strategy.r"].number_value == 4 and hparams["recipe.run.name"].string_value == "tracked"


@needs("mlflow")
def test_mlflow_has_losses_task_metrics_recipe_and_name(tracked_run):
    from mlflow.tracking import MlflowClient

    recipe, run_dir = tracked_run
    client = MlflowClient(f"sqlite:///{run_dir / 'trackers' / 'mlflow.db'}")
    runs = client.search_runs(experiment_ids=[e.experiment_id for e in client.search_experiments()])
    assert [r.info.run_name for r in runs] == ["tracked"]  # one run: the final evaluation went into it too
    run = runs[0]

    def history(key):
        return {m.step: m.value for m in client.get_metric_history(run.info.run_id, key) if m.step in EVAL_STEPS}

    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "loss")) == [1, 2, 3, 4]
    for key in ("eval_loss", "eval_general_loss", "eval_token_f1"):
        assert history(key) == pytest.approx(logged(run_dir, key)), key
    assert run.data.params["recipe.training.learning_rate"] == "0.01"
    assert run.data.params["recipe.run.name"] == "tracked" and run.data.params["recipe.strategy.r"] == "4"


@needs("wandb")
def test_wandb_offline_run_has_losses_task_metrics_recipe_and_name(tracked_run):
    from wandb.proto import wandb_internal_pb2

    recipe, run_dir = tracked_run
    [path] = (run_dir / "trackers" / "wandb").glob("offline-run-*/run-*.wandb")
    history, config, name = {}, {}, None
    for data in wandb_records(path.read_bytes()):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            name = record.run.display_name
            config |= {item.key: json.loads(item.value_json) for item in record.run.config.update}
        elif kind == "config":
            config |= {item.key: json.loads(item.value_json) for item in record.config.update}
        elif kind == "history":
            items = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            history.setdefault(items.get("train/global_step"), {}).update(items)
    assert name == "tracked"
    assert config["recipe"]["training"]["learning_rate"] == 0.01 and config["recipe"]["strategy"]["r"] == 4
    assert sorted(step for step, items in history.items() if "train/loss" in items) == [1, 2, 3, 4]
    for key in ("loss", "general_loss", "token_f1"):
        got = {step: items[f"eval/{key}"] for step, items in history.items() if f"eval/{key}" in items
               and step in EVAL_STEPS}
        assert got == pytest.approx(logged(run_dir, f"eval_{key}")), key


def wandb_records(raw: bytes):
    """The records of a W&B run file: LevelDB's log format (32 KiB blocks of checksummed chunks: full, or first,
    middle…, last) after W&B's 7-byte header. wandb ships no reader for it any more (its Go core reads it)."""
    block, full, first, last = 32768, 1, 2, 4
    assert raw[:4] == b":W&B"
    position, parts = 7, b""
    while position + 7 <= len(raw):
        room = block - position % block
        if room < 7:  # a block's tail too small for a chunk header is padding
            position += room
            continue
        _, length, kind = struct.unpack("<IHB", raw[position : position + 7])
        if kind == 0 and length == 0:
            position += room
            continue
        parts += raw[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (full, last):
            yield parts
            parts = b""
        elif kind != first and kind != 3:
            raise ValueError(f"unknown chunk type {kind}")


# ---------------------------------------------------------------------------------------------- checks


def test_unknown_and_missing_trackers_are_recipe_problems(tiny_recipe, monkeypatch):
    from peftsft.core.errors import UserError

    with pytest.raises(UserError) as info:
        load_recipe(tiny_recipe(), ["training.report_to=[\"tensorbord\"]"])
    assert any("unknown tracker 'tensorbord' — did you mean 'tensorboard'?" in p for p in info.value.problems)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(UserError) as info:
        load_recipe(tiny_recipe(), ["training.report_to=[\"mlflow\"]"])
    assert any("'mlflow' needs the mlflow package" in p for p in info.value.problems)


def test_tracker_settings_stay_inside_the_run_dir_unless_the_environment_says(tiny_recipe, monkeypatch, tmp_path):
    import os

    from peftsft.core.rundir import RunDir
    from peftsft.training.trackers import environment, recipe_params, tracking

    recipe = load_recipe(tiny_recipe(), ["training.report_to=[\"tensorboard\", \"wandb\"]"])
    rundir = RunDir(recipe.run_dir)
    env = environment(recipe, rundir)
    assert env["TENSORBOARD_LOGGING_DIR"] == str(rundir.trackers_dir / "tensorboard")
    assert env["WANDB_MODE"] == "offline" and "MLFLOW_TRACKING_URI" not in env
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
    with tracking(recipe, rundir, main=False):
        assert os.environ["WANDB_MODE"] == "online" and os.environ["TENSORBOARD_LOGGING_DIR"] == env[
            "TENSORBOARD_LOGGING_DIR"]
    assert os.environ["WANDB_MODE"] == "online" and "TENSORBOARD_LOGGING_DIR" not in os.environ
    params = recipe_params(recipe)
    assert params["training.learning_rate"] == 0.01 and params["data.datasets.0.path"].endswith("train.jsonl")
    assert params["training.report_to"] == '["tensorboard", "wandb"]'


def test_tracker_settings_for_each_tracker_name_the_run_dirs_places(tmp_path):
    from types import SimpleNamespace

    from peftsft.core.rundir import RunDir
    from peftsft.training.trackers import environment

    rundir = RunDir(tmp_path / "runs" / "tiny")
    where = rundir.trackers_dir

    def env(*names: str) -> dict:
        return environment(SimpleNamespace(training=SimpleNamespace(report_to=list(names))), rundir)

    assert env("tensorboard") == {"TENSORBOARD_LOGGING_DIR": str(where / "tensorboard")}
    assert env("mlflow") == {"MLFLOW_TRACKING_URI": f"sqlite:///{where.resolve() / 'mlflow.db'}"}
    assert env("wandb") == {"WANDB_MODE": "offline", "WANDB_DIR": str(where), "WANDB_PROJECT": "peftsft",
                            "WANDB_CONSOLE": "off"}  # fmt: skip
    assert env("wandb", "mlflow", "tensorboard") == {**env("tensorboard"), **env("mlflow"), **env("wandb")}
    assert env() == {} and env("none") == {}


def test_recipe_params_flatten_tables_and_lists_of_tables_keep_mappings_and_lists_as_json():
    from peftsft.core.config import Recipe
    from peftsft.training.trackers import recipe_params

    recipe = Recipe.model_validate({
        "model": {"source": "org/model"},
        "data": {"datasets": [{"path": "a.jsonl", "fields": {"prompt": "question"}, "roles": {"human": "user"}},
                              {"path": "b.jsonl"}]},
        "training": {"report_to": ["tensorboard", "mlflow"], "learning_rate": 0.001},
    })  # fmt: skip
    params = recipe_params(recipe)
    assert params["model.source"] == "org/model" and params["training.learning_rate"] == 0.001
    assert params["data.max_length"] == 1024 and params["data.packing"] is False
    assert params["data.datasets.0.path"] == "a.jsonl" and params["data.datasets.1.path"] == "b.jsonl"
    assert params["data.datasets.0.fields"] == '{"prompt": "question"}'
    assert params["data.datasets.0.roles"] == '{"human": "user"}'
    assert params["data.datasets.1.fields"] == "{}" and params["run.sample_prompts"] == "[]"
    assert params["training.report_to"] == '["tensorboard", "mlflow"]'
    assert "model.bits" not in params and "data.eval_path" not in params  # unset keys are left out
    assert all(isinstance(v, (str, int, float, bool)) for v in params.values())
    assert params["task"] == "chat" and not [k for k in params if k.startswith(".") or k.endswith(".")]
