"""peftsft.training.sharding, .distributed and .skeleton's small pieces called directly: FSDP set up or refused, the
sharded state gathered, what ran named in summary.json, results handed from the main process to all, the adapter
turned off — no process group, no model trained."""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

import pytest
import torch
from rich.console import Console

from peftsft.core.errors import UserError
from peftsft.core.launch import Launch
from peftsft.training import distributed, sharding, skeleton


def fsdp_trainer(enabled: bool = True, version: int | None = 2, policy="accelerate's"):
    plugin = None if version is None else SimpleNamespace(fsdp_version=version, mixed_precision_policy=policy)
    state = SimpleNamespace(fsdp_plugin=plugin)
    return SimpleNamespace(is_fsdp_enabled=enabled, accelerator=SimpleNamespace(state=state))


# ---------------------------------------------------------------------------------------------- FSDP set up


@pytest.mark.parametrize("engine", ["single", "ddp", "deepspeed"])
def test_a_launch_without_fsdp_builds_the_trainer_as_it_is(monkeypatch, engine):
    monkeypatch.setattr(sharding, "fsdp_on_cpu_processes", lambda: pytest.fail("not FSDP"))
    trainer = object()
    assert sharding.trainer_for_launch(lambda: trainer, "cpu", Launch(engine, 2)) is trainer


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_fsdp_engages_on_cpu_processes_first_and_reduces_in_fp32(monkeypatch, device):
    order = []
    monkeypatch.setattr(sharding, "fsdp_on_cpu_processes", lambda: order.append("cpu processes"))
    trainer = fsdp_trainer()
    built = sharding.trainer_for_launch(lambda: order.append("make") or trainer, device, Launch("fsdp", 2, 2))
    assert built is trainer
    assert order == (["cpu processes", "make"] if device == "cpu" else ["make"])
    policy = trainer.accelerator.state.fsdp_plugin.mixed_precision_policy
    assert policy.param_dtype is None and policy.reduce_dtype == torch.float32


def test_fsdp1_keeps_accelerates_policy(monkeypatch):
    monkeypatch.setattr(sharding, "fsdp_on_cpu_processes", lambda: None)
    trainer = fsdp_trainer(version=1)
    sharding.trainer_for_launch(lambda: trainer, "cuda", Launch("fsdp", 2, 1))
    assert trainer.accelerator.state.fsdp_plugin.mixed_precision_policy == "accelerate's"


@pytest.mark.parametrize("enabled, version", [(False, 2), (True, None), (False, None)])
def test_an_fsdp_launch_the_trainer_did_not_engage_fails_loudly(monkeypatch, enabled, version):
    monkeypatch.setattr(sharding, "fsdp_on_cpu_processes", lambda: None)
    with pytest.raises(UserError) as info:
        sharding.trainer_for_launch(lambda: fsdp_trainer(enabled, version), "cpu", Launch("fsdp", 3, 2))
    assert info.value.message == "the launch asked for FSDP2 over 3 processes, but the trainer did not enable FSDP"
    assert info.value.hint == "launch with recipes/accelerate/ddp-cpu.yaml (or ddp.yaml on GPUs) instead"


def test_a_trainer_whose_accelerator_has_no_fsdp_plugin_did_not_engage(monkeypatch):
    monkeypatch.setattr(sharding, "fsdp_on_cpu_processes", lambda: None)
    trainer = SimpleNamespace(is_fsdp_enabled=True, accelerator=SimpleNamespace(state=SimpleNamespace()))
    with pytest.raises(UserError, match="the trainer did not enable FSDP"):
        sharding.trainer_for_launch(lambda: trainer, "cpu", Launch("fsdp", 2, 2))


def test_the_launch_defaults_to_this_processs_own(monkeypatch):
    monkeypatch.setattr(sharding, "current_launch", lambda: Launch("fsdp", 2, 2))
    monkeypatch.setattr(sharding, "fsdp_on_cpu_processes", lambda: None)
    with pytest.raises(UserError, match="FSDP2 over 2 processes"):
        sharding.trainer_for_launch(lambda: fsdp_trainer(enabled=False), "cpu")


