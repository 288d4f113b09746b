"""peftsft.training.runs and .resume called directly: the run dir opened or resumed, the base's public id filled in,
training's stops turned into messages, the adapter saved, summary.json's shared keys — no model trained."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from rich.console import Console

from peftsft.base_identity import BaseIdentity
from peftsft.core.config import Recipe, recipe_to_toml
from peftsft.core.errors import TrainingStopped, UserError
from peftsft.core.rundir import CHECKPOINT_SEAL, RunDir
from peftsft.training import runs
from peftsft.training.callbacks import NonFiniteError, StopOnInterrupt


def recipe_of(tmp_path: Path, **model) -> Recipe:
    return Recipe.model_validate({"data": {"datasets": [{"path": "train.jsonl"}]}, "model": model,
                                  "run": {"output_dir": str(tmp_path), "name": "run"}})


def console() -> Console:
    return Console(record=True, width=300, color_system=None)


def identity(monkeypatch, found: BaseIdentity) -> list:
    asked = []
    monkeypatch.setattr(runs, "detect_base_identity", lambda source: asked.append(source) or found)
    return asked


def sealed(rundir: RunDir, step: int) -> Path:
    folder = rundir.checkpoints_dir / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / CHECKPOINT_SEAL).write_text(str(step))
    return folder


# ---------------------------------------------------------------------------------------------- the base's identity


def test_a_recipe_without_base_id_or_license_takes_both_from_the_source(monkeypatch, tmp_path):
    recipe, out = recipe_of(tmp_path, source="some/dir"), console()
    asked = identity(monkeypatch, BaseIdentity("org/base", "its config", "apache-2.0"))
    runs.fill_base_identity(recipe, out)
    assert asked == ["some/dir"]
    assert (recipe.model.base_id, recipe.model.license) == ("org/base", "apache-2.0")
    assert out.export_text() == "base id: org/base (from its config)\n"


def test_a_recipes_own_base_id_and_license_are_kept_and_the_source_not_read(monkeypatch, tmp_path):
    recipe, out = recipe_of(tmp_path, base_id="mine/base", license="mit"), console()
    asked = identity(monkeypatch, BaseIdentity("org/base", "its config", "apache-2.0"))
    runs.fill_base_identity(recipe, out)
    assert asked == [] and (recipe.model.base_id, recipe.model.license) == ("mine/base", "mit")
    assert out.export_text() == ""


def test_a_recipe_with_a_base_id_only_takes_the_license_and_prints_nothing(monkeypatch, tmp_path):
    recipe, out = recipe_of(tmp_path, base_id="mine/base"), console()
    asked = identity(monkeypatch, BaseIdentity("org/base", "its config", "apache-2.0"))
    runs.fill_base_identity(recipe, out)
    assert len(asked) == 1 and (recipe.model.base_id, recipe.model.license) == ("mine/base", "apache-2.0")
    assert out.export_text() == ""


def test_a_recipe_with_a_license_only_takes_the_base_id(monkeypatch, tmp_path):
    recipe, out = recipe_of(tmp_path, license="mit"), console()
    identity(monkeypatch, BaseIdentity("org/base", "the Hub id", "apache-2.0"))
    runs.fill_base_identity(recipe, out)
    assert (recipe.model.base_id, recipe.model.license) == ("org/base", "mit")
    assert out.export_text() == "base id: org/base (from the Hub id)\n"


def test_an_unknown_base_id_leaves_none_and_warns_how_to_name_it(monkeypatch, tmp_path):
    recipe, out = recipe_of(tmp_path), console()
    identity(monkeypatch, BaseIdentity(None, "the source was not found"))
    runs.fill_base_identity(recipe, out)
    assert (recipe.model.base_id, recipe.model.license) == (None, None)
    assert out.export_text().replace("\n", " ") == (
        "warning: the base model's Hub id is unknown: the adapter will name the local path of its base; "
        'set [model] base_id = "OWNER/NAME" to share it ')


# ---------------------------------------------------------------------------------------------- opening the run dir


def test_a_new_run_dir_gets_the_resolved_recipe_and_a_running_status(monkeypatch, tmp_path):
    recipe = recipe_of(tmp_path)
    identity(monkeypatch, BaseIdentity("org/base", "x"))
    rundir, out = RunDir(recipe.run_dir), console()
    assert runs.open_run_dir(recipe, rundir, out, overwrite=False, resume=None, force=False) is None
    assert rundir.recipe_file.read_text(encoding="utf-8") == recipe_to_toml(recipe)
    assert rundir.raw_recipe()["model"]["base_id"] == "org/base"  # filled before the recipe is written
    assert rundir.read_status()["state"] == "running"
    assert "resuming" not in out.export_text()


@pytest.mark.parametrize("overwrite", [False, True])
def test_an_existing_run_dir_is_replaced_only_when_overwriting(monkeypatch, tmp_path, overwrite):
    recipe = recipe_of(tmp_path, base_id="o/b", license="mit")
    rundir = RunDir(recipe.run_dir)
    rundir.path.mkdir(parents=True)
    (rundir.path / "old.txt").write_text("old")
    if not overwrite:
        with pytest.raises(UserError, match="run directory already exists"):
            runs.open_run_dir(recipe, rundir, console(), overwrite=False, resume=None, force=False)
        return
    runs.open_run_dir(recipe, rundir, console(), overwrite=True, resume=None, force=False)
    assert not (rundir.path / "old.txt").exists() and rundir.recipe_file.is_file()


def test_resuming_continues_from_the_latest_checkpoint_and_says_so(tmp_path):
    recipe = recipe_of(tmp_path, base_id="o/b", license="mit")
    rundir, out = RunDir(recipe.run_dir), console()
    rundir.path.mkdir(parents=True)
    rundir.write_recipe(recipe_to_toml(recipe))
    (rundir.path / "metrics.jsonl").write_text("{}\n")  # kept: a resumed run dir is not recreated
    sealed(rundir, 2)
    sealed(rundir, 3)
    last = sealed(rundir, 4)
    assert runs.open_run_dir(recipe, rundir, out, overwrite=False, resume=True, force=False) == last
    assert out.export_text() == f"resuming from {last}\n"
    assert (rundir.path / "metrics.jsonl").is_file() and rundir.read_status()["state"] == "running"


def test_resuming_a_named_checkpoint_with_a_changed_recipe_needs_force(tmp_path):
    recipe = recipe_of(tmp_path, base_id="o/b", license="mit")
    rundir = RunDir(recipe.run_dir)
    rundir.path.mkdir(parents=True)
    rundir.write_recipe(recipe_to_toml(recipe_of(tmp_path, base_id="o/other", license="mit")))
    first = sealed(rundir, 2)
    sealed(rundir, 4)
    with pytest.raises(UserError, match="the recipe differs"):
        runs.open_run_dir(recipe, rundir, console(), overwrite=False, resume=str(first), force=False)
    assert runs.open_run_dir(recipe, rundir, console(), overwrite=False, resume=str(first), force=True) == first
    assert rundir.raw_recipe()["model"]["base_id"] == "o/b"  # the recipe it now continues with


# ---------------------------------------------------------------------------------------------- training's stops


class FakeTrainer:
    def __init__(self, step: int = 7, raise_=None, interrupt: StopOnInterrupt | None = None):
        self.state = SimpleNamespace(global_step=step)
        self.raise_, self.interrupt, self.asked = raise_, interrupt, []

    def train(self, resume_from_checkpoint=None):
        self.asked.append(resume_from_checkpoint)
        if self.interrupt is not None:
            self.interrupt.requested = True
        if self.raise_ is not None:
            raise self.raise_
        return "result"


@pytest.mark.parametrize("checkpoint", [None, "checkpoints/checkpoint-3"])
def test_training_resumes_from_the_checkpoint_and_returns_the_result(tmp_path, checkpoint):
    trainer, rundir = FakeTrainer(), RunDir(tmp_path)
    checkpoint = tmp_path / checkpoint if checkpoint else None
    assert runs.train_guarded(trainer, StopOnInterrupt(), checkpoint, rundir) == "result"
    assert trainer.asked == [str(checkpoint) if checkpoint else None]
    assert not rundir.status_file.exists()


def test_a_non_finite_stop_names_the_last_good_checkpoint_and_how_to_resume(tmp_path):
    rundir = RunDir(tmp_path)
    for step in (2, 5):
        sealed(rundir, step)
    last = sealed(rundir, 10)
    with pytest.raises(TrainingStopped) as info:
        runs.train_guarded(FakeTrainer(raise_=NonFiniteError(11, "loss")), StopOnInterrupt(), None, rundir)
    assert info.value.message == "training stopped: non-finite loss at step 11; the update was not applied"
    assert info.value.hint == (
        f"last good checkpoint: {last}. Resume from it with a lower learning rate: "
        "python -m peftsft run RECIPE --resume --force --set training.learning_rate=<lower>")
    assert info.value.exit_code == 3 and info.value.__cause__ is None and info.value.__suppress_context__
    status = rundir.read_status()
    assert (status["state"], status["reason"]) == ("stopped", "non-finite training: non-finite loss at step 11")


def test_a_non_finite_stop_without_checkpoints_says_to_lower_the_rate_and_start_again(tmp_path):
    with pytest.raises(TrainingStopped) as info:
        runs.train_guarded(FakeTrainer(raise_=NonFiniteError(1, "gradient")), StopOnInterrupt(), None,
                           RunDir(tmp_path))
    assert info.value.hint == (
        "lower [training] learning_rate (set save_steps to keep checkpoints) and run again with --overwrite")


def test_ctrl_c_stops_with_the_saved_checkpoint_and_exit_code_130(tmp_path):
    rundir, interrupt = RunDir(tmp_path), StopOnInterrupt()
    for step in (3, 6):
        sealed(rundir, step)
    last = sealed(rundir, 12)
    with pytest.raises(TrainingStopped) as info:
        runs.train_guarded(FakeTrainer(step=12, interrupt=interrupt), interrupt, last, rundir)
    assert info.value.message == f"interrupted at step 12; checkpoint saved: {last}"
    assert info.value.hint == "continue with: python -m peftsft run RECIPE --resume"
    assert info.value.exit_code == 130
    status = rundir.read_status()
    assert (status["state"], status["reason"]) == ("stopped", "interrupted (Ctrl-C) at step 12")


def test_ctrl_c_is_caught_only_while_training(tmp_path):
    import signal

    before = signal.getsignal(signal.SIGINT)
    seen = []

    class Watching(FakeTrainer):
        def train(self, resume_from_checkpoint=None):
            seen.append(signal.getsignal(signal.SIGINT))
            return super().train(resume_from_checkpoint)

    interrupt = StopOnInterrupt()
    runs.train_guarded(Watching(), interrupt, None, RunDir(tmp_path))
    assert seen == [interrupt._on_signal] and signal.getsignal(signal.SIGINT) == before


# ---------------------------------------------------------------------------------------------- memory


def test_peak_memory_on_cuda_is_torchs_peak_allocation(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *a: 12345.0)
    assert runs.peak_memory_bytes("cuda") == 12345 and isinstance(runs.peak_memory_bytes("cuda"), int)


@pytest.mark.parametrize("device", ["cpu", "mps"])
def test_peak_memory_elsewhere_is_this_processs_max_rss_in_bytes(monkeypatch, device):
    import resource

    asked = []
    monkeypatch.setattr(resource, "getrusage", lambda who: asked.append(who) or SimpleNamespace(ru_maxrss=3))
    assert runs.peak_memory_bytes(device) == 3072 and asked == [resource.RUSAGE_SELF]


# ---------------------------------------------------------------------------------------------- saving the adapter


class Saving:
    def __init__(self, log: list, name: str):
        self.log, self.name = log, name

    def save_pretrained(self, directory, **kwargs):
        self.log.append((self.name, directory, kwargs))
        if self.name == "tokenizer":
            return
        (directory / "README.md").write_text("peft's placeholder")
        (directory / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/local/base",
                                                                   "r": 4}))


def test_an_adapter_is_saved_as_safetensors_with_its_tokenizer_naming_the_public_base(tmp_path):
    log = []
    runs.save_adapter(Saving(log, "model"), Saving(log, "tokenizer"), tmp_path, base_id="org/base")
    assert log == [("model", tmp_path, {"safe_serialization": True}), ("tokenizer", tmp_path, {})]
    assert not (tmp_path / "README.md").exists()
    assert json.loads((tmp_path / "adapter_config.json").read_text())["base_model_name_or_path"] == "org/base"


def test_an_adapter_without_a_public_id_keeps_the_local_path(tmp_path):
    runs.save_adapter(Saving([], "model"), Saving([], "tokenizer"), tmp_path)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["base_model_name_or_path"] == "/local/base"
    assert not (tmp_path / "README.md").exists()


def test_saving_an_adapter_loaded_from_a_run_names_the_local_base_it_was_loaded_on(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    model = Saving([], "model")
    model.config = SimpleNamespace(name_or_path=str(tmp_path))
    model.peft_config = {"default": SimpleNamespace(base_model_name_or_path="org/base")}
    (tmp_path / "out").mkdir()
    runs.save_adapter(model, Saving([], "tokenizer"), tmp_path / "out")
    assert model.peft_config["default"].base_model_name_or_path == str(tmp_path)


def test_a_strategy_saves_the_model_its_own_way(tmp_path):
    log = []

    class Strategy:
        def save(self, model, directory):
            log.append(("strategy", model, directory))
            (directory / "adapter_config.json").write_text('{"base_model_name_or_path": "/local"}')

    model = Saving(log, "model")
    runs.save_adapter(model, Saving(log, "tokenizer"), tmp_path, Strategy(), base_id="org/base")
    assert log == [("strategy", model, tmp_path), ("tokenizer", tmp_path, {})]
    assert json.loads((tmp_path / "adapter_config.json").read_text())["base_model_name_or_path"] == "org/base"


def test_an_adapter_loaded_from_a_run_names_its_local_base_while_saving(tmp_path):
    local = tmp_path / "base"
    local.mkdir()
    (local / "config.json").write_text("{}")
    here = tmp_path / "here"
    here.mkdir()
    (here / "config.json").write_text("{}")
    configs = {"hub": SimpleNamespace(base_model_name_or_path="org/base"),
               "none": SimpleNamespace(base_model_name_or_path=None),
               "present": SimpleNamespace(base_model_name_or_path=str(here))}
    model = SimpleNamespace(config=SimpleNamespace(name_or_path=str(local)), peft_config=configs)
    runs._name_local_base(model)
    assert [c.base_model_name_or_path for c in configs.values()] == [str(local), str(local), str(here)]


def test_an_unnamed_base_is_named_even_where_the_working_folder_holds_a_model(tmp_path, monkeypatch):
    local = tmp_path / "base"
    local.mkdir()
    (local / "config.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.json").write_text("{}")  # "" + config.json is this file
    configs = {"none": SimpleNamespace(base_model_name_or_path=None),
               "empty": SimpleNamespace(base_model_name_or_path="")}
    runs._name_local_base(SimpleNamespace(config=SimpleNamespace(name_or_path=str(local)), peft_config=configs))
    assert [c.base_model_name_or_path for c in configs.values()] == [str(local), str(local)]


@pytest.mark.parametrize("local", ["", "missing", None])
def test_a_base_not_on_disk_is_left_as_named(tmp_path, local):
    configs = {"a": SimpleNamespace(base_model_name_or_path="org/base")}
    config = SimpleNamespace() if local is None else SimpleNamespace(name_or_path=local and str(tmp_path / local))
    runs._name_local_base(SimpleNamespace(config=config, peft_config=configs))
    assert configs["a"].base_model_name_or_path == "org/base"


def test_a_local_base_folder_without_a_config_is_not_a_base(tmp_path):
    (tmp_path / "base").mkdir()
    configs = {"a": SimpleNamespace(base_model_name_or_path="org/base")}
    runs._name_local_base(SimpleNamespace(config=SimpleNamespace(name_or_path=str(tmp_path / "base")),
                                          peft_config=configs))
    assert configs["a"].base_model_name_or_path == "org/base"


def test_a_model_without_peft_configs_is_fine(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    runs._name_local_base(SimpleNamespace(config=SimpleNamespace(name_or_path=str(tmp_path))))


def test_naming_the_base_rewrites_the_adapter_config_sorted_and_indented(tmp_path):
    (tmp_path / "adapter_config.json").write_text('{"r": 4, "base_model_name_or_path": "/x", "alpha": 8}')
    runs.name_base_model(tmp_path, "org/base")
    assert (tmp_path / "adapter_config.json").read_text(encoding="utf-8") == (
        '{\n  "alpha": 8,\n  "base_model_name_or_path": "org/base",\n  "r": 4\n}\n')


def test_naming_the_base_of_a_folder_without_adapter_config_writes_nothing(tmp_path):
    runs.name_base_model(tmp_path, "org/base")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------- summary.json


def summary_trainer(step: int, max_steps: int, history: list, tokens: int = 1000):
    state = SimpleNamespace(log_history=history, num_input_tokens_seen=tokens, global_step=step, max_steps=max_steps,
                            best_metric=0.5, best_model_checkpoint="runs/x/checkpoints/checkpoint-4")
    return SimpleNamespace(state=state)


def test_the_summary_holds_every_shared_key(monkeypatch, tmp_path):
    monkeypatch.setattr(runs, "peak_memory_bytes", lambda device: {"cpu": 2048}[device])
    monkeypatch.setattr(runs, "versions", lambda: {"python": "3"})
    recipe = recipe_of(tmp_path, base_id="org/base")
    history = [{"loss": 2.5, "step": 1}, {"eval_loss": 9.0}, {"loss": 1.5, "step": 2}, {"loss": 1.25, "step": 3}]
    stats = SimpleNamespace(as_dict=lambda: {"rows": 8})
    summary = runs.run_summary(
        recipe, summary_trainer(3, 3, history), SimpleNamespace(training_loss=1.75), {"eval_loss": 1.1, "x": 2},
        task="chat", model_spec="some/model", strategy_name="lora", params={"trainable": 10, "total": 100},
        device="cpu", train_seconds=12.345678, stats=stats)
    assert summary == {
        "run_dir": str(tmp_path / "run"), "task": "chat", "model": "some/model", "base_id": "org/base",
        "strategy": "lora", "trainable": 10, "total": 100, "device": "cpu", "steps": 3, "train_seconds": 12.35,
        "train_tokens": 1000, "train_tokens_per_s": 81.0, "peak_memory_bytes": 2048, "first_loss": 2.5,
        "last_loss": 1.25, "train_loss": 1.75, "eval_loss": 1.1, "best_metric": 0.5,
        "best_checkpoint": "runs/x/checkpoints/checkpoint-4", "stopped_early": False, "data": {"rows": 8},
        "versions": {"python": "3"},
    }
    assert list(summary)[:6] == ["run_dir", "task", "model", "base_id", "strategy", "trainable"]


def test_a_summary_of_a_run_stopped_early_without_losses_or_eval(monkeypatch, tmp_path):
    monkeypatch.setattr(runs, "peak_memory_bytes", lambda device: 1)
    monkeypatch.setattr(runs, "versions", lambda: {})
    summary = runs.run_summary(
        recipe_of(tmp_path), summary_trainer(2, 3, [{"eval_loss": 1.0}], tokens=3), SimpleNamespace(training_loss=0.0),
        {}, task="chat", model_spec="m", strategy_name="s", params={}, device="cpu", train_seconds=0.0,
        stats=SimpleNamespace(as_dict=dict))
    assert (summary["first_loss"], summary["last_loss"], summary["eval_loss"]) == (None, None, None)
    assert summary["stopped_early"] is True and summary["train_seconds"] == 0.0
    assert summary["train_tokens_per_s"] == 3e9  # no time measured: a huge rate, not a division by zero


def test_a_summary_rate_is_rounded_to_two_decimals(monkeypatch, tmp_path):
    monkeypatch.setattr(runs, "peak_memory_bytes", lambda device: 1)
    monkeypatch.setattr(runs, "versions", lambda: {})
    summary = runs.run_summary(
        recipe_of(tmp_path), summary_trainer(4, 3, [], tokens=10), SimpleNamespace(training_loss=0.0),
        {}, task="chat", model_spec="m", strategy_name="s", params={}, device="cpu", train_seconds=3.0,
        stats=SimpleNamespace(as_dict=dict))
    assert summary["train_tokens_per_s"] == 3.33 and summary["stopped_early"] is False


# ---------------------------------------------------------------------------------------------- resuming


def test_resuming_a_folder_that_is_not_a_complete_checkpoint_says_which_to_pick(tmp_path):
    from peftsft.training.resume import checkpoint_to_resume

    rundir = RunDir(tmp_path / "run")
    (tmp_path / "checkpoint-3").mkdir()
    with pytest.raises(UserError) as info:
        checkpoint_to_resume(rundir, str(tmp_path / "checkpoint-3"))
    assert info.value.message == (
        f"--resume {tmp_path / 'checkpoint-3'}: not a complete checkpoint (no {CHECKPOINT_SEAL})")
    assert info.value.hint == f"pick one of {tmp_path / 'run' / 'checkpoints'}/checkpoint-N"


def test_resuming_a_sealed_folder_outside_the_run_takes_it_as_named(tmp_path):
    from peftsft.training.resume import checkpoint_to_resume

    folder = tmp_path / "elsewhere"
    folder.mkdir()
    (folder / CHECKPOINT_SEAL).write_text("1")
    assert checkpoint_to_resume(RunDir(tmp_path / "missing"), str(folder)) == folder


def test_resuming_a_run_that_does_not_exist_says_to_run_first(tmp_path):
    from peftsft.training.resume import checkpoint_to_resume

    with pytest.raises(UserError) as info:
        checkpoint_to_resume(RunDir(tmp_path / "run"), True)
    assert info.value.message == f"--resume: no run to resume at {tmp_path / 'run'}"
    assert info.value.hint == "run without --resume first"


def test_resuming_a_run_without_complete_checkpoints_removes_the_partial_ones_and_says_how_to_get_some(tmp_path):
    from peftsft.training.resume import checkpoint_to_resume

    rundir = RunDir(tmp_path)
    partial = rundir.checkpoints_dir / "checkpoint-5"
    (partial / "sub").mkdir(parents=True)  # a folder inside: removed whole
    (partial / "sub" / "weights").write_text("half")
    with pytest.raises(UserError) as info:
        checkpoint_to_resume(rundir, True)
    assert info.value.message == f"--resume: {tmp_path} has no checkpoint"
    assert info.value.hint == (
        "set [training] save_steps to checkpoint during training; or start again with --overwrite")
    assert not partial.exists()


def test_recipe_differences_are_dotted_keys_in_order_with_both_values():
    from peftsft.training.resume import recipe_differences

    old = {"task": "chat", "training": {"learning_rate": 0.1, "seed": 1, "opt": {"b": 1}}, "gone": 1, "same": [1]}
    new = {"task": "chat", "training": {"learning_rate": 0.2, "seed": 1, "opt": {"b": 2}}, "added": "x", "same": [1]}
    assert recipe_differences(old, new) == [
        "added: None → 'x'", "gone: 1 → None", "training.learning_rate: 0.1 → 0.2", "training.opt.b: 1 → 2"]
    assert recipe_differences({"a": {"b": 1}}, {"a": 1}, "p.") == ["p.a: {'b': 1} → 1"]  # a table became a value


def _toml(data: dict) -> str:
    lines = []
    for section, values in data.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


OLD = {"training": {"learning_rate": 0.1, "logging_steps": 1}, "run": {"sample_prompts": ["a"]},
       "export": {"formats": ["gguf"]}, "data": {"enforce_contract": True}}


def test_a_resume_may_change_what_does_not_change_learning(tmp_path):
    from peftsft.training.resume import check_same_recipe

    rundir = RunDir(tmp_path)
    rundir.write_recipe(_toml(OLD))
    new = {"training": {"learning_rate": 0.1, "logging_steps": 5}, "run": {"sample_prompts": ["b"],
           "sample_max_new_tokens": 9}, "export": {"formats": []}, "data": {"enforce_contract": False}}
    check_same_recipe(rundir, _toml(new), force=False)


def test_a_resume_with_a_changed_recipe_lists_the_changes_unless_forced(tmp_path):
    from peftsft.training.resume import check_same_recipe

    rundir = RunDir(tmp_path)
    rundir.write_recipe(_toml(OLD))
    new = {**OLD, "training": {"learning_rate": 0.2, "logging_steps": 3}, "data": {"enforce_contract": True,
           "replay": 0.5}}
    with pytest.raises(UserError) as info:
        check_same_recipe(rundir, _toml(new), force=False)
    assert info.value.message == "--resume: the recipe differs from the one this run was trained with"
    assert info.value.problems == ["data.replay: None → 0.5", "training.learning_rate: 0.1 → 0.2"]
    assert info.value.hint == "resume with the same recipe, or pass --force to resume with these changes"
    check_same_recipe(rundir, _toml(new), force=True)


def test_a_resume_without_the_runs_recipe_cannot_tell_what_changed(tmp_path):
    from peftsft.training.resume import check_same_recipe

    rundir = RunDir(tmp_path)
    with pytest.raises(UserError) as info:
        check_same_recipe(rundir, _toml(OLD), force=True)
    assert info.value.message == (
        f"--resume: {tmp_path / 'recipe.resolved.toml'} is missing; cannot tell what the run was trained with")
