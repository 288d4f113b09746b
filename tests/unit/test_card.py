"""The base's public id (detected, recorded, written into adapter/merged configs), the model cards written from a
run (Hub metadata that round-trips, no placeholders, every section) and their load snippets, run as written — the
adapter loading with plain peft from a Hugging Face cache on a machine that never saw the run."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from rich.console import Console

from peftsft.core.config import DEFAULT_MODEL, recipe_to_toml
from peftsft.base_identity import detect_base_identity, gguf_general_metadata
from tests.conftest import TINY_BASE_ID

REPO = Path(__file__).resolve().parents[2]
PLACEHOLDERS = ("More Information Needed", "[optional]", "TODO", "{{ card_data }}", "REPLACE")


# ---------------------------------------------------------------------------------------------- base id


def test_embedded_gguf_names_smollm2_instruct_and_its_license():
    identity = detect_base_identity(DEFAULT_MODEL)
    assert identity.id == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert identity.license == "apache-2.0" and "GGUF" in identity.found_in


def _write_gguf(path: Path, **strings: str) -> Path:
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), arch="llama")
    writer.add_array("tokenizer.ggml.tokens", ["a", "b", "c"])  # arrays before and after: skipped by the reader
    for key, value in strings.items():
        writer.add_string(key, value)
    writer.add_array("tokenizer.ggml.scores", [0.0, 1.0, 2.0])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_base_id_from_gguf_source_keys_hub_ids_configs_and_hub_caches(tmp_path):
    repo_url = _write_gguf(tmp_path / "x.Q8_0.gguf", **{"general.source.repo_url": "https://huggingface.co/Org/Real"})
    assert gguf_general_metadata(repo_url)["general.source.repo_url"].endswith("Org/Real")
    assert detect_base_identity(str(repo_url)).id == "Org/Real"
    named = _write_gguf(tmp_path / "Model-7B.f16.gguf", **{"general.organization": "Org"})
    assert detect_base_identity(str(named)).id == "Org/Model-7B"
    nameless = _write_gguf(tmp_path / "model.gguf", **{"general.name": "a model"})
    assert detect_base_identity(str(nameless)).id is None

    assert detect_base_identity("Org/Some-Model").id == "Org/Some-Model"
    local = tmp_path / "local"
    local.mkdir()
    (local / "config.json").write_text(json.dumps({"_name_or_path": "Org/From-Config"}))
    assert detect_base_identity(str(local)).id == "Org/From-Config"
    (local / "config.json").write_text(json.dumps({"_name_or_path": "/home/me/checkpoints/x"}))
    assert detect_base_identity(str(local)).id is None
    snapshot = tmp_path / "hub" / "models--Org--Cached" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    assert detect_base_identity(str(snapshot)).id == "Org/Cached"


def test_run_start_fills_base_id_and_license_into_the_resolved_recipe(tmp_path, tiny_model_dir):
    from peftsft.training.recipe import load_recipe
    from peftsft.training.runs import fill_base_identity

    from tests.conftest import write_tiny_recipe

    recipe = load_recipe(write_tiny_recipe(tmp_path, tiny_model_dir), [f'model.source="{DEFAULT_MODEL}"'])
    fill_base_identity(recipe, Console(quiet=True))
    resolved = recipe_to_toml(recipe)
    assert 'base_id = "HuggingFaceTB/SmolLM2-135M-Instruct"' in resolved and 'license = "apache-2.0"' in resolved


def test_validate_warns_when_the_base_id_is_unknown(tmp_path, tiny_model_dir, capsys):
    from peftsft.commands.cli import main

    from tests.conftest import write_tiny_recipe

    recipe = str(write_tiny_recipe(tmp_path, tiny_model_dir))
    assert main(["validate", recipe]) == 0
    out = capsys.readouterr().out
    assert "warning" in out and "base_id" in out
    assert main(["validate", recipe, "--set", f'model.base_id="{TINY_BASE_ID}"']) == 0
    assert f"base id: {TINY_BASE_ID}" in capsys.readouterr().out


@pytest.mark.slow
def test_adapter_and_merged_configs_name_the_public_id_and_exports_record_their_checks(exported_run):
    for folder in (exported_run / "adapter", exported_run / "exports" / "adapter"):
        assert json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"] == TINY_BASE_ID
    merged = exported_run / "exports" / "merged"
    assert json.loads((merged / "config.json").read_text())["base_model_name_or_path"] == TINY_BASE_ID
    assert 'source = "' in (exported_run / "recipe.resolved.toml").read_text()  # peftsft reloads from the local source
    for export in ("adapter", "merged"):
        record = json.loads((exported_run / "exports" / export / "verification.json").read_text())
        assert record["verified"] and record["checks"][0]["passed"] and "tokenizer.json" in record["files"]


# ---------------------------------------------------------------------------------------------- cards


@pytest.mark.parametrize("where,library,checked", [
    ("adapter", "peft", "| merged float32 | float32 |"),  # the run's card: every export of the run
    ("exports/adapter", "peft", "| adapter | float32 |"),  # an export's card: its own check
    ("exports/merged", "transformers", "| merged float32 | float32 |"),
])
@pytest.mark.slow
def test_cards_carry_hub_metadata_that_round_trips_and_every_section(exported_run, where, library, checked):
    from huggingface_hub import ModelCard

    card = ModelCard.load(exported_run / where / "README.md")
    data = card.data.to_dict()
    assert data["base_model"] == TINY_BASE_ID and data["library_name"] == library
    assert data["pipeline_tag"] == "text-generation" and data["license"] == "apache-2.0"
    assert {"peftsft", "lora"} <= set(data["tags"])
    assert ModelCard(card.content).data.to_dict() == data  # the metadata round-trips
    text = card.text
    assert not [p for p in PLACEHOLDERS if p in text], "placeholder text left"
    for heading in ("## How to load", "## Training", "## Data", "## Evaluation", "## Export verification",
                    "## Recipe (resolved)", "## Chat template"):
        assert heading in text, heading
    assert "![training loss](loss.png)" in text and (exported_run / where / "loss.png").is_file()
    assert checked in text and "passed" in text  # the verification table
    assert (exported_run / "adapter" / "chat_template.jinja").read_text().strip() in text
    assert "| train / eval rows | 18 / 6 |" in text


@pytest.mark.slow
def test_card_says_when_the_base_id_is_unknown_and_shows_base_vs_tuned_eval(exported_run, tmp_path):
    from peftsft.artifacts.card import CardTarget, model_card

    run = tmp_path / "run"
    shutil.copytree(exported_run, run, ignore=shutil.ignore_patterns("exports", "push"))
    resolved = run / "recipe.resolved.toml"
    resolved.write_text(re.sub(r'(?m)^base_id = .*\n', "", resolved.read_text()))
    results = {"base": {"eval_loss": 3.5, "perplexity": 33.1}, "tuned": {"eval_loss": 1.25, "perplexity": 3.49}}
    (run / "eval.json").write_text(json.dumps({"results": results, "rows": 6, "data": "held.jsonl"}))
    text = model_card(run, CardTarget("adapter", str(run / "adapter")))
    assert "base_model:" not in text and "Unknown" in text and "[model] base_id" in text
    assert "| eval_loss | 3.5 | 1.25 |" in text and "no verified export of the run is recorded yet" in text


# ---------------------------------------------------------------------------------------------- loading as written

LOAD = """
import json, re, sys, torch
ids = torch.tensor(json.loads(sys.argv[1]))
for card, out in zip(sys.argv[2::2], sys.argv[3::2]):
    exec(re.search(r"```python\\n(.*?)```", open(card).read(), re.S).group(1))  # the card's snippet, as written
    with torch.no_grad():
        torch.save(model(input_ids=ids).logits, out)