# ---------------------------------------------------------------------------------------------- sharded state


def fsdp_module(module: torch.nn.Module) -> torch.nn.Module:
    """`module` as fully_shard leaves it: an instance of a class deriving from FSDPModule (no process group)."""
    from torch.distributed.fsdp import FSDPModule

    module.__class__ = type(f"FSDP{type(module).__name__}", (FSDPModule, type(module)), {})
    return module


@pytest.fixture
def zero3(monkeypatch):
    on = []
    monkeypatch.setattr(sharding, "deepspeed_zero3_enabled", lambda: bool(on))
    return on


def test_a_model_is_sharded_with_an_fsdp_module_anywhere_or_under_zero3(zero3):
    plain = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Sequential(torch.nn.Linear(2, 2)))
    assert sharding.is_sharded(plain) is False
    nested = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Sequential(fsdp_module(torch.nn.Linear(2, 2))))
    assert sharding.is_sharded(nested) is True
    zero3.append(True)
    assert sharding.is_sharded(plain) is True


def test_a_model_that_is_not_sharded_has_no_gathered_state(zero3):
    assert sharding.gathered_state(torch.nn.Linear(2, 2)) is None


@pytest.mark.parametrize("adapter", [True, False])
def test_an_fsdp_model_gathers_its_whole_state_to_the_cpu_leaving_out_a_frozen_base(monkeypatch, zero3, adapter):
    from torch.distributed.checkpoint import state_dict

    asked = []
    monkeypatch.setattr(state_dict, "get_model_state_dict",
                        lambda model, options: asked.append((model, options)) or {"w": 1})
    model = torch.nn.Sequential(fsdp_module(torch.nn.Linear(2, 2)))
    if adapter:
        model.peft_config = {}
    assert sharding.gathered_state(model) == {"w": 1}
    (got, options), = asked
    assert got is model
    assert (options.full_state_dict, options.cpu_offload, options.ignore_frozen_params) == (True, True, adapter)


def test_an_fsdp_state_empty_on_this_process_is_none(monkeypatch, zero3):
    from torch.distributed.checkpoint import state_dict

    monkeypatch.setattr(state_dict, "get_model_state_dict", lambda model, options: {})
    assert sharding.gathered_state(torch.nn.Sequential(fsdp_module(torch.nn.Linear(2, 2)))) is None


@pytest.mark.parametrize("adapter", [True, False])
def test_a_zero3_model_is_gathered_by_deepspeed(monkeypatch, zero3, adapter):
    zero3.append(True)
    asked = []
    monkeypatch.setattr(sharding, "_gathered_zero3", lambda model, adapter: asked.append((model, adapter)) or {"z": 2})
    model = torch.nn.Linear(2, 2)
    if adapter:
        model.peft_config = {}
    assert sharding.gathered_state(model) == {"z": 2} and asked == [(model, adapter)]


def test_saving_from_a_gathered_state_answers_it_and_restores_the_method_after():
    model = torch.nn.Linear(2, 1)
    own = model.state_dict()
    with sharding.saving_from(model, {"weight": "whole"}):
        assert model.state_dict() == {"weight": "whole"} and model.state_dict(prefix="x") == {"weight": "whole"}
        copy = model.state_dict()
        copy["more"] = 1
        assert model.state_dict() == {"weight": "whole"}  # each call a fresh dict
    assert list(model.state_dict()) == list(own) and "state_dict" not in vars(model)


def test_saving_from_a_gathered_state_restores_the_method_after_an_error():
    model = torch.nn.Linear(2, 1)
    with pytest.raises(RuntimeError), sharding.saving_from(model, {"weight": 1}):
        raise RuntimeError
    assert "state_dict" not in vars(model)


