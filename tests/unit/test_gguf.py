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
from peftsft.artifacts.export.run_models import open_run
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
        "mistral_legacy": MistralConfig(vocab_size=vocab, sliding_window=None, **DIMS),
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
    from tokenizers import pre_tokenizers
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
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="always", split=False)
    return tokenizer


# SentencePiece variants: the Metaspace prepend scheme each run's tokenizer has
SPM_SCHEMES = {"mistral": "first", "mistral_legacy": "always"}


def _with_prefix_scheme(tokenizer, scheme: str):
    import copy

    from tokenizers import pre_tokenizers

    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme=scheme, split=False)
    return tokenizer


def _make_run(root: Path, config, tokenizer) -> Path:
    """A run dir as `peftsft run` leaves it: a random base of the architecture, LoRA (all linear layers) trained
    2 steps on the persona rows through the normal path (template, masks, TRL), adapter/ and the resolved recipe."""
    from transformers import AutoModelForCausalLM

    from peftsft.artifacts.tasks import run
    from peftsft.training.recipe import load_recipe
    from tests.conftest import write_tiny_recipe

    torch.manual_seed(0)
    config.bos_token_id, config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():  # at the default init attention is uniform, which would hide a broken q/k layout, and a
        # tied head's logits are flat (max ≈ 1.7): near-ties that f16 rounding flips. Embeddings at 0.08 too.
        for name, weight in model.named_parameters():
            if weight.ndim == 2:
                weight.normal_(0.0, 0.08)
    base = root / "base"
    model.save_pretrained(base)
    tokenizer.save_pretrained(base)
    overrides = ["training.max_steps=2", "training.learning_rate=2e-2", 'strategy.target_modules="all-linear"',
                 "eval.general_check=false", "run.sample_prompts=[]"]  # fmt: skip
    summary = run(load_recipe(write_tiny_recipe(root, base), overrides), Console(quiet=True))
    return Path(summary["run_dir"])


@pytest.fixture(scope="module")
def exporter_of(tmp_path_factory, tokenizer, request):
    """variant → an Exporter of its run, built on first use and shared (its reference and merge computed once)."""
    built: dict[str, Exporter] = {}

    def get(variant: str) -> Exporter:
        if variant not in built:
            tok = _with_prefix_scheme(request.getfixturevalue("spm_tokenizer"), SPM_SCHEMES[variant]) \
                if variant in SPM_SCHEMES else tokenizer  # fmt: skip
            config = _configs(len(tok))[variant]
            run_dir = _make_run(tmp_path_factory.mktemp(variant), config, tok)
            built[variant] = Exporter(open_run(run_dir), Console(quiet=True))
        return built[variant]

    return get


# ---------------------------------------------------------------------------------------------- every architecture


@needs_llama_cpp
@pytest.mark.parametrize("variant", [
    "llama", "smollm", "qwen2", "qwen3", "gemma2", "gemma3", "phi3",
    "mistral",  # SentencePiece BPE with byte fallback, "▁" only at the input's start (Mistral v0.3)
    "mistral_legacy",  # the same with "▁" after every special token too (Llama 2's legacy tokenizer)
])  # fmt: skip
@pytest.mark.slow
def test_every_architecture_is_reproduced_in_llama_cpp(exporter_of, variant, tmp_path, monkeypatch):
    from peftsft.artifacts.export import verify

    # A random tiny model's logits are flat (max |logit| ≈ 1.7, most near 0, many near-ties), so quantization noise
    # is a far larger share of them than on a trained model (measured here: q4_k_m max Δ ≈ 0.46 of the scale and
    # greedy ≈ 40 %; q8_0 greedy 81 % on phi3). Those two are held to limits for that here; real models are held
    # to the real ones by the export itself.
    monkeypatch.setitem(verify.TOLERANCES, "gguf q4_k_m", verify.Tolerance(0.8, 0.2, 0.2))
    monkeypatch.setitem(verify.TOLERANCES, "gguf q8_0", verify.Tolerance(0.10, 0.015, 0.7))
    exporter = exporter_of(variant)
    if variant in SPM_SCHEMES:  # the run's saved tokenizer still splits the way this variant is about
        from peftsft.artifacts.export.gguf.vocab import backend

        assert backend(exporter.tokenizer)["pre_tokenizer"]["prepend_scheme"] == SPM_SCHEMES[variant]
    for quant in ("f16", "q8_0", "q4_k_m"):
        out = exporter.export(ExportJob("gguf", tmp_path / f"m.{quant}.gguf", quant=quant, modelfile=False))
        check = exporter.checks[-1]
        assert out.is_file() and check.passed and check.runtime == "llama.cpp", (quant, check)
        if quant == "f16":  # ids identical (else it had failed), f16 logits within tolerance, greedy identical
            assert check.max_diff <= TOLERANCES["gguf f16"].max_rel * check.scale
            _assert_greedy_identical_where_not_tied(exporter.reference, out)

    out = exporter.export(ExportJob("gguf-lora", tmp_path / "lora.gguf", quant="f16", modelfile=False))
    check = exporter.checks[-1]
    assert check.passed and check.runtime == "llama.cpp" and check.agreement >= 0.95, check
    assert (tmp_path / "lora.base.f16.gguf").is_file()
    _assert_the_adapter_matters(exporter.reference, tmp_path / "lora.base.f16.gguf", check.max_diff)


