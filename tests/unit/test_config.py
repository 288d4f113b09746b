"""Recipe loading: typed validation, every problem at once, did-you-mean, overrides, resolved copy."""

import tomllib
from pathlib import Path

import pytest

from peftsft.config import apply_override, load_recipe, parse_override_value, recipe_to_toml
from peftsft.errors import UserError

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