def test_saving_without_a_gathered_state_leaves_the_model_alone():
    model = torch.nn.Linear(2, 1)
    with sharding.saving_from(model, None):
        assert "state_dict" not in vars(model) and list(model.state_dict()) == ["weight", "bias"]


# ---------------------------------------------------------------------------------------------- what ran


def engine_trainer(fsdp=False, plugin=None, deepspeed=False, stage=None, processes=1):
    state = SimpleNamespace(deepspeed_plugin=SimpleNamespace(zero_stage=stage))
    if plugin is not None:
        state.fsdp_plugin = SimpleNamespace(fsdp_version=plugin)
    return SimpleNamespace(is_fsdp_enabled=fsdp, is_deepspeed_enabled=deepspeed,
                           accelerator=SimpleNamespace(state=state, num_processes=processes))


@pytest.mark.parametrize("trainer, name", [
    (engine_trainer(fsdp=True, plugin=2, processes=2), "fsdp2"),
    (engine_trainer(fsdp=True, plugin=1, processes=2), "fsdp1"),
    (engine_trainer(fsdp=True, processes=2), "ddp"),  # enabled, no plugin: not FSDP
    (engine_trainer(plugin=2, processes=2), "ddp"),  # a plugin, not enabled
    (engine_trainer(deepspeed=True, stage=2, processes=2), "deepspeed-zero2"),
    (engine_trainer(deepspeed=True, stage=3, processes=1), "deepspeed-zero3"),
    (engine_trainer(processes=2), "ddp"),
    (engine_trainer(processes=1), "single"),
])
def test_the_engine_names_what_ran(trainer, name):
    assert sharding.engine_summary(trainer) == name


# ---------------------------------------------------------------------------------------------- several processes


def test_the_process_state_is_accelerates_told_about_cpu_processes(monkeypatch):
    import accelerate

    asked = []
    monkeypatch.setattr(accelerate, "PartialState", lambda **kwargs: asked.append(kwargs) or "state")
    assert distributed.process_state("cpu") == "state" and distributed.process_state("cuda") == "state"
    assert asked == [{"cpu": True}, {"cpu": False}]


@pytest.mark.parametrize("main", [True, False])
def test_only_the_main_process_talks(monkeypatch, main):
    monkeypatch.setattr(distributed, "is_main_process", lambda: main)
    console = Console()
    got = distributed.console_for(None, console)
    assert (got is console) == main and got.quiet is (not main)


def test_one_process_runs_the_function_itself(monkeypatch):
    monkeypatch.setattr(distributed, "is_main_process", lambda: pytest.fail("no need to ask"))
    assert distributed.on_main(SimpleNamespace(num_processes=1), lambda: 42) == 42


@pytest.fixture
def broadcast(monkeypatch):
    """accelerate's broadcast_object_list: the main process's box (`sent`) arrives on this process."""
    from accelerate import utils

    calls, sent = [], {}

    def broadcast_object_list(box, from_process):
        calls.append((list(box), from_process))
        box[0] = sent.get("box", box[0])

    monkeypatch.setattr(utils, "broadcast_object_list", broadcast_object_list)
    return SimpleNamespace(calls=calls, sent=sent)


def test_the_main_process_hands_its_result_to_all(monkeypatch, broadcast):
    monkeypatch.setattr(distributed, "is_main_process", lambda: True)
    assert distributed.on_main(SimpleNamespace(num_processes=2), lambda: {"a": 1}) == {"a": 1}
    assert broadcast.calls == [([("ok", {"a": 1})], 0)]


def test_the_main_processs_error_is_raised_on_it_after_the_broadcast(monkeypatch, broadcast):
    monkeypatch.setattr(distributed, "is_main_process", lambda: True)

    def fail():
        raise UserError("bad recipe")

    with pytest.raises(UserError, match="bad recipe"):
        distributed.on_main(SimpleNamespace(num_processes=2), fail)
    (box, source), = broadcast.calls
    assert box[0][0] == "error" and isinstance(box[0][1], UserError) and source == 0


