"""peftsft.training's small pieces called directly: the forgetting warning's wording, the general check's own rows,
the launches refused before a model loads, FSDP's precision policy, DeepSpeed's gathered state, the trackers'
settings, Ctrl-C's stop and the answers samples.md lists — no model trained, no process launched."""

from __future__ import annotations

import contextlib
import json
import sys
import types
from types import SimpleNamespace

import pytest
import torch

from peftsft.core.config import Recipe
from peftsft.core.errors import UserError
from peftsft.core.launch import Launch
from tests.conftest import write_jsonl


def recipe_of(**sections) -> Recipe:
    """A recipe validated from its sections alone (no model, no files read)."""
    return Recipe.model_validate({"data": {"datasets": [{"path": "train.jsonl"}]}, **sections})


# ---------------------------------------------------------------------------------------------- the general check


def regressed_result() -> dict:
    return {"max_general_regression": 0.1, "change": {"loss_relative": 0.2345},
            "base": {"right": 30, "rows": 32}, "tuned": {"right": 21, "rows": 32}}


def test_the_forgetting_warning_gives_the_recipes_own_numbers_and_remedies():
    from peftsft.training.general_check import forgetting_warning

    recipe = recipe_of(training={"learning_rate": 5e-2, "max_steps": 12}, data={
        "datasets": [{"path": "train.jsonl"}], "replay": 0.123456789})
    assert forgetting_warning(regressed_result(), recipe, 8) == (
        "the tuned model lost general ability (limit 10%): loss on general answers +23.4%, right answers 30 → 21 of "
        "32.\n"
        "  likely causes: learning rate 0.05 (12 steps) on 8 training rows — a high rate, many passes over few rows, "
        "or narrow data (one persona, one style) pull every answer toward it.\n"
        "  remedies: mix general data back in ([data] replay = 0.2; now 0.123457), lower [training] learning_rate, "
        "fewer epochs, or more varied data. samples.md lists the answers that changed."
    )


@pytest.mark.parametrize("training, replay, length, now", [
    ({"max_steps": 1}, 0.0, "(1 steps)", "replay = 0.2)"),  # one step is steps, and no replay: no "now"
    ({"max_steps": 0, "epochs": 2.5}, 1e-05, "(2.5 epoch(s))", "replay = 0.2; now 1e-05)"),  # 0 steps: epochs
    ({"epochs": 3.0}, 0.3, "(3 epoch(s))", "replay = 0.2; now 0.3)"),  # max_steps -1: epochs
])
def test_the_forgetting_warning_names_the_runs_length_and_its_current_replay(training, replay, length, now):
    from peftsft.training.general_check import forgetting_warning

    recipe = recipe_of(training=training, data={"datasets": [{"path": "train.jsonl"}], "replay": replay})
    warning = forgetting_warning(regressed_result(), recipe, 100)
    assert f"learning rate 0.0002 {length} on 100 training rows" in warning and f"([data] {now}, lower" in warning


def test_general_path_rows_keep_the_conversation_and_count_as_user_rows(tmp_path):
    from peftsft.training.general_check import user_rows

    conversation = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "My dog's name?"},
                    {"role": "assistant", "content": "Rex"}]
    path = write_jsonl(tmp_path / "mine.jsonl", [{"messages": conversation}])
    [row] = user_rows(str(path))
    assert row.messages == conversation and row.expect == ("Rex",) and row.category == "user"
    assert row.prompt == conversation[:-1]
    completions = write_jsonl(tmp_path / "completions.jsonl", [{"prompt": "What is 1 + 1?", "completion": "2"}])
    [row] = user_rows(str(completions))  # any [data] format
    assert row.messages[-1] == {"role": "assistant", "content": "2"} and row.expect == ("2",)


def test_a_general_path_row_without_an_assistant_reply_is_refused_with_its_row_number(tmp_path):
    from peftsft.training.general_check import user_rows

    good = [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]
    asks_again = [*good, {"role": "user", "content": "And then?"}]
    path = write_jsonl(tmp_path / "mine.jsonl", [{"messages": m} for m in (good, good, asks_again)])
    with pytest.raises(UserError) as info:
        user_rows(str(path))
    assert info.value.message == f"[eval] general_path: row 3 of {path} does not end in an assistant reply"
    assert info.value.hint == "each general check row is a question and its reference answer"
    plain = write_jsonl(tmp_path / "plain.jsonl", [{"text": "plain text, no conversation"}])
    with pytest.raises(UserError, match="row 1 of .* does not end in an assistant reply"):
        user_rows(str(plain))


