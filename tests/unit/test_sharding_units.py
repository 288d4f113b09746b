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