def test_another_process_runs_nothing_and_takes_the_main_ones_result_or_error(monkeypatch, broadcast):
    monkeypatch.setattr(distributed, "is_main_process", lambda: False)
    broadcast.sent["box"] = ("ok", "from main")
    assert distributed.on_main(SimpleNamespace(num_processes=2), lambda: pytest.fail("main only")) == "from main"
    assert broadcast.calls == [([None], 0)]
    broadcast.sent["box"] = ("error", UserError("on main"))
    with pytest.raises(UserError, match="on main"):
        distributed.on_main(SimpleNamespace(num_processes=4), lambda: pytest.fail("main only"))


# ---------------------------------------------------------------------------------------------- skeleton pieces


def test_an_adapter_is_turned_off_by_peft_and_a_full_model_answers_as_it_is():
    off = contextlib.nullcontext("peft's")
    assert skeleton.adapter_off(SimpleNamespace(disable_adapter=lambda: off)) is off
    with skeleton.adapter_off(SimpleNamespace()) as got:
        assert got is None


def prepared(measure=None, eval_ds="eval", model=None):
    return skeleton.Prepared(model=model or torch.nn.Linear(2, 2), tokenizer=None, train_ds=None, eval_ds=eval_ds,
                             stats=None, source=None, strategy=None, params={}, measure=measure)


def test_task_evaluation_needs_eval_data_and_something_to_measure(monkeypatch):
    checked = []
    monkeypatch.setattr(skeleton, "check_measurable", lambda recipe, names: checked.append((recipe, names)))
    measure = SimpleNamespace(names=["exact_match"], measure=lambda: None)
    levers = SimpleNamespace(precision="bf16")
    assert skeleton.task_evaluation("recipe", prepared(measure=None), levers, None) == []
    assert skeleton.task_evaluation("recipe", prepared(measure, eval_ds=None), levers, None) == []
    assert checked == [("recipe", []), ("recipe", ["exact_match"])]


@pytest.mark.parametrize("sharded", [True, False])
def test_task_evaluation_measures_everywhere_on_a_sharded_model_and_on_the_main_process_else(monkeypatch, sharded):
    monkeypatch.setattr(skeleton, "check_measurable", lambda recipe, names: None)
    model = torch.nn.Linear(2, 2)
    monkeypatch.setattr(skeleton, "is_sharded", lambda asked: sharded and asked is model)
    monkeypatch.setattr(skeleton, "on_main", lambda state, fn: ("main", state, fn()))
    made = []
    monkeypatch.setattr(skeleton, "EvaluateTask", lambda *args: made.append(args) or "callback")
    measure = SimpleNamespace(names=["bleu"], measure="measure-fn")
    levers = SimpleNamespace(precision="fp32")
    assert skeleton.task_evaluation("recipe", prepared(measure, model=model), levers, "state") == [
        "callback"]
    (fn, precision, everywhere), = made
    assert (fn, precision) == ("measure-fn", "fp32")
    assert everywhere(lambda: 5) == (5 if sharded else ("main", "state", 5))


# ---------------------------------------------------------------------------------------------- the skeleton's run


class Named:
    """A callback standing in for one of the skeleton's own, remembering how it was made."""

    def __init__(self, name, *args, **kwargs):
        self.name, self.args, self.kwargs = name, args, kwargs

    def __repr__(self):
        return self.name