def _assert_the_adapter_matters(ref, base_gguf: Path, lora_error: float) -> None:
    """The 2 trained steps moved the logits far beyond the LoRA GGUF's error: a runtime that ignored the adapter
    could not have passed the check above."""
    from peftsft.artifacts.export.runtimes import LlamaCppRuntime

    runtime = LlamaCppRuntime(base_gguf)
    try:
        moved = max(float((runtime.logits(seq) - want).abs().max()) for seq, want in zip(ref.sequences, ref.logits))
    finally:
        runtime.close()
    assert moved > 10 * lora_error, (moved, lora_error)


def _assert_greedy_identical_where_not_tied(ref, gguf: Path) -> None:
    """llama.cpp's greedy choice equals the reference's at every reply position whose top two logits are further
    apart than twice that position's measured f16 error (its largest |Δ logit|): only a tie within f16's rounding
    may flip — random models have some (measured 0–1 flips of 48 positions per architecture; 42–48 positions clear
    of that bound)."""
    from peftsft.artifacts.export.runtimes import LlamaCppRuntime

    runtime = LlamaCppRuntime(gguf)
    try:
        clear_positions = total = 0
        for prompt, sequence, want in zip(ref.prompt_ids, ref.sequences, ref.logits):
            reply = slice(len(prompt) - 1, len(sequence) - 1)
            got, want = runtime.logits(sequence)[reply], want[reply]
            top2 = want.topk(2, dim=-1).values
            clear = (top2[:, 0] - top2[:, 1]) > 2 * (got - want).abs().amax(dim=-1)  # this position's f16 error
            assert torch.equal(got.argmax(-1)[clear], want.argmax(-1)[clear])
            clear_positions, total = clear_positions + int(clear.sum()), total + len(clear)
        assert clear_positions >= 0.75 * total, (clear_positions, total)  # the check is not vacuous
    finally:
        runtime.close()


# ---------------------------------------------------------------------------------------------- tokenizer


