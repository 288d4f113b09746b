"""The `data preview` view for the browser: a run's training samples with the supervised tokens marked."""

from __future__ import annotations

from dataclasses import dataclass
from html import escape
from peftsft.core.rundir import RunDir
from peftsft.data.build import build_datasets
from peftsft.data.contract import check_contract
from peftsft.data.preview import load_recipe_tokenizer, mask_pieces


@dataclass
class DataView:
    samples: list[str]  # HTML, supervised pieces in <mark class="sup">
    total: int
    stats: dict
    contract: dict


def data_view(run: RunDir, count: int = 3) -> DataView:
    """Render the first `count` training samples of the run's recipe, exactly as training tokenized them."""
    recipe = run.recipe()
    tokenizer = load_recipe_tokenizer(recipe)
    train, evals, stats = build_datasets(tokenizer, recipe.data, recipe.training.seed)
    contract = check_contract(tokenizer, train, evals, stats, recipe.data, recipe.model.attention)
    samples = [sample_html(tokenizer, train[i]) for i in range(min(count, len(train)))]
    return DataView(samples, len(train), stats.as_dict(), contract.as_dict())


def sample_html(tokenizer, sample: dict) -> str:
    return "".join(
        f'<mark class="sup">{escape(text)}</mark>' if supervised else f"<span>{escape(text)}</span>"
        for text, supervised in mask_pieces(tokenizer, sample)
    )