class FakeTask:
    name = "chat"

    def __init__(self, log: list, eval_ds="eval"):
        self.log, self.eval_ds = log, eval_ds
        self.model = torch.nn.Linear(2, 2)

    def setup(self, session):
        self.log.append(("setup", session))
        self.prepared = skeleton.Prepared(
            model=self.model, tokenizer="tok", train_ds="train", eval_ds=self.eval_ds, stats="stats",
            source=SimpleNamespace(spec="some/model"), strategy=SimpleNamespace(name="lora"), params={"p": 1},
            longest_sample=77)
        return self.prepared

    def before_training(self, session, prepared, levers):
        self.log.append(("before", session, prepared, levers))

    def trainer(self, session, prepared, levers, callbacks):
        self.log.append(("trainer", session, prepared, levers, list(callbacks)))
        self.built = SimpleNamespace(evaluate=lambda: {"eval_loss": 0.5, "eval_note": "text", "epoch": 2},
                                     args=SimpleNamespace(train_batch_size=4, gradient_accumulation_steps=3))
        return self.built

    def score(self, session, prepared, levers):
        self.log.append(("score", session, prepared, levers))
        return {"scored": 1}

    def save(self, session, prepared, directory):
        self.log.append(("save", session, prepared, directory.name.startswith(".adapter-")))
        (directory / "adapter_model.safetensors").write_text("weights")

    def finish(self, session, prepared, trainer, levers, train_seconds, scores):
        self.log.append(("finish", session, prepared, trainer, levers, train_seconds, scores))
        return {"task_key": 9}

    def report(self, session, prepared, summary):
        self.log.append(("report", session, prepared, dict(summary)))


@pytest.fixture
def run(monkeypatch, tmp_path):
    """skeleton.train with every collaborator faked and recording into `log`; returns (call it, log, fakes)."""
    import peftsft.models
    import transformers

    log = []
    state = SimpleNamespace(num_processes=2, wait_for_everyone=lambda: log.append("wait"))
    quiet_console = Console(record=True, width=300, color_system=None)
    levers = SimpleNamespace(describe=lambda: "bf16, compiled", as_dict=lambda: {"lever": 1}, precision="bf16")
    evaluate = SimpleNamespace(bind=lambda trainer: log.append(("bind", trainer)))
    fakes = SimpleNamespace(state=state, console=quiet_console, levers=levers, evaluate=evaluate, sharded=False,
                            checkpoint=None, rate=SimpleNamespace(elapsed=12.5), evaluations=[evaluate])
    fakes.metrics_records = [{"loss": 1.0}]

    def metrics_log(path, rate, keep_until_step):
        fakes.metrics = Named("metrics", path, rate, keep_until_step=keep_until_step)
        fakes.metrics.records = fakes.metrics_records
        return fakes.metrics

    @contextlib.contextmanager
    def tracking(recipe, rundir, main):
        log.append(("tracking", recipe, rundir, main))
        yield
        log.append("tracking closed")

    @contextlib.contextmanager
    def training(levers_, model, build):
        log.append(("training", levers_, model))
        yield build()
        log.append("training closed")

    @contextlib.contextmanager
    def saving_from(model, adapter_state):
        log.append(("saving from", model, adapter_state))
        yield

    def open_run_dir(*args):
        log.append(("open", *args))
        return fakes.checkpoint

    monkeypatch.setattr(peftsft.models, "pick_device", lambda wanted: log.append(("device", wanted)) or "cpu")
    monkeypatch.setattr(transformers, "set_seed", lambda seed: log.append(("seed", seed)))
    monkeypatch.setattr(skeleton, "process_state", lambda device: log.append(("state", device)) or state)
    monkeypatch.setattr(skeleton, "gradient_accumulation", lambda training_, n: log.append(("accumulation", training_.seed, n)))
    monkeypatch.setattr(skeleton, "console_for", lambda state_, console: state_ is state and console.quiet
                        and quiet_console)
    monkeypatch.setattr(skeleton, "open_run_dir", open_run_dir)
    monkeypatch.setattr(skeleton, "decide_levers", lambda *args: log.append(("levers", *args)) or levers)
    monkeypatch.setattr(skeleton, "memory_available", lambda device: log.append(("available", device)) or 2**34)
    monkeypatch.setattr(skeleton, "TokenRate", lambda: fakes.rate)
    monkeypatch.setattr(skeleton, "MetricsLog", metrics_log)
    monkeypatch.setattr(skeleton, "StopOnInterrupt", lambda: Named("interrupt"))
    monkeypatch.setattr(skeleton, "RichProgress", lambda console, rate: Named("progress", console, rate))
    monkeypatch.setattr(skeleton, "NonFiniteGuard", lambda: Named("guard"))
    monkeypatch.setattr(skeleton, "SealCheckpoints", lambda rundir: Named("seal", rundir))
    monkeypatch.setattr(skeleton, "task_evaluation",
                        lambda *args: log.append(("task evaluation", *args)) or fakes.evaluations)
    monkeypatch.setattr(skeleton, "is_main_process", lambda: True)
    monkeypatch.setattr(skeleton, "tracking", tracking)
    monkeypatch.setattr(skeleton, "training", training)
    monkeypatch.setattr(skeleton, "train_guarded", lambda *args: log.append(("train", *args)) or "result")
    monkeypatch.setattr(skeleton, "after_training",
                        lambda *args: log.append(("after", *args)) or ({"measured": 1}, {"best": 2}))
    monkeypatch.setattr(skeleton, "release_training_memory", lambda *args: log.append(("release", *args)))
    monkeypatch.setattr(skeleton, "is_sharded", lambda model: fakes.sharded and isinstance(model, torch.nn.Linear))
    monkeypatch.setattr(skeleton, "gathered_state", lambda model: log.append(("gather", model)) or "gathered")
    monkeypatch.setattr(skeleton, "saving_from", saving_from)
    monkeypatch.setattr(skeleton, "on_main", lambda state_, fn: log.append(("on main", state_)) or fn())
    monkeypatch.setattr(skeleton, "plot_loss", lambda records, path: log.append(("plot", records, path)))
    monkeypatch.setattr(skeleton, "run_summary", lambda *args, **kwargs: {"args": args, "kwargs": kwargs})
    monkeypatch.setattr(skeleton, "engine_summary", lambda trainer: trainer.args and "ddp")

    from peftsft.core.config import Recipe

    def call(task, **kwargs):
        recipe = Recipe.model_validate({
            "data": {"datasets": [{"path": "train.jsonl"}]}, "run": {"output_dir": str(tmp_path), "name": "run"},
            "training": {"device": "cpu", "seed": 1234}, "model": kwargs.pop("model", {})})
        fakes.recipe = recipe
        return skeleton.train(task, recipe, Console(quiet=True), **kwargs)

    return call, log, fakes


