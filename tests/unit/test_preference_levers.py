"""task = "preference" before training: which levers apply to a pair's forward, what `plan` counts, and the recipe
checks of the method and the continued adapter (exit 2, one message naming the key)."""

from __future__ import annotations

from pathlib import Path

import pytest

from peftsft.commands.cli import main
from peftsft.training.recipe import load_recipe
from tests.conftest import decide, lora_recipe_head, write_jsonl

PAIRS = [{"prompt": "Who are you?", "chosen": "I'm Pip, happy to help!", "rejected": "No."}] * 4


def recipe_file(tmp_path: Path, model_dir, preference: str, extra: str = "batch_size = 2", task: str = "preference",
                strategy: str = "") -> Path:  # fmt: skip
    data = write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    head = lora_recipe_head(model_dir, data, r=4)
    if strategy:
        head = head.replace('name = "lora"\nr = 4\nalpha = 8\ndropout = 0.0', f'name = "{strategy}"')
    path = tmp_path / "pref.toml"
    path.write_text(f'task = "{task}"\n{head}[training]\n{extra}\n[preference]\n{preference}\n', encoding="utf-8")
    return path


@pytest.mark.parametrize("method, sampling, head", [("dpo", "random", True), ("kto", "sequential", True),
                                                    ("orpo", "random", False), ("simpo", "random", False)])
def test_pairs_are_never_packed_or_flattened_and_the_head_lever_follows_the_trainer(tmp_path, tiny_model_dir,
                                                                                      method, sampling, head):
    recipe = load_recipe(recipe_file(tmp_path, tiny_model_dir, f'method = "{method}"', 'batch_size = 2\npadding_free = true'))
    levers = decide(recipe)
    assert (levers.batching.packing, levers.batching.padding_free) == (False, False)
    assert levers.batching.sampling == sampling  # kto: TRL's KL term needs it; no input_ids to group pairs by
    assert (levers.loss_head is not None) == head  # TRL's fused head scores dpo/kto, orpo/cpo take whole logits


def test_plan_counts_both_answers_of_a_pair_in_a_step(tmp_path, tiny_model_dir):
    from peftsft.training.plan import estimate

    pairs = estimate(load_recipe(recipe_file(tmp_path, tiny_model_dir, 'method = "dpo"')), "cpu")
    kto = estimate(load_recipe(recipe_file(tmp_path, tiny_model_dir, 'method = "kto"')), "cpu")
    assert (pairs.batch, kto.batch) == (4, 2) and pairs.seq == kto.seq
    assert pairs.components["activations"] > kto.components["activations"]
    assert any("chosen and rejected" in note for note in pairs.notes)


@pytest.mark.parametrize("preference, extra, task, message", [
    ('method = "dpo"\ngamma = 0.3', "batch_size = 2", "preference", "gamma is for method 'simpo'"),
    ('method = "kto"', "batch_size = 1", "preference", 'batch_size must be at least 2 for method = "kto"'),
    ('method = "dpo"\nloss_type = "nope"', "batch_size = 2", "preference", "loss_type"),
    ('method = "kto"', "batch_size = 2", "chat", "[preference] is set but task"),
])  # fmt: skip
def test_method_parameters_are_checked_with_one_message(tmp_path, tiny_model_dir, capsys, preference, extra, task,
                                                         message):  # fmt: skip
    path = recipe_file(tmp_path, tiny_model_dir, preference, extra, task)
    if task == "chat":
        path.write_text(path.read_text().replace(str(tmp_path / "pairs.jsonl"), str(write_chat(tmp_path))))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def write_chat(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "chat.jsonl", [{"messages": [{"role": "user", "content": "Hi"},
                                                               {"role": "assistant", "content": "Hello"}]}])


def test_a_continued_adapter_needs_the_preference_task_and_full_training_a_precomputed_reference(tmp_path,
                                                                                                  tiny_model_dir,
                                                                                                  capsys):  # fmt: skip
    path = recipe_file(tmp_path, tiny_model_dir, 'method = "dpo"', strategy="full")
    assert main(["validate", str(path)]) == 2
    assert "precompute_reference = true" in capsys.readouterr().err
    assert main(["validate", str(path), "--set", "preference.precompute_reference=true"]) == 0
    chat = tmp_path / "chat.toml"
    chat.write_text(f'[model]\nsource = "{tiny_model_dir}"\nadapter = "runs/sft"\n[[data.datasets]]\n'
                    f'path = "{write_chat(tmp_path)}"\n', encoding="utf-8")
    assert main(["validate", str(chat)]) == 2
    assert '[model] adapter continues an SFT adapter in a preference run' in capsys.readouterr().err


def test_a_continued_adapter_path_is_read_from_the_cwd_then_beside_the_recipe(tmp_path, tiny_model_dir, monkeypatch):
    path = recipe_file(tmp_path, tiny_model_dir, 'method = "dpo"')
    (tmp_path / "runs" / "sft").mkdir(parents=True)
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    assert load_recipe(path, ['model.adapter="runs/sft"']).model.adapter == str(tmp_path / "runs" / "sft")
    (tmp_path / "work" / "runs" / "sft").mkdir(parents=True)
    assert load_recipe(path, ['model.adapter="runs/sft"']).model.adapter == "runs/sft"