"""


def _into_hub_cache(hf_home: Path, repo_id: str, files: Path, absent: tuple[str, ...] = ()) -> None:
    """A local snapshot laid out as huggingface_hub keeps its cache: models--OWNER--NAME/snapshots/REV + refs/main,
    and .no_exist/REV/NAME for files the repo lacks (as an online load leaves them: AutoTokenizer asks an adapter
    repo for a config.json it does not have)."""
    repo = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    revision = "0" * 40
    shutil.copytree(files, repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    for name in absent:
        (repo / ".no_exist" / revision).mkdir(parents=True, exist_ok=True)
        (repo / ".no_exist" / revision / name).touch()


@pytest.mark.slow
def test_card_snippets_load_the_trained_model_from_a_hub_cache_offline(exported_run, tiny_model_dir, tmp_path):
    """Issue test 4: the pushed adapter folder and its base sit in a fresh HF cache (HF_HUB_OFFLINE=1): the card's
    own snippet — AutoPeftModelForCausalLM on the repo id — gives the trained logits; so do the run card's and
    the merged card's snippets."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from peftsft.artifacts.push import PushRequest, push

    folder = push(PushRequest(exported_run, "someone/tiny-pip", dry_run=True, out=tmp_path / "stage"),
                  Console(quiet=True))
    hf_home = tmp_path / "hf"
    _into_hub_cache(hf_home, TINY_BASE_ID, tiny_model_dir)
    _into_hub_cache(hf_home, "someone/tiny-pip", folder, absent=("config.json",))
    ids = [[1, 42, 7, 300, 12, 9]]
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), exported_run / "adapter")
    with torch.no_grad():
        want = tuned.eval()(input_ids=torch.tensor(ids)).logits
    cards = [folder / "README.md", exported_run / "adapter" / "README.md", exported_run / "exports/merged/README.md"]
    outs = [tmp_path / f"logits{i}.pt" for i in range(len(cards))]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "TRANSFORMERS_"))}
    env |= {"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-c", LOAD, json.dumps(ids), *[str(p) for pair in zip(cards, outs) for p in pair]]
    done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert 'from_pretrained("someone/tiny-pip")' in (folder / "README.md").read_text()
    for out in outs:
        torch.testing.assert_close(torch.load(out), want, rtol=0, atol=1e-5)