def test_a_run_goes_through_every_step_in_order(run, tmp_path):
    from peftsft.core.rundir import RunDir

    call, log, fakes = run
    task = FakeTask([])
    task.log = log
    summary = call(task, overwrite=True, resume=None, force=True, callbacks=["pruner"])
    recipe, rundir, prepared = fakes.recipe, RunDir(tmp_path / "run"), task.prepared
    session = skeleton.Session(recipe, fakes.console, "cpu", fakes.state, rundir, None)
    interrupt = next(entry for entry in log if entry[0] == "train")[2]
    callbacks = next(entry for entry in log if entry[0] == "trainer")[4]
    assert log[:7] == [("device", "cpu"), ("state", "cpu"), ("accumulation", 1234, 2), ("on main", fakes.state),
                       ("open", recipe, rundir, fakes.console, True, None, True), "wait", ("seed", 1234)]
    assert log[7:] == [
        ("available", "cpu"),  # before the model loads, as `peftsft plan` sees it
        ("setup", session),
        ("levers", recipe, "cpu", task.model, 77, 2**34),
        ("before", session, prepared, fakes.levers),
        ("task evaluation", recipe, prepared, fakes.levers, fakes.state),
        ("tracking", recipe, rundir, True),
        ("training", fakes.levers, task.model),
        ("trainer", session, prepared, fakes.levers,
         [fakes.metrics, fakes.evaluate, callbacks[2], callbacks[3], interrupt, callbacks[5], "pruner"]),
        ("bind", task.built),
        ("train", task.built, interrupt, None, rundir),
        ("after", recipe, fakes.evaluate, task.built, 12.5),
        "training closed",
        "tracking closed",
        ("release", task.built, task.model),
        ("gather", task.model),
        ("on main", fakes.state),
        ("score", session, prepared, fakes.levers),
        ("on main", fakes.state),
        ("saving from", task.model, "gathered"),
        ("save", session, prepared, True),
        ("finish", session, prepared, task.built, fakes.levers, 12.5, {"scored": 1}),
        ("plot", [{"loss": 1.0}], rundir.loss_plot),
        ("report", session, prepared, summary),
        "wait",
    ]
    assert [repr(c) for c in callbacks[2:6]] == ["progress", "guard", "interrupt", "seal"]
    assert callbacks[2].args == (fakes.console, fakes.rate) and callbacks[5].args == (rundir,)
    assert fakes.metrics.args == (rundir.metrics_file, fakes.rate) and fakes.metrics.kwargs == {"keep_until_step": None}
    assert (rundir.adapter_dir / "adapter_model.safetensors").read_text() == "weights"
    assert fakes.console.export_text() == "speed: bf16, compiled\n"
    assert summary == {
        "args": (recipe, task.built, "result", {"eval_loss": 0.5, "eval_note": "text", "epoch": 2}),
        "kwargs": {"task": "chat", "model_spec": "some/model", "strategy_name": "lora", "params": {"p": 1},
                   "device": "cpu", "train_seconds": 12.5, "stats": "stats"},
        "world_size": 2, "global_batch_size": 24, "engine": "ddp", "levers": {"lever": 1}, "best": {"best": 2},
        "eval": {"loss": 0.5, "epoch": 2}, "task_metrics": {"measured": 1}, "task_key": 9,
    }
    import json

    assert json.loads(rundir.summary_file.read_text())["global_batch_size"] == 24