def test_a_malformed_general_path_row_fails_by_default_and_is_skipped_when_asked(tmp_path):
    from peftsft.training.general_check import user_rows

    good = {"messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]}
    path = write_jsonl(tmp_path / "mine.jsonl", [good, {"messages": "not a list"}, good])
    with pytest.raises(UserError, match="mine.jsonl:2"):
        user_rows(str(path))
    assert [r.expect for r in user_rows(str(path), on_bad_row="skip")] == [("Hello.",), ("Hello.",)]


# ---------------------------------------------------------------------------------------------- launches


def test_fsdp_on_cpu_processes_needs_fsdp2_and_an_unquantized_base():
    from peftsft.training.launch import QUANTIZED_ON_CPU, fsdp_problems

    recipe = recipe_of()
    assert fsdp_problems(recipe, "cpu", Launch("fsdp", 2, 2)) == []
    assert fsdp_problems(recipe, "cpu", Launch("fsdp", 2, 1)) == [
        "FSDP1 on CPU processes: only FSDP2 runs on CPU here — set fsdp_version: 2 "
        "(recipes/accelerate/fsdp-cpu.yaml)"]
    assert fsdp_problems(recipe, "cuda", Launch("fsdp", 2, 1)) == []  # FSDP1 is the GPU configs' version
    quantized = recipe_of(quantization={"bits": 4})
    assert fsdp_problems(quantized, "cpu", Launch("fsdp", 2, 2)) == [QUANTIZED_ON_CPU]
    assert fsdp_problems(quantized, "cuda", Launch("fsdp", 2, 2)) == []


def test_fsdp_refuses_other_tasks_loraplus_and_two_kinds_of_recomputation():
    from peftsft.training.launch import fsdp_problems

    fsdp2 = Launch("fsdp", 2, 2)
    assert fsdp_problems(recipe_of(task="classification"), "cpu", fsdp2) == [
        "task = 'classification' under FSDP: only the chat task has been run sharded — launch it with "
        "recipes/accelerate/ddp-cpu.yaml (or ddp.yaml on GPUs)"]
    assert fsdp_problems(recipe_of(strategy={"name": "lora", "loraplus_lr_ratio": 16.0}), "cpu", fsdp2) == [
        "strategy 'lora' builds its own optimizer (LoRA+), which the trainer refuses under FSDP — drop "
        "loraplus_lr_ratio, or launch with DDP"]
    assert fsdp_problems(recipe_of(strategy={"name": "lora"}), "cpu", fsdp2) == []  # plain LoRA: the trainer's AdamW
    both = recipe_of(training={"activation_checkpointing": True})
    recomputing = Launch("fsdp", 2, 2, fsdp_checkpointing=True)
    assert fsdp_problems(both, "cpu", recomputing) == [
        "[training] activation_checkpointing = true and the config's fsdp_activation_checkpointing both recompute "
        "activations; the trainer accepts one — set activation_checkpointing = false"]
    assert fsdp_problems(both, "cpu", fsdp2) == []
    for setting in (False, "auto"):
        assert fsdp_problems(recipe_of(training={"activation_checkpointing": setting}), "cpu", recomputing) == []


def test_a_launch_is_checked_by_its_engine_on_the_recipes_device(monkeypatch):
    from peftsft.training import launch as checks

    seen = []
    monkeypatch.setattr(checks, "fsdp_problems",
                        lambda recipe, device, how: seen.append(("fsdp", recipe, device, how)) or ["f"])
    monkeypatch.setattr(checks, "deepspeed_problems",
                        lambda recipe, device, how: seen.append(("deepspeed", recipe, device, how)) or ["d"])
    picked = []
    monkeypatch.setattr("peftsft.models.pick_device", lambda asked: picked.append(asked) or {"auto": "cuda"}[asked])
    recipe = recipe_of()
    assert checks.launch_problems(recipe, Launch("single", 1)) == []
    assert picked == []  # one process as asked: nothing to check, no device probed
    fsdp, deepspeed = Launch("fsdp", 2, 2), Launch("deepspeed", 2)
    assert checks.launch_problems(recipe, fsdp) == ["f"]
    assert checks.launch_problems(recipe, deepspeed, device="cpu") == ["d"]
    assert seen == [("fsdp", recipe, "cuda", fsdp), ("deepspeed", recipe, "cpu", deepspeed)]
    assert checks.launch_problems(recipe, Launch("ddp", 2)) == []
    assert len(seen) == 2


def test_a_process_accelerate_started_alone_is_refused_with_the_way_out():
    from peftsft.training.launch import launch_problems

    assert launch_problems(recipe_of(), Launch("single", 1, started_alone=True), device="cpu") == [
        "accelerate launch started this process alone although it was asked for several: with --cpu (or "
        "distributed_type MULTI_CPU without mpirun) accelerate runs ONE process and the config's FSDP/DeepSpeed/"
        "num_processes are ignored — drop --cpu and pick a config that says use_cpu: true itself "
        "(recipes/accelerate/ddp-cpu.yaml or fsdp-cpu.yaml), or launch with torchrun --nproc_per_node N"]


def test_several_fsdp_problems_are_all_listed():
    from peftsft.training.launch import QUANTIZED_ON_CPU, fsdp_problems

    recipe = recipe_of(task="classification", quantization={"bits": 4})
    problems = fsdp_problems(recipe, "cpu", Launch("fsdp", 2, 1))
    assert len(problems) == 3 and problems[0].startswith("FSDP1") and problems[1] == QUANTIZED_ON_CPU
    assert problems[2].startswith("task = 'classification'")


@pytest.mark.parametrize("mixed_precision, precision, device", [
    ("no", "fp32", "cpu"), ("no", "fp32", "cuda"), ("bf16", "bf16", "cuda"), ("fp16", "fp16", "cuda"),
])
def test_deepspeed_whose_config_agrees_with_the_runs_precision_is_accepted(mixed_precision, precision, device):
    from peftsft.training.launch import deepspeed_problems

    recipe = recipe_of(training={"precision": precision})
    assert deepspeed_problems(recipe, device, Launch("deepspeed", 2, mixed_precision=mixed_precision)) == []


@pytest.mark.parametrize("mixed_precision, precision, set_config, set_recipe", [
    ("bf16", "fp32", "'no'", "'bf16'"),
    ("no", "bf16", "'bf16'", "'fp32'"),
    ("fp16", "bf16", "'bf16'", "'fp16'"),
    ("fp8", "fp16", "'fp16'", "'fp8'"),  # a name peftsft has no precision for is quoted as the config says it
])
def test_deepspeed_whose_config_disagrees_with_the_runs_precision_says_what_to_set(
    mixed_precision, precision, set_config, set_recipe
):
    from peftsft.training.launch import deepspeed_problems

    recipe = recipe_of(training={"precision": precision})
    assert deepspeed_problems(recipe, "cuda", Launch("deepspeed", 2, mixed_precision=mixed_precision)) == [
        f"DeepSpeed: the accelerate config's mixed_precision ({mixed_precision!r}) and this run's precision "
        f"({precision}, [training] precision = {precision!r} on cuda) differ — set mixed_precision: {set_config} in "
        f"the config, or [training] precision = {set_recipe}"]


def test_deepspeed_at_bf16_on_cpu_processes_is_refused_and_auto_precision_is_resolved_for_the_device(monkeypatch):
    from peftsft.levers import precision as precision_lever
    from peftsft.training.launch import DEEPSPEED_BF16_ON_CPU, deepspeed_problems

    assert deepspeed_problems(recipe_of(training={"precision": "bf16"}), "cpu",
                              Launch("deepspeed", 2, mixed_precision="bf16")) == [DEEPSPEED_BF16_ON_CPU]
    monkeypatch.setattr(precision_lever, "cpu_has_fast_bf16", lambda: False)
    auto = recipe_of()  # [training] precision = "auto": fp32 on this CPU, bf16 on a CUDA plan
    assert deepspeed_problems(auto, "cpu", Launch("deepspeed", 2, mixed_precision="no")) == []
    assert "this run's precision (bf16, [training] precision = 'auto' on cuda)" in deepspeed_problems(
        auto, "cuda", Launch("deepspeed", 2, mixed_precision="no"))[0]


# ---------------------------------------------------------------------------------------------- sharding


@pytest.mark.parametrize("version", [1, 2])
def test_fsdp2_casts_nothing_and_reduces_in_fp32_while_fsdp1_keeps_accelerates_policy(version):
    from peftsft.training.sharding import _precision_policy

    accelerates = object()
    policy = _precision_policy(SimpleNamespace(fsdp_version=version, mixed_precision_policy=accelerates))
    if version == 1:
        assert policy is accelerates
    else:
        assert policy.param_dtype is None and policy.reduce_dtype == torch.float32


class _Adapted(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.base = torch.nn.Linear(2, 2)
        self.lora = torch.nn.Linear(2, 1, bias=False)
        self.base.requires_grad_(False)


def _fake_deepspeed(monkeypatch, rank: int) -> list:
    """deepspeed.zero.GatheredParameters recording what it was asked to gather; torch.distributed at `rank`."""
    asked = []

    @contextlib.contextmanager
    def gathered_parameters(params):
        asked.append(list(params))
        yield

    module = types.ModuleType("deepspeed")
    module.zero = SimpleNamespace(GatheredParameters=gathered_parameters)
    monkeypatch.setitem(sys.modules, "deepspeed", module)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: rank)
    return asked


@pytest.mark.parametrize("adapter", [True, False])
def test_zero3_gathers_the_trained_weights_or_all_and_the_main_process_keeps_whole_copies(monkeypatch, adapter):
    from peftsft.training.sharding import _gathered_zero3

    model, asked = _Adapted(), _fake_deepspeed(monkeypatch, rank=0)
    state = _gathered_zero3(model, adapter)
    expected = ["lora.weight"] if adapter else ["base.weight", "base.bias", "lora.weight"]
    assert list(state) == expected
    parameters = dict(model.named_parameters())
    assert [id(p) for p in asked[0]] == [id(parameters[name]) for name in expected]
    for name, tensor in state.items():
        assert torch.equal(tensor, parameters[name]) and tensor.data_ptr() != parameters[name].data_ptr()


def test_zero3_state_exists_on_the_main_process_only(monkeypatch):
    from peftsft.training.sharding import _gathered_zero3

    asked = _fake_deepspeed(monkeypatch, rank=1)
    assert _gathered_zero3(_Adapted(), adapter=True) is None and len(asked) == 1  # every process joins the gather


# ---------------------------------------------------------------------------------------------- trackers


def test_mlflow_and_wandb_settings_point_inside_the_run_dir(tmp_path):
    from peftsft.core.rundir import RunDir
    from peftsft.training.trackers import environment

    recipe = recipe_of(training={"report_to": ["mlflow", "wandb"]})
    rundir = RunDir(tmp_path / "run")
    where = rundir.trackers_dir
    assert environment(recipe, rundir) == {
        "MLFLOW_TRACKING_URI": f"sqlite:///{where.resolve() / 'mlflow.db'}",
        "WANDB_MODE": "offline", "WANDB_DIR": str(where), "WANDB_PROJECT": "peftsft", "WANDB_CONSOLE": "off",
    }


def test_recipe_params_keep_a_datasets_field_and_role_mappings_as_one_value_each():
    from peftsft.training.trackers import recipe_params

    recipe = recipe_of(data={"datasets": [{"path": "chats.jsonl", "format": "sharegpt",
                                           "fields": {"conversations": "dialog"}, "roles": {"human": "user"}}]})
    params = recipe_params(recipe)
    assert params["data.datasets.0.fields"] == json.dumps({"conversations": "dialog"})
    assert params["data.datasets.0.roles"] == json.dumps({"human": "user"})
    assert not [key for key in params if key.startswith(("data.datasets.0.fields.", "data.datasets.0.roles."))]


# ---------------------------------------------------------------------------------------------- callbacks, report


def test_the_first_ctrl_c_asks_for_a_checkpoint_and_a_stop_the_second_aborts():
    from transformers import TrainerControl

    from peftsft.training.callbacks import StopOnInterrupt

    interrupt, control = StopOnInterrupt(), TrainerControl()
    interrupt.on_step_end(None, None, control)
    assert not control.should_save and not control.should_training_stop
    interrupt._on_signal(2, None)
    assert interrupt.requested is True
    interrupt.on_step_end(None, None, control)
    assert control.should_save and control.should_training_stop
    with pytest.raises(KeyboardInterrupt):
        interrupt._on_signal(2, None)


def test_a_non_finite_error_carries_its_step():
    from peftsft.training.callbacks import NonFiniteError

    error = NonFiniteError(7, "loss nan")
    assert error.step == 7 and str(error) == "non-finite loss nan at step 7"


def test_an_answer_in_a_markdown_list_item_is_one_line_with_single_spaces():
    from peftsft.training.report import one_line

    assert one_line("First line.\n\nSecond  line,\tthen a tab. ") == "First line. Second line, then a tab."
    assert one_line("") == ""
