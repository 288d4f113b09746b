"""task = "preference" in recipes: [preference] method and each method's own keys, the data formats it reads, what
pairs cannot do, did-you-mean, and the resolved copy."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from peftsft.core.config import Recipe, key_help, recipe_to_toml
from peftsft.core.errors import UserError
from peftsft.training.recipe import load_recipe

REPO = Path(__file__).resolve().parents[2]
PAIRS = REPO / "recipes" / "data" / "preference_train.jsonl"


@pytest.fixture
def recipe(tmp_path):
    def write(preference: str = 'method = "dpo"', extra: str = "", fmt: str = "auto") -> Path:
        path = tmp_path / "pref.toml"
        path.write_text(f'task = "preference"\n[[data.datasets]]\npath = "{PAIRS}"\nformat = "{fmt}"\n'
                        f"[preference]\n{preference}\n{extra}", encoding="utf-8")
        return path

    return write


def problems(path: Path, overrides: list[str] | None = None) -> list[str]:
    with pytest.raises(UserError) as info:
        load_recipe(path, overrides)
    return info.value.problems


def test_a_preference_recipe_validates_with_each_methods_usual_beta(recipe):
    loaded = load_recipe(recipe(), ["data.datasets.0.format=preference"])
    assert (loaded.task, loaded.preference.method, loaded.preference.beta, loaded.preference.paired) == (
        "preference", "dpo", 0.1, True)
    assert load_recipe(recipe('method = "simpo"')).preference.beta == 2.0
    assert load_recipe(recipe('method = "simpo"\nbeta = 2.5\ngamma = 1.0')).preference.beta == 2.5
    assert load_recipe(recipe('method = "kto"\ndesirable_weight = 1.33'), ["training.batch_size=2"]).preference.paired is False


def test_a_key_of_another_method_names_the_method_it_is_for(recipe):
    assert problems(recipe('method = "dpo"\ngamma = 1.0\ndesirable_weight = 2.0')) == [
        "[preference]: method = 'dpo' does not use desirable_weight, gamma (desirable_weight is for method 'kto'; "
        "gamma is for method 'simpo'): remove it"]
    assert problems(recipe('method = "orpo"\nsft_weight = 1.0')) == [
        "[preference]: method = 'orpo' does not use sft_weight (sft_weight is for method 'dpo' or 'simpo'): remove it"]
    assert problems(recipe("label_smoothing = 0.1")) == [
        '[preference]: label_smoothing needs loss_type = "robust" (got \'sigmoid\')']
    assert load_recipe(recipe('loss_type = "robust"\nlabel_smoothing = 0.1')).preference.label_smoothing == 0.1


def test_unknown_and_out_of_range_keys(recipe):
    found = problems(recipe('method = "dpo"\nbeat = 0.2'), ['preference.method="ipo"'])
    assert "[preference] beat: unknown key — did you mean 'beta'?" in found[1]
    assert found[0].startswith("[preference] method: Input should be 'dpo', 'orpo', 'kto' or 'simpo'")
    assert problems(recipe("beta = 0")) == ["[preference] beta: Input should be greater than 0 (got 0)"]


def test_formats_and_task_must_agree(recipe, tmp_path):
    assert problems(recipe(fmt="messages")) == [
        '[data] datasets.0.format = "messages" is chat data; a preference run reads "preference" rows (prompt + '
        'chosen + rejected) or "unpaired_preference" rows (prompt + completion + label)']
    assert problems(recipe(fmt="unpaired_preference")) == [
        '[data] datasets.0.format = "unpaired_preference": method = "dpo" needs pairs; unpaired rows train with '
        'method = "kto"']
    chat = REPO / "recipes" / "llama-chat-lora.toml"
    assert problems(chat, ["data.datasets.0.format=preference", 'preference.method="kto"']) == [
        '[data] datasets.0.format = "preference" is preference data: set task = "preference" above the first [section]',
        '[preference] is set but task = "chat": add task = "preference" above the first [section]']
    assert problems(chat, ['classification.labels=["a", "b"]', 'task="preference"', "data.datasets.0.format=auto"]) == [
        '[classification] is set but task = "preference": add task = "classification" above the first [section]']


def test_what_pairs_cannot_do(recipe):
    found = problems(recipe('method = "kto"'), ["training.batch_size=1", "data.packing=true", "data.replay=0.2",
                                                'data.masking="all"'])
    assert found == [
        '[training] batch_size must be at least 2 for method = "kto": its KL term compares each answer with the other '
        "prompts of its micro-batch",
        "[data] packing applies to chat runs: remove it for a preference run",
        "[data] replay mixes chat rows into SFT: remove it for a preference run",
        '[data] masking = "all" cannot apply to pairs: only the answers are scored (remove it)',
    ]


def test_the_resolved_recipe_writes_the_methods_keys_only_and_round_trips(recipe):
    loaded = load_recipe(recipe('method = "simpo"\ngamma = 1.0'))
    parsed = tomllib.loads(recipe_to_toml(loaded))
    assert parsed["preference"] == {"method": "simpo", "beta": 2.0, "sft_weight": 0.0, "gamma": 1.0}
    assert Recipe.model_validate(parsed).model_dump() == loaded.model_dump()
    chat = load_recipe(REPO / "recipes" / "llama-chat-lora.toml")
    assert "preference" not in tomllib.loads(recipe_to_toml(chat))
    helped = {key: text for key, _, text in key_help()}
    assert "simpo: the target margin" in helped["preference.gamma"] and "dpo:" in helped["preference.method"]