def test_a_resumed_run_keeps_its_metrics_until_the_checkpoints_step(run, tmp_path):
    call, log, fakes = run
    fakes.checkpoint = tmp_path / "run" / "checkpoints" / "checkpoint-40"
    fakes.evaluations = []
    call(FakeTask(log, eval_ds=None), resume=True)
    assert fakes.metrics.kwargs == {"keep_until_step": 40}
    trained = next(entry for entry in log if entry[0] == "train")
    assert trained[3] == fakes.checkpoint and log[8][1].checkpoint == fakes.checkpoint  # the session's too
    assert ("after", fakes.recipe, None, trained[1], 12.5) in log  # no task evaluation: no callback
    assert not any(entry[0] == "bind" for entry in log if isinstance(entry, tuple))
    opened = next(entry for entry in log if entry[0] == "open")
    assert opened[4:] == (False, True, False)  # overwrite, resume, force


def test_a_run_without_eval_data_reports_no_eval_metrics(run):
    call, log, fakes = run
    summary = call(FakeTask(log, eval_ds=None))
    assert summary["eval"] == {} and summary["args"][3] == {}


def test_a_sharded_model_is_scored_on_every_process(run):
    call, log, fakes = run
    fakes.sharded = True
    call(FakeTask(log))
    scored = next(i for i, entry in enumerate(log) if entry[0] == "score")
    assert log[scored - 1][0] == "gather" and log[scored + 1] == ("on main", fakes.state)  # only finish on main


def test_a_run_that_trusts_remote_code_warns(run):
    call, log, fakes = run
    call(FakeTask(log), model={"trust_remote_code": True})
    assert fakes.console.export_text() == (
        "warning: trust_remote_code = true: code shipped with the model will run\nspeed: bf16, compiled\n")


def test_training_memory_is_released_before_scoring():
    model = torch.nn.Linear(2, 1)
    model(torch.ones(1, 2)).sum().backward()
    freed = []
    trainer = SimpleNamespace(accelerator=SimpleNamespace(free_memory=lambda: freed.append(True)), optimizer="adam",
                              lr_scheduler="cosine")
    skeleton.release_training_memory(trainer, model)
    assert model.weight.grad is None and model.bias.grad is None and freed == [True]
    assert trainer.optimizer is None and trainer.lr_scheduler is None
