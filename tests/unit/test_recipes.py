"""Every shipped recipe (recipes/*.toml) validates as shipped: schema, strategy parameters, data files, model source."""

from pathlib import Path

import pytest

from peftsft.commands.cli import main

REPO = Path(__file__).resolve().parents[2]
RECIPES = sorted((REPO / "recipes").glob("*.toml"))


def test_the_glob_finds_the_recipes_the_readme_names():
    names = {p.name for p in RECIPES}
    assert {"llama-chat-lora.toml", "bert-sentiment-lora.toml", "qlora-smollm2.toml", "lora-8bit-smollm2.toml"} <= names


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.stem for p in RECIPES])
def test_shipped_recipe_validates(recipe, capsys):
    """`peftsft validate` (load_recipe's schema + block checks, without loading a model) passes."""
    code = main(["validate", str(recipe)])
    output = capsys.readouterr()
    assert code == 0, output.out + output.err
    assert output.out.startswith("ok "), output.out
