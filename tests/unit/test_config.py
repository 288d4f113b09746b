"""Recipe loading: typed validation, every problem at once, did-you-mean, overrides, resolved copy."""

import tomllib
from pathlib import Path

import pytest

from peftsft.core.config import TrainingSection, gradient_accumulation, recipe_to_toml
from peftsft.core.recipe_io import apply_override, parse_override_value
from peftsft.training.recipe import load_recipe
from peftsft.core.errors import UserError

REPO = Path(__file__).resolve().parents[2]
DEFAULT_RECIPE = REPO / "recipes" / "llama-chat-lora.toml"


def test_default_recipe_validates_with_typed_sections():
    recipe = load_recipe(DEFAULT_RECIPE)
    assert recipe.strategy.name == "lora"
    assert recipe.strategy.params["target_modules"] == "all-linear"
    assert isinstance(recipe.training.learning_rate, float)
    assert Path(recipe.data.datasets[0].path).is_file()  # resolved relative to the recipe


def test_every_problem_is_reported_at_once_with_file_and_suggestion():
    with pytest.raises(UserError) as info:
        load_recipe(
            DEFAULT_RECIPE,
            ["training.learnin_rate=3", "training.batch_size=0", "model.dtpe=x", "strategy.alpah=4"],
        )
    text = str(info.value)
    assert str(DEFAULT_RECIPE) in text
    assert "[training] learnin_rate: unknown key — did you mean 'learning_rate'?" in text
    assert "[model] dtpe: unknown key — did you mean 'dtype'?" in text
    assert "[training] batch_size" in text and "greater than or equal to 1" in text
    assert "[strategy] alpah: unknown parameter for 'lora' — did you mean 'alpha'?" in text
    assert len(info.value.problems) == 4


def test_a_value_that_fits_no_member_of_an_either_or_key_is_one_problem():
    with pytest.raises(UserError) as info:
        load_recipe(
            DEFAULT_RECIPE, ["training.activation_checkpointing=maybe", "training.loss_vocab_chunk=10"]
        )
    assert info.value.problems == [
        "[training] activation_checkpointing: Input should be a valid boolean or 'auto' (got 'maybe')",
        "[training] loss_vocab_chunk: Input should be greater than or equal to 256 or 'auto' (got 10)",
    ]
    levers = load_recipe(DEFAULT_RECIPE, ["training.activation_checkpointing=auto", "training.loss_vocab_chunk=8192"])
    assert (levers.training.activation_checkpointing, levers.training.loss_vocab_chunk) == ("auto", 8192)


def test_unknown_section_and_unknown_strategy(tmp_path):
    with pytest.raises(UserError) as info:
        load_recipe(DEFAULT_RECIPE, ["trainig.seed=1", "strategy.name=lorra"])
    text = str(info.value)
    assert "trainig" in text and "did you mean 'training'" in text
    assert "unknown strategy 'lorra'" in text and "did you mean 'lora'" in text


def test_overrides_are_typed_and_nested():
    recipe = load_recipe(
        DEFAULT_RECIPE,
        ["training.learning_rate=5e-5", "training.max_steps=7", "strategy.target_modules=[\"q_proj\", \"v_proj\"]",
         "run.name=other", "data.datasets.0.format=messages"],
    )
    assert recipe.training.learning_rate == 5e-5 and recipe.training.max_steps == 7
    assert recipe.strategy.params["target_modules"] == ["q_proj", "v_proj"]
    assert recipe.run_dir.name == "other"


def test_override_value_parsing():
    assert parse_override_value("1e-4") == 1e-4
    assert parse_override_value("true") is True
    assert parse_override_value("[1, 2]") == [1, 2]
    assert parse_override_value("plain words") == "plain words"
    raw = {}
    apply_override(raw, "a.b.c=3")
    assert raw == {"a": {"b": {"c": 3}}}
    with pytest.raises(UserError):
        apply_override(raw, "no-equals-sign")


