"""GGUF export of every supported architecture, proven in llama.cpp itself (llama-cpp-python).

Each model is random-initialised from its transformers config class with small dims whose rows K-quants accept
(multiples of 256), a real tokenizer (SmolLM2's byte-level BPE; for Mistral a SentencePiece model trained here
with the `sentencepiece` trainer), and a LoRA whose B matrices are perturbed (not trained: the same adapter
structure at a fraction of the cost). The run dir is what `peftsft run` leaves: recipe.resolved.toml + adapter/.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from rich.console import Console

from peftsft.core.errors import UserError
from peftsft.artifacts.export.pipeline import Exporter, ExportJob
from peftsft.artifacts.export.runs import open_run
from peftsft.artifacts.export.verify import TOLERANCES

from peftsft.artifacts.export.runtimes import llama_cpp_importable

needs_llama_cpp = pytest.mark.skipif(not llama_cpp_importable(),
                                     reason="llama-cpp-python is not installed (pip install -e '.[gguf]')")

DIMS = dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=512)  # fmt: skip
MISTRAL_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}{{ '[INST] ' + m['content'] + ' [/INST]' }}"
    "{% else %}{{ m['content'] + eos_token }}{% endif %}{% endfor %}"
)


def _configs(vocab: int) -> dict:
    """model_type variant → config: every architecture, with the features llama.cpp must reproduce."""
    from transformers import (Gemma2Config, Gemma3TextConfig, LlamaConfig, MistralConfig, Phi3Config, Qwen2Config,
                              Qwen3Config)  # fmt: skip

    llama3 = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
              "high_freq_factor": 4.0, "original_max_position_embeddings": 64}  # fmt: skip
    sliding = dict(sliding_window=16, query_pre_attn_scalar=64, head_dim=64)
    return {
        "llama": LlamaConfig(vocab_size=vocab, rope_parameters=llama3, tie_word_embeddings=False, **DIMS),
        "smollm": LlamaConfig(vocab_size=vocab, tie_word_embeddings=True, **DIMS),
        "mistral": MistralConfig(vocab_size=vocab, sliding_window=None, **DIMS),
        "qwen2": Qwen2Config(vocab_size=vocab, tie_word_embeddings=True,
                             rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}, **DIMS),
        "qwen3": Qwen3Config(vocab_size=vocab, head_dim=64, tie_word_embeddings=True, **DIMS),
        "gemma2": Gemma2Config(vocab_size=vocab, final_logit_softcapping=30.0, attn_logit_softcapping=50.0,
                               **sliding, **DIMS),
        "gemma3": Gemma3TextConfig(vocab_size=vocab, final_logit_softcapping=None,
                                   layer_types=["sliding_attention", "full_attention"], **sliding, **DIMS),
        "phi3": Phi3Config(vocab_size=vocab, pad_token_id=None, sliding_window=None, **DIMS),
    }


@pytest.fixture(scope="module")
def spm_tokenizer(tmp_path_factory):
    """A 600-piece SentencePiece BPE (byte fallback, like Llama 2 / Mistral) trained on the persona data."""
    import sentencepiece as spm
    from transformers import AutoTokenizer

    import tests.conftest as conftest

    rows = [json.loads(line) for line in conftest._persona_rows(300)]
    text = [m["content"] for row in rows for m in row["messages"]]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(text), model_writer=model, vocab_size=600,
                                   model_type="bpe", byte_fallback=True, character_coverage=1.0, unk_id=0, bos_id=1,
                                   eos_id=2, pad_id=-1, num_threads=1, minloglevel=2)  # fmt: skip
    folder = tmp_path_factory.mktemp("spm")
    (folder / "tokenizer.model").write_bytes(model.getvalue())
    # legacy: "▁" after every special token too, as llama.cpp's SentencePiece tokenizer does
    config = {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
              "legacy": True, "chat_template": MISTRAL_TEMPLATE}  # fmt: skip
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return AutoTokenizer.from_pretrained(folder)


def _make_run(root: Path, config, tokenizer) -> Path:
    """A run dir as training leaves it: the base model dir, recipe.resolved.toml, adapter/ (LoRA, B perturbed)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from peftsft.core.config import recipe_to_toml
    from peftsft.training.recipe import load_recipe
    from tests.conftest import write_tiny_recipe

    torch.manual_seed(0)
    config.bos_token_id, config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():  # at the default init attention is uniform, which would hide a broken q/k layout
        for name, weight in model.named_parameters():
            if weight.ndim == 2 and "embed" not in name:
                weight.normal_(0.0, 0.08)
    base = root / "base"
    model.save_pretrained(base)
    tokenizer.save_pretrained(base)
    recipe = load_recipe(write_tiny_recipe(root, base))
    run_dir = recipe.run_dir
    run_dir.mkdir(parents=True)
    (run_dir / "recipe.resolved.toml").write_text(recipe_to_toml(recipe))
    lora = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    with torch.no_grad():
        for name, weight in lora.named_parameters():
            if "lora_B" in name:
                weight.normal_(0.0, 0.05)
    lora.save_pretrained(run_dir / "adapter")
    tokenizer.save_pretrained(run_dir / "adapter")
    return run_dir


@pytest.fixture(scope="module")
def exporters(tmp_path_factory, tokenizer, spm_tokenizer) -> dict[str, Exporter]:
    built = {}
    for variant, config in _configs(len(tokenizer)).items():
        tok = spm_tokenizer if variant == "mistral" else tokenizer
        if variant == "mistral":
            config.vocab_size = len(tok)
        run_dir = _make_run(tmp_path_factory.mktemp(variant), config, tok)
        built[variant] = Exporter(open_run(run_dir), Console(quiet=True))
    return built


# ---------------------------------------------------------------------------------------------- every architecture


@needs_llama_cpp
@pytest.mark.parametrize("variant", ["llama", "smollm", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "phi3"])
def test_every_architecture_is_reproduced_in_llama_cpp(exporters, variant, tmp_path):
    exporter = exporters[variant]
    for quant in ("f16", "q8_0", "q4_k_m"):
        out = exporter.export(ExportJob("gguf", tmp_path / f"m.{quant}.gguf", quant=quant, modelfile=False))
        check = exporter.checks[-1]
        assert out.is_file() and check.passed and check.runtime == "llama.cpp", (quant, check)
        if quant == "f16":  # ids identical (else it had failed), f16 logits within tolerance, greedy identical
            assert check.max_diff <= TOLERANCES["gguf f16"].max_rel * check.scale
            assert check.agreement == 1.0 and check.same_replies == check.prompts

    out = exporter.export(ExportJob("gguf-lora", tmp_path / "lora.gguf", quant="f16", modelfile=False))
    check = exporter.checks[-1]
    assert check.passed and check.runtime == "llama.cpp" and check.agreement == 1.0, check
    assert (tmp_path / "lora.base.f16.gguf").is_file()