@pytest.mark.parametrize(("spec", "expected"), [
    ({"pre_tokenizer": {"type": "Metaspace", "prepend_scheme": "always"}}, True),  # Llama 2 legacy
    ({"normalizer": {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"}]}}, True),
    ({"pre_tokenizer": {"type": "Metaspace", "prepend_scheme": "first"}}, False),  # Mistral v0.3, non-legacy
    ({"pre_tokenizer": {"type": "Metaspace", "prepend_scheme": "never"}}, False),
    ({"normalizer": {"type": "Replace"}}, False),  # Gemma
])  # fmt: skip
def test_space_prefix_follows_what_transformers_does_after_a_special_token(spec, expected):
    """llama.cpp's add_space_prefix puts "▁" after every special token: right for "always", wrong for "first"."""
    from peftsft.artifacts.export.gguf.vocab import _adds_space_prefix

    assert _adds_space_prefix(spec) is expected


@needs_llama_cpp
@pytest.mark.slow
def test_a_sentencepiece_space_prefix_transformers_does_not_add_fails_the_export(exporter_of, tmp_path, monkeypatch):
    """Negative control for the mistral case: llama.cpp told to prepend "▁" after <s> splits the prompts apart."""
    import peftsft.artifacts.export.gguf.vocab as vocab

    exporter = exporter_of("mistral")
    assert vocab.backend(exporter.tokenizer)["pre_tokenizer"]["prepend_scheme"] == "first"
    monkeypatch.setattr(vocab, "_adds_space_prefix", lambda spec: True)
    with pytest.raises(UserError, match="its tokenizer splits"):
        exporter.export(ExportJob("gguf", tmp_path / "m.gguf", quant="f32", modelfile=False))
    assert not (tmp_path / "m.gguf").exists()


def test_pre_tokenizer_names_on_the_real_smollm2_vocabulary(tokenizer):
    """peftsft trains with SmolLM2's tokenizer as transformers rebuilds it from the GGUF (plain GPT-2 split); the
    Hub's tokenizer.json splits digits one by one first, which llama.cpp names "smollm"."""
    import copy

    from tokenizers import pre_tokenizers

    from peftsft.artifacts.export.gguf import llama_cpp_pre_tokenizer

    assert llama_cpp_pre_tokenizer(tokenizer) == "gpt-2"
    hub_style = copy.deepcopy(tokenizer)
    hub_style.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    assert llama_cpp_pre_tokenizer(hub_style) == "smollm"


@needs_llama_cpp
@pytest.mark.slow
def test_a_wrong_pre_tokenizer_fails_verification_on_the_real_smollm2_vocabulary(exporter_of, tmp_path, monkeypatch):
    """The smollm model carries SmolLM2's 49k vocabulary: llama.cpp must give the training token ids for the
    rendered prompts and the probe texts, and a GGUF naming another split must fail the export."""
    import peftsft.artifacts.export.gguf.vocab as vocab

    exporter = exporter_of("smollm")
    exporter.export(ExportJob("gguf", tmp_path / "m.gguf", quant="f32", modelfile=False))
    assert exporter.checks[-1].passed and exporter.checks[-1].max_diff <= 2e-3 * exporter.checks[-1].scale

    monkeypatch.setattr(vocab, "llama_cpp_pre_tokenizer", lambda tokenizer: "llama-bpe")  # Llama 3's split
    with pytest.raises(UserError, match="the gguf f32 export diverged") as err:
        exporter.export(ExportJob("gguf", tmp_path / "wrong.gguf", quant="f32", modelfile=False))
    assert "its tokenizer splits" in str(err.value) and not (tmp_path / "wrong.gguf").exists()


# ---------------------------------------------------------------------------------------------- negative controls


def _negate_tensor(path: Path, name: str) -> None:
    """Flip the sign of one tensor inside a written GGUF (f16/bf16: the sign bit of each value; q8_0: of each
    block's f16 scale) — a corrupted file that still loads."""
    import gguf
    import numpy as np

    reader = gguf.GGUFReader(path, "r+")
    tensor = next(t for t in reader.tensors if t.name == name)
    data = tensor.data.view(np.uint8).reshape(-1)
    if tensor.tensor_type == gguf.GGMLQuantizationType.Q8_0:
        data.reshape(-1, 34)[:, 1] ^= 0x80
    else:
        data.reshape(-1, 2)[:, 1] ^= 0x80
    data.flush() if hasattr(data, "flush") else reader.data.flush()


@needs_llama_cpp
@pytest.mark.parametrize("quant", ["q8_0", "bf16"])
@pytest.mark.slow
def test_a_corrupted_tensor_fails_its_quant_tolerance(exporter_of, quant, tmp_path, monkeypatch):
    import peftsft.artifacts.export.gguf as gguf_export

    real_write = gguf_export.write_gguf

    def write_then_corrupt(model, tokenizer, path, *args):
        real_write(model, tokenizer, path, *args)
        _negate_tensor(path, "blk.1.ffn_down.weight")

    monkeypatch.setattr(gguf_export, "write_gguf", write_then_corrupt)
    out = tmp_path / f"m.{quant}.gguf"
    with pytest.raises(UserError, match=f"the gguf {quant} export diverged") as err:
        exporter_of("smollm").export(ExportJob("gguf", out, quant=quant))
    assert "max |Δ logit|" in str(err.value)
    assert list(tmp_path.iterdir()) == []  # no .gguf, no Modelfile, no temporary


@needs_llama_cpp
@pytest.mark.slow
def test_a_gguf_without_the_qk_permutation_fails_in_llama_cpp(exporter_of, tmp_path, monkeypatch):
    import peftsft.artifacts.export.gguf.writer as writer

    monkeypatch.setattr(writer, "_permuted", lambda name, weights, config: weights)
    with pytest.raises(UserError, match="the gguf f16 export diverged"):
        exporter_of("llama").export(ExportJob("gguf", tmp_path / "m.gguf"))
    with pytest.raises(UserError, match="the gguf-lora export diverged"):
        exporter_of("llama").export(ExportJob("gguf-lora", tmp_path / "l.gguf"))
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------- bad input


@pytest.mark.slow
def test_bad_gguf_requests_are_one_clear_error_and_write_nothing(exporter_of, tmp_path, capsys, monkeypatch):
    import peftsft.artifacts.export.gguf.quants as quants
    from peftsft.commands.cli import main

    run_dir = str(exporter_of("smollm").run.path)
    monkeypatch.setattr(quants, "llama_cpp_importable", lambda: False)
    out = str(tmp_path / "m.gguf")
    assert main(["export", run_dir, "--format", "gguf", "--quant", "q4_k_m", "--out", out]) == 2
    err = capsys.readouterr().err
    assert "--quant q4_k_m is made by llama.cpp's own quantizer, and llama-cpp-python is not installed" in err
    assert quants.install_command().split("  (")[0] in " ".join(err.split()) and "Traceback" not in err
    with pytest.raises(SystemExit) as exit_code:  # argparse: an unknown type is refused with the list of choices
        main(["export", run_dir, "--format", "gguf", "--quant", "q2_xs", "--out", out])
    assert exit_code.value.code == 2 and "invalid choice: 'q2_xs'" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_the_install_command_fits_the_interpreter(monkeypatch):
    """The checkout's .venv: `make gguf` (setup.sh's build flags); any other interpreter: its own pip, pinned."""
    import sys

    import peftsft.artifacts.export.gguf.quants as quants

    root = Path(quants.__file__).resolve().parents[4]
    monkeypatch.setattr(sys, "prefix", str(root / ".venv"))
    assert quants.install_command().startswith(f"make -C {root} gguf")
    monkeypatch.setattr(sys, "prefix", str(root / "elsewhere"))
    assert quants.install_command().startswith(f'{sys.executable} -m pip install "llama-cpp-python')


@pytest.mark.slow
def test_unsupported_architecture_is_refused_before_any_work(tmp_path, tokenizer, capsys):
    """A GPT-2 base: refused with the reason before the merge, exit 2, nothing written."""
    from transformers import GPT2Config

    from peftsft.commands.cli import main

    config = GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=1, n_head=2, n_positions=128)
    run_dir = _make_run(tmp_path / "gpt2", config, tokenizer)
    out = tmp_path / "out"
    for fmt in ("gguf", "gguf-lora"):
        assert main(["export", str(run_dir), "--format", fmt, "--out", str(out / "m.gguf")]) == 2
        err = capsys.readouterr().err
        assert "cannot export this model as GGUF" in err and "model_type is 'gpt2'" in err and "Traceback" not in err
    assert not out.exists()


def test_cli_quant_choices_are_the_writer_s_and_the_recipe_s():
    import typing

    from peftsft.artifacts.export import formats
    from peftsft.artifacts.export.gguf import QUANTS
    from peftsft.core.config import ExportSection

    assert formats.QUANTS == tuple(QUANTS)
    assert typing.get_args(ExportSection.model_fields["quant"].annotation) == tuple(QUANTS)


def test_a_tokenizer_or_template_mismatch_fails_the_check_not_a_note():
    """Whatever runtime checks the artifact, different token ids or chat template are failures."""
    from peftsft.artifacts.export.verify import TOKENIZER_PROBES, Reference, check_artifact

    torch.manual_seed(0)
    ref = Reference(prompts=["hi"], chat_template="T", rendered=["<r>hi"], prompt_ids=[[1, 2]],
                    probe_rendered=[f"<r>{p}" for p in TOKENIZER_PROBES], probe_ids=[[5, 6]] * len(TOKENIZER_PROBES),
                    sequences=[torch.tensor([1, 2, 3])],
                    logits=[torch.randn(3, 8)], stop_ids=[3])  # fmt: skip

    class Runtime:
        runtime, chat_template = "fake", "T"
        ids = {"<r>hi": [1, 2], **{f"<r>{probe}": [5, 6] for probe in TOKENIZER_PROBES}}

        def tokenize(self, text):
            return self.ids[text]

        def logits(self, sequence):
            return ref.logits[0]

        def greedy(self, ids, stops, new_tokens):
            return ref.sequences[0]

    runtime = Runtime()
    assert check_artifact("gguf f16", runtime, ref, "gguf f16").passed
    runtime.ids = {**Runtime.ids, f"<r>{TOKENIZER_PROBES[0]}": [5, 7]}
    check = check_artifact("gguf f16", runtime, ref, "gguf f16")
    assert not check.passed and check.problems == [
        "its tokenizer splits '<r>In 2024, 3.14159 x 12 = 37.69908; cal'… differently from training "
        "(first at token 1: [7] vs [6])"
    ]
    runtime.ids, runtime.chat_template = Runtime.ids, "other"
    assert check_artifact("gguf f16", runtime, ref, "gguf f16").problems == [
        "its chat template differs from the one used in training"
    ]