def test_malformed_toml_names_the_line(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[model]\nsource = \n", encoding="utf-8")
    with pytest.raises(UserError) as info:
        load_recipe(bad)
    assert "malformed TOML" in str(info.value) and "line 2" in str(info.value)


def test_missing_recipe_and_missing_data_file(tmp_path):
    with pytest.raises(UserError, match="recipe not found"):
        load_recipe(tmp_path / "nope.toml")
    with pytest.raises(UserError) as info:
        load_recipe(DEFAULT_RECIPE, ["data.datasets.0.path=missing.jsonl"])
    assert "file not found: missing.jsonl" in str(info.value)


def test_resolved_recipe_round_trips():
    recipe = load_recipe(DEFAULT_RECIPE, ["training.max_steps=3"])
    text = recipe_to_toml(recipe)
    parsed = tomllib.loads(text)
    assert parsed["training"]["max_steps"] == 3
    assert parsed["strategy"] == {"name": "lora", "r": 16, "alpha": 32, "dropout": 0.05, "target_modules": "all-linear"}
    assert parsed["training"]["warmup_ratio"] == 0.05  # defaults are filled in


# ---------------------------------------------------------------------------------------------- global batch


def test_global_batch_size_is_checked_with_the_other_problems():
    with pytest.raises(UserError) as info:  # the default recipe has batch_size = 8
        load_recipe(DEFAULT_RECIPE, ["training.global_batch_size=12", "data.datasets.0.path=missing.jsonl"])
    problems = info.value.problems
    assert len(problems) == 2 and any("file not found: missing.jsonl" in p for p in problems)
    assert (
        "[training] global_batch_size (12) must be a multiple of batch_size (8), the per-device batch — "
        "e.g. global_batch_size = 8 or 16, or batch_size = 4, 6 or 12"
    ) in problems
    with pytest.raises(UserError) as info:
        load_recipe(DEFAULT_RECIPE, ["training.global_batch_size=24", "training.grad_accum=2"])
    assert info.value.problems == [
        "[training] global_batch_size (24) must be a multiple of batch_size × grad_accum (8 × 2 = 16) — "
        "or leave grad_accum unset: it is derived from global_batch_size"
    ]
    with pytest.raises(UserError, match="greater than or equal to 1"):
        load_recipe(DEFAULT_RECIPE, ["training.global_batch_size=0"])
    recipe = load_recipe(DEFAULT_RECIPE, ["training.global_batch_size=32"])
    assert tomllib.loads(recipe_to_toml(recipe))["training"]["global_batch_size"] == 32
    assert "global_batch_size" not in tomllib.loads(recipe_to_toml(load_recipe(DEFAULT_RECIPE)))["training"]


def test_global_batch_size_derives_grad_accum_from_the_process_count():
    t = TrainingSection(batch_size=4, global_batch_size=16)
    assert [gradient_accumulation(t, n) for n in (1, 2, 4)] == [4, 2, 1]
    assert gradient_accumulation(TrainingSection(batch_size=4, grad_accum=3), 2) == 3  # unset: grad_accum as given
    consistent = TrainingSection(batch_size=4, grad_accum=2, global_batch_size=16)
    assert gradient_accumulation(consistent, 2) == 2


def test_a_global_batch_the_processes_cannot_split_is_a_clear_error():
    with pytest.raises(UserError) as info:
        gradient_accumulation(TrainingSection(batch_size=4, global_batch_size=12), 2)
    assert info.value.message == (
        "[training] global_batch_size (12) is not a multiple of batch_size × processes = 4 × 2 = 8, "
        "so no whole number of gradient accumulation steps reaches it"
    )
    assert info.value.hint == (
        "set global_batch_size to a multiple of 8 (e.g. 8 or 16), or batch_size to 2, 3 or 6 for 2 process(es), "
        "or launch a process count that divides 3"
    )
    with pytest.raises(UserError) as info:
        gradient_accumulation(TrainingSection(batch_size=4, grad_accum=4, global_batch_size=16), 2)
    assert "grad_accum (4) contradicts global_batch_size (16)" in info.value.message
    assert "takes grad_accum = 2" in info.value.message and "remove grad_accum" in info.value.hint


def test_every_recipe_key_has_help_text_from_the_schema():
    from peftsft.core.config import key_help

    missing = [key for key, _default, help_text in key_help() if not help_text]
    assert missing == []


def test_resolved_recipe_carries_each_keys_help_and_round_trips(tmp_path):
    import tomllib

    from peftsft.core.config import Recipe, TrainingSection, recipe_to_toml

    recipe = load_recipe(REPO / "recipes" / "llama-chat-lora.toml", ["data.datasets.0.fields={messages = \"dialog\"}"])
    text = recipe_to_toml(recipe)
    lines = text.splitlines()
    at = lines.index(f"learning_rate = {recipe.training.learning_rate}")
    assert lines[at - 1] == f"# {TrainingSection.model_fields['learning_rate'].description}"
    assert Recipe.model_validate(tomllib.loads(text)).model_dump() == recipe.model_dump()


def test_unknown_key_suggestion_shows_the_suggested_keys_help():
    with pytest.raises(UserError) as caught:
        load_recipe(REPO / "recipes" / "llama-chat-lora.toml", ["training.learnin_rate=1e-4"])
    assert "did you mean 'learning_rate'? (peak learning rate)" in "\n".join(caught.value.problems)


def test_validate_explain_lists_keys_with_help(capsys):
    from peftsft.commands.cli import main

    assert main(["validate", str(REPO / "recipes" / "llama-chat-lora.toml"), "--explain"]) == 0
    out = capsys.readouterr().out
    assert "training.learning_rate" in out and "peak learning rate" in out
