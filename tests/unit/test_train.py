"""A short run on the tiny Llama: run dir contents, adapter trained, base frozen, save → load identical."""

import json
import subprocess
import sys

import pytest
import torch
from rich.console import Console

from peftsft.training.recipe import load_recipe
from peftsft.core.errors import UserError
from peftsft.artifacts.tasks import run


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_model_dir):
    """One 3-step LoRA run shared by the assertions below."""
    from tests.conftest import write_tiny_recipe

    extra = 'sample_prompts = ["What is your name?"]\nsample_max_new_tokens = 4'
    recipe_path = write_tiny_recipe(tmp_path_factory.mktemp("tiny-run"), tiny_model_dir, extra)
    recipe = load_recipe(recipe_path, ["data.eval_fraction=0.25"])
    summary = run(recipe, Console(quiet=True))
    return recipe, summary


@pytest.mark.slow
def test_run_dir_has_every_artifact(tiny_run):
    recipe, summary = tiny_run
    run_dir = recipe.run_dir
    for name in ("recipe.resolved.toml", "metrics.jsonl", "loss.png", "summary.json", "samples.md"):
        assert (run_dir / name).is_file(), name
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "chat_template.jinja"):
        assert (run_dir / "adapter" / name).is_file(), name
    saved = json.loads((run_dir / "summary.json").read_text())
    assert saved["steps"] == 3 and saved["trainable_params"] < saved["total_params"]
    assert saved["train_tokens_per_s"] > 0 and saved["peak_memory_bytes"] > 0
    assert saved["eval_loss"] is not None and saved["versions"]["trl"]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3]
    assert "**tuned:**" in (run_dir / "samples.md").read_text()


@pytest.mark.slow
def test_adapter_trained_and_base_frozen(tiny_run, tiny_model_dir):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    recipe, _ = tiny_run
    adapter = load_file(recipe.run_dir / "adapter" / "adapter_model.safetensors")
    lora_b = [t for name, t in adapter.items() if "lora_B" in name]
    assert lora_b and all(t.abs().sum() > 0 for t in lora_b)  # B starts at zero: non-zero means it trained

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    fresh = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tuned = PeftModel.from_pretrained(base, recipe.run_dir / "adapter")
    for name, param in fresh.named_parameters():
        tuned_param = tuned.get_base_model().get_parameter(_base_name(name, tuned))
        assert torch.equal(param, tuned_param), name


def _base_name(name: str, tuned) -> str:
    """Names of the frozen weights inside a peft-wrapped Linear."""
    module_name, _, leaf = name.rpartition(".")
    module = tuned.get_base_model().get_submodule(module_name)
    return f"{module_name}.base_layer.{leaf}" if hasattr(module, "base_layer") else name


@pytest.mark.slow
def test_save_then_load_gives_identical_logits(tiny_run, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    recipe, _ = tiny_run
    tokenizer = AutoTokenizer.from_pretrained(recipe.run_dir / "adapter")
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Who are you?"}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    first = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), recipe.run_dir / "adapter")
    second = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), recipe.run_dir / "adapter")
    with torch.no_grad():
        a = first.eval()(**ids).logits
        b = second.eval()(**ids).logits
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()(**ids).logits
    assert torch.equal(a, b)
    assert not torch.allclose(a, base)  # the adapter does change the model


@pytest.mark.slow
def test_existing_run_dir_is_refused(tiny_run):
    recipe, _ = tiny_run
    with pytest.raises(UserError, match="run directory already exists"):
        run(recipe, Console(quiet=True))


@pytest.mark.slow
def test_cli_errors_are_clean(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[training]\nlearnig_rate = 1\n")
    result = subprocess.run(
        [sys.executable, "-m", "peftsft", "validate", str(bad)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    assert "did you mean 'learning_rate'" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    debug = subprocess.run(
        [sys.executable, "-m", "peftsft", "validate", str(bad), "--debug"], capture_output=True, text=True, timeout=120
    )
    assert debug.returncode != 0 and "Traceback" in debug.stderr


@pytest.mark.slow
def test_strategies_command_lists_lora():
    result = subprocess.run(
        [sys.executable, "-m", "peftsft", "strategies"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and "lora" in result.stdout


def test_saving_a_continued_adapter_asks_no_hub_and_names_the_public_base(tmp_path, tiny_model_dir, tokenizer,
                                                                        monkeypatch):
    """An adapter loaded from a run dir names its base by the public id; saving it must not send peft to the Hub to
    check that base's vocabulary (offline: a network lookup and a warning), and the saved config keeps the id."""
    import peft.utils.save_and_load as peft_saving
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from peftsft.training.runs import save_adapter

    def no_hub(*args, **kwargs):
        raise AssertionError("peft asked the Hub while saving")

    monkeypatch.setattr(peft_saving, "check_file_exists_on_hf_hub", no_hub)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), LoraConfig(r=2, target_modules=["q_proj"]))
    model.peft_config["default"].base_model_name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct"  # as loaded from a run
    save_adapter(model, tokenizer, tmp_path / "adapter", base_id="HuggingFaceTB/SmolLM2-135M-Instruct")
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert saved["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
