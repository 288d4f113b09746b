"""merge / export on a tiny trained LoRA: merged ≡ adapter, GGUF round-trips, Modelfile, atomic writes, and
verification that catches a broken artifact.

The tiny Llama here has its own 512-token byte-level BPE vocabulary (trained on the persona data, with SmolLM2's
chat template): re-reading a GGUF with a 49k vocabulary costs ~10 s per pass in the `gguf` reader.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from rich.console import Console

from peftsft.core.errors import UserError
from peftsft.artifacts.export.formats import merged as merged_format
from peftsft.artifacts.export.pipeline import Exporter, ExportJob, export_run
from peftsft.artifacts.export.run_models import open_run
from peftsft.artifacts.export.template import ollama_template, stop_tokens, turn_format
from peftsft.artifacts.export.verify import TOLERANCES

# the metadata a llama.cpp-converted Llama GGUF carries, as in SmolLM2's (provenance keys like license left out)
GGUF_KEYS = {
    "general.architecture", "general.type", "general.name", "general.file_type", "general.quantization_version",
    "llama.block_count", "llama.context_length", "llama.embedding_length", "llama.feed_forward_length",
    "llama.attention.head_count", "llama.attention.head_count_kv", "llama.rope.freq_base",
    "llama.attention.layer_norm_rms_epsilon", "llama.vocab_size", "llama.rope.dimension_count",
    "tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type",
    "tokenizer.ggml.merges", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.padding_token_id", "tokenizer.ggml.add_bos_token",
    "tokenizer.ggml.add_space_prefix", "tokenizer.chat_template",
}  # fmt: skip


@pytest.fixture(scope="module")
def small_model_dir(tmp_path_factory, tokenizer) -> Path:
    """A 2-layer hidden-32 Llama with a 512-token byte-level BPE tokenizer and SmolLM2's chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    import tests.conftest as conftest

    rows = [json.loads(line) for line in conftest._persona_rows(300)]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator((m["content"] for row in rows for m in row["messages"]), trainer)
    small = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<|im_start|>", eos_token="<|im_end|>", unk_token="<|endoftext|>",
        pad_token="<|im_end|>",
    )  # fmt: skip
    small.chat_template = tokenizer.chat_template
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(small), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True,
        bos_token_id=small.bos_token_id, eos_token_id=small.eos_token_id, pad_token_id=small.pad_token_id,
    )  # fmt: skip
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # at the default init attention is uniform, which would hide a broken q/k layout
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.normal_(0.0, 0.5)
            layer.self_attn.k_proj.weight.normal_(0.0, 0.5)
    out = tmp_path_factory.mktemp("small-llama")
    model.save_pretrained(out)
    small.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory, small_model_dir) -> tuple[Path, dict]:
    """One 3-step LoRA run whose recipe also asks for an adapter export after training."""
    from peftsft.training.recipe import load_recipe
    from peftsft.artifacts.tasks import run

    from tests.conftest import write_tiny_recipe

    extra = 'sample_prompts = ["How do I start a run?"]\nsample_max_new_tokens = 4\n[export]\nformats = ["adapter"]'
    recipe = write_tiny_recipe(tmp_path_factory.mktemp("export-run"), small_model_dir, extra)
    summary = run(load_recipe(recipe), Console(quiet=True))
    return Path(summary["run_dir"]), summary


@pytest.fixture(scope="module")
def exporter(trained) -> Exporter:
    """Shared across tests so the reference (base + adapter) and the merged model are computed once."""
    return Exporter(open_run(trained[0]), Console(quiet=True))


@pytest.fixture(scope="module")
def gguf_f16(exporter, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gguf") / "model.f16.gguf"
    exporter.export(ExportJob("gguf", out, quant="f16"))
    return out


def last_check(exporter: Exporter):
    return exporter.checks[-1]


def adapter_logits(run_dir: Path, base_dir: Path, ids: torch.Tensor) -> torch.Tensor:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), run_dir / "adapter").eval()
    with torch.no_grad():
        return tuned(input_ids=ids).logits


# ---------------------------------------------------------------------------------------------- merge


@pytest.mark.slow
def test_merged_fp32_equals_adapter_and_loads_with_plain_transformers(exporter, trained, small_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = exporter.export(ExportJob("merged", tmp_path / "merged", dtype="float32"))
    check = last_check(exporter)
    assert check.passed and check.max_diff < 1e-4 and check.agreement == 1.0

    model = AutoModelForCausalLM.from_pretrained(out).eval()  # nothing but the dir
    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = torch.tensor([tokenizer.apply_chat_template([{"role": "user", "content": "Who are you?"}],
                                                     add_generation_prompt=True, return_dict=True)["input_ids"]])
    with torch.no_grad():
        merged = model(input_ids=ids).logits
    assert (merged - adapter_logits(trained[0], small_model_dir, ids)).abs().max() < 1e-4
    assert model.dtype == torch.float32 and not hasattr(model, "peft_config")

    training_template = (trained[0] / "adapter" / "chat_template.jinja").read_text()
    assert tokenizer.chat_template == training_template
    assert model.generation_config.eos_token_id in (tokenizer.convert_tokens_to_ids("<|im_end|>"),
                                                    [tokenizer.convert_tokens_to_ids("<|im_end|>")])
    names = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json"} <= names
    assert "recipe.resolved.toml" in names and not any(n.endswith(".bin") for n in names)


@pytest.mark.slow
def test_merged_bfloat16_stores_bfloat16_and_passes_its_tolerance(exporter, tmp_path):
    from safetensors import safe_open

    out = exporter.export(ExportJob("merged", tmp_path / "merged-bf16", dtype="bfloat16"))
    with safe_open(out / "model.safetensors", "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    check = last_check(exporter)
    assert check.passed and check.tolerance_name == "bfloat16"
    assert check.max_diff > 0  # rounding to bf16 is visible, and within the stated tolerance


@pytest.mark.slow
def test_4bit_run_merges_into_its_dequantized_base_not_the_original_weights(trained, small_model_dir, tmp_path):
    """The adapter of a 4-bit run was trained against the 4-bit weights: the merge must fold it into those."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from peftsft.artifacts.export.run_models import load_tuned

    run_dir = shutil.copytree(trained[0], tmp_path / "run", ignore=shutil.ignore_patterns("exports", "checkpoints"))
    recipe = run_dir / "recipe.resolved.toml"
    recipe.write_text(recipe.read_text().replace("[quantization]\n", "[quantization]\nbits = 4\n"))
    run = open_run(run_dir)
    assert run.quantized
    # verified by hand below on one sequence (bitsandbytes' 4-bit CPU matmuls make the full check slow)
    out = Exporter(run, Console(quiet=True), verify=False).export(ExportJob("merged", tmp_path / "m", dtype="float32"))

    ids = torch.tensor([list(range(3, 40))])
    merged = AutoModelForCausalLM.from_pretrained(out)
    as_trained = load_tuned(run)  # the 4-bit base (computing in float32) + adapter
    naive = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(small_model_dir), run_dir / "adapter")
    with torch.no_grad():
        want = as_trained(input_ids=ids).logits
        assert (merged(input_ids=ids).logits - want).abs().max() < 1e-4
        assert (naive.merge_and_unload()(input_ids=ids).logits - want).abs().max() > 1e-2


# ---------------------------------------------------------------------------------------------- GGUF


@pytest.mark.slow
def test_gguf_f16_reloads_through_transformers_and_matches(exporter, gguf_f16):
    from transformers import AutoModelForCausalLM
    from transformers.integrations.gguf import read_gguf_metadata

    check = next(c for c in exporter.checks if c.artifact == "gguf f16")
    assert check.passed and check.agreement == 1.0
    assert check.max_diff <= TOLERANCES["gguf f16"].max_rel * check.scale

    metadata, tensors = read_gguf_metadata(str(gguf_f16))
    assert GGUF_KEYS <= set(metadata)
    assert metadata["general.architecture"] == "llama" and metadata["tokenizer.ggml.model"] == "gpt2"
    assert metadata["tokenizer.chat_template"] == exporter.tokenizer.chat_template
    assert "output.weight" not in tensors  # tied embeddings, as llama.cpp writes them
    assert {"token_embd.weight", "blk.1.attn_q.weight", "output_norm.weight"} <= set(tensors)

    # re-loaded independently of the exporter: same logits as base + adapter on the reference's tokens
    model = AutoModelForCausalLM.from_pretrained(gguf_f16.parent, gguf_file=gguf_f16.name, dtype=torch.float32)
    reference = exporter.reference
    with torch.no_grad():
        got = model.eval()(input_ids=reference.sequences[0][None]).logits[0]
    assert (got - reference.logits[0]).abs().max() <= TOLERANCES["float16"].max_rel * reference.scale


@pytest.mark.slow
def test_gguf_q8_0_is_quantized_and_within_its_stated_tolerance(exporter, tmp_path):
    import gguf

    out = exporter.export(ExportJob("gguf", tmp_path / "model.q8_0.gguf", quant="q8_0"))
    check = last_check(exporter)
    assert check.passed and check.tolerance_name == "gguf q8_0"
    assert check.max_diff <= TOLERANCES["gguf q8_0"].max_rel * check.scale
    types = {t.name: t.tensor_type for t in gguf.GGUFReader(out).tensors}
    assert types["blk.0.attn_q.weight"] == gguf.GGMLQuantizationType.Q8_0
    assert types["token_embd.weight"] == gguf.GGMLQuantizationType.Q8_0
    assert types["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32


@pytest.mark.slow
def test_modelfile_carries_the_training_template_and_stop_tokens(exporter, gguf_f16):
    text = gguf_f16.with_suffix(".Modelfile").read_text()
    lines = text.splitlines()
    assert "FROM ./model.f16.gguf" in lines
    assert 'PARAMETER stop "<|im_end|>"' in lines
    assert 'SYSTEM """You are a helpful AI assistant named SmolLM, trained by Hugging Face"""' in lines
    template = text.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    assert template == ollama_template(turn_format(exporter.tokenizer))
    assert '{{ else if eq $m.Role "user" }}<|im_start|>user\n{{ $m.Content }}<|im_end|>\n' in template
    assert template.endswith('(ne $m.Role "assistant") }}<|im_start|>assistant\n{{ end }}{{ end }}')


def test_turn_format_reads_other_templates_and_refuses_what_ollama_cannot_express(small_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(small_model_dir)
    tokenizer.chat_template = (
        "{{ bos_token }}{% for m in messages %}{{ '<|endoftext|>' + m['role'] + '\n' + m['content'] | trim + "
        "'<|im_end|>' }}{% endfor %}{% if add_generation_prompt %}{{ '<|endoftext|>assistant\n' }}{% endif %}"
    )
    fmt = turn_format(tokenizer)
    assert fmt.start == "<|im_start|>" and fmt.default_system is None
    assert fmt.prefix["user"] == "<|endoftext|>user\n" and fmt.generation == "<|endoftext|>assistant\n"
    assert [text for _, text in stop_tokens(tokenizer)] == ["<|im_end|>"]

    tokenizer.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system role') }}{% endif %}"
        "{{ m['content'] }}{% endfor %}"
    )
    with pytest.raises(UserError, match="Ollama template") as err:
        turn_format(tokenizer)
    assert "no system role" in str(err.value) and "--no-modelfile" in str(err.value)


def test_gguf_export_refuses_architectures_llama_cpp_names_differently():
    from types import SimpleNamespace

    from peftsft.artifacts.export.gguf import check_exportable

    with pytest.raises(UserError, match="cannot export this model as GGUF") as err:
        check_exportable(SimpleNamespace(model_type="gpt2", rope_parameters={}))
    assert "'gpt2'" in str(err.value) and "--format merged" in str(err.value)
    with pytest.raises(UserError, match="rope scaling 'dynamic' is not exported"):
        check_exportable(SimpleNamespace(model_type="llama", rope_parameters={"rope_type": "dynamic"}))


# ---------------------------------------------------------------------------------------------- verification


@pytest.mark.slow
def test_verify_catches_a_corrupted_merged_model(exporter, tmp_path, monkeypatch):
    from safetensors.torch import load_file, save_file

    import peftsft.artifacts.export.merge as merge

    real_save = merge.save_merged

    def save_then_corrupt(model, tokenizer, directory, dtype):
        real_save(model, tokenizer, directory, dtype)
        weights = load_file(directory / "model.safetensors")
        weights["model.layers.1.mlp.down_proj.weight"] *= 1.5  # a bit flip or a bad conversion
        save_file(weights, directory / "model.safetensors", metadata={"format": "pt"})

    monkeypatch.setattr(merge, "save_merged", save_then_corrupt)
    out = tmp_path / "merged"
    with pytest.raises(UserError, match="the merged float32 export diverged") as err:
        exporter.export(ExportJob("merged", out, dtype="float32"))
    assert "max |Δ logit|" in str(err.value) and not out.exists()


@pytest.mark.slow
def test_verify_catches_a_gguf_without_the_llama_cpp_qk_permutation(exporter, tmp_path, monkeypatch):
    import peftsft.artifacts.export.gguf.writer as gguf_writer

    monkeypatch.setattr(gguf_writer, "_permuted", lambda name, weights, config: weights)
    out = tmp_path / "model.gguf"
    with pytest.raises(UserError, match="the gguf f16 export diverged"):
        exporter.export(ExportJob("gguf", out))
    assert list(tmp_path.iterdir()) == []  # no .gguf, no Modelfile, no temp file


# ---------------------------------------------------------------------------------------------- atomic writes


@pytest.mark.slow
def test_interrupted_merge_leaves_nothing_at_out(exporter, tmp_path, monkeypatch):
    def interrupted(directory):
        assert (directory / "model.safetensors").is_file()  # the weights were written: interrupt after that
        raise KeyboardInterrupt

    monkeypatch.setattr(merged_format, "load_merged_dir", interrupted)
    with pytest.raises(KeyboardInterrupt):
        exporter.export(ExportJob("merged", tmp_path / "merged", dtype="float32"))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_failed_gguf_write_leaves_nothing_at_out(exporter, tmp_path, monkeypatch):
    import peftsft.artifacts.export.gguf as gguf_export

    def half_written(model, tokenizer, path, *args):
        path.write_bytes(b"GGUF partial")
        raise OSError("disk full")

    monkeypatch.setattr(gguf_export, "write_gguf", half_written)
    with pytest.raises(OSError, match="disk full"):
        exporter.export(ExportJob("gguf", tmp_path / "model.gguf"))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_existing_out_is_refused_unless_forced(exporter, tmp_path):
    out = tmp_path / "adapter"
    out.mkdir()
    (out / "old.txt").write_text("keep me unless --force")
    with pytest.raises(UserError, match="already exists") as err:
        exporter.export(ExportJob("adapter", out))
    assert "--force" in str(err.value) and (out / "old.txt").is_file()

    exporter.export(ExportJob("adapter", out), force=True)
    assert not (out / "old.txt").exists() and (out / "adapter_model.safetensors").is_file()
    assert last_check(exporter).passed and last_check(exporter).max_diff == 0.0


# ---------------------------------------------------------------------------------------------- runs and CLI


@pytest.mark.slow
def test_recipe_export_section_runs_after_training(trained):
    run_dir, summary = trained
    exported = run_dir / "exports" / "adapter"
    assert summary["exports"] == [str(exported)]
    assert (exported / "adapter_config.json").is_file() and (exported / "chat_template.jinja").is_file()
    assert json.loads((run_dir / "summary.json").read_text())["exports"] == [str(exported)]


@pytest.mark.slow
def test_non_mergeable_strategy_refuses_merge_but_exports_its_adapter(trained, tmp_path, monkeypatch):
    from peftsft.strategies import registry
    from peftsft.strategies.lora import LORA

    no_merge = dataclasses.replace(LORA, name="nomerge", can_merge=False, cannot_merge_reason="it is a test")
    monkeypatch.setitem(registry._REGISTRY, "nomerge", no_merge)
    run_dir = shutil.copytree(trained[0], tmp_path / "run", ignore=shutil.ignore_patterns("exports", "checkpoints"))
    recipe = run_dir / "recipe.resolved.toml"
    recipe.write_text(recipe.read_text().replace('name = "lora"', 'name = "nomerge"'))

    console = Console(quiet=True)
    for fmt, out in (("merged", tmp_path / "merged"), ("gguf", tmp_path / "m.gguf")):
        with pytest.raises(UserError, match="'nomerge' cannot be merged into the base model: it is a test") as err:
            export_run(run_dir, [ExportJob(fmt, out)], console)
        assert "--format adapter" in str(err.value) and not out.exists()
    (written,) = export_run(run_dir, [ExportJob("adapter", tmp_path / "adapter")], console)
    assert (written / "adapter_model.safetensors").is_file()


@pytest.mark.slow
def test_cli_errors_are_clean(trained, tmp_path, capsys):
    from peftsft.commands.cli import main

    existing = tmp_path / "merged"
    existing.mkdir()
    cases = [
        (["merge", str(trained[0]), "--out", str(existing)], "already exists"),
        (["export", str(trained[0]), "--format", "gguf", "--out", str(tmp_path / "model.bin")], "ending in .gguf"),
        (["export", str(trained[0]), "--format", "adapter", "--quant", "q8_0", "--out", str(tmp_path / "a")],
         "--quant applies to --format gguf"),
        (["merge", str(tmp_path), "--out", str(tmp_path / "x")], "not a run directory"),
    ]  # fmt: skip
    for argv, message in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged"]


# ---------------------------------------------------------------------------------------------- bad inputs (#40 B)


def _copy_run(trained, tmp_path: Path) -> Path:
    return shutil.copytree(trained[0], tmp_path / "run", ignore=shutil.ignore_patterns("exports", "checkpoints"))


def _chat(run_dir: Path, monkeypatch) -> list[str]:
    import io
    import sys

    monkeypatch.setattr(sys, "stdin", io.StringIO("hi\n"))
    return ["chat", str(run_dir), "--max-new-tokens", "2"]


def test_a_damaged_adapter_is_one_clear_error_naming_the_file(trained, tmp_path, capsys, monkeypatch):
    """A truncated adapter_model.safetensors or a cut-short adapter_config.json: export, merge and chat each exit 2
    with the file's name and the fix, and write nothing."""
    from peftsft.commands.cli import main

    run_dir = _copy_run(trained, tmp_path)
    weights, config = run_dir / "adapter" / "adapter_model.safetensors", run_dir / "adapter" / "adapter_config.json"
    weights.write_bytes(weights.read_bytes()[:2000])
    out = tmp_path / "out"
    commands = [["export", str(run_dir), "--format", "adapter", "--out", str(out)],
                ["merge", str(run_dir), "--out", str(out)], _chat(run_dir, monkeypatch)]
    for argv in commands:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert f"{weights}: cannot be read" in err and "copy the run's adapter/ again" in err, (argv, err)
        assert "Traceback" not in err
    config.write_text(config.read_text()[:100])
    for argv in commands[:2] + [_chat(run_dir, monkeypatch)]:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert f"{config}: not valid JSON" in err and "Traceback" not in err, (argv, err)
    assert not out.exists()


def test_an_uncached_hub_base_names_the_id_and_how_to_get_it(trained, tmp_path, capsys, monkeypatch):
    """Offline, a `[model] source` Hub id that is not in the cache: one message naming it, for every command."""
    from peftsft.commands.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    run_dir = _copy_run(trained, tmp_path)
    recipe = run_dir / "recipe.resolved.toml"
    recipe.write_text(re.sub(r'(?m)^source = ".*"$', 'source = "someone/not-cached-model"', recipe.read_text()))
    out = tmp_path / "out"
    for argv in (["export", str(run_dir), "--format", "adapter", "--out", str(out)],
                 ["merge", str(run_dir), "--out", str(out)],
                 ["export", str(run_dir), "--format", "gguf", "--out", str(out / "m.gguf")],
                 _chat(run_dir, monkeypatch)):  # fmt: skip
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "'someone/not-cached-model' is a Hugging Face Hub id that is not in the local cache" in err, err
        assert "hf download someone/not-cached-model" in err and "HF_HUB_OFFLINE" in err and "Traceback" not in err
    assert not out.exists()


def test_out_under_a_file_or_on_a_read_only_disk_is_one_clear_error(trained, tmp_path, capsys, monkeypatch):
    """--out notes.txt/adapter where notes.txt is a file; a disk that refuses the write: the hint names --out."""
    import errno

    import peftsft.core.rundir.files as files
    from peftsft.commands.cli import main

    notes = tmp_path / "notes.txt"
    notes.write_text("my notes")
    for argv in (["export", str(trained[0]), "--format", "adapter", "--out", str(notes / "adapter")],
                 ["export", str(trained[0]), "--format", "gguf", "--out", str(notes / "m.gguf")],
                 ["merge", str(trained[0]), "--out", str(notes / "merged")]):  # fmt: skip
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert f"--out {notes}/" in err and f"{notes} is a file, not a folder" in err and "Traceback" not in err, err
    assert notes.read_text() == "my notes"

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path / "ro"))

    monkeypatch.setattr(files.tempfile, "mkdtemp", read_only)
    for command in (["merge"], ["export", "--format", "adapter"]):
        assert main([command[0], str(trained[0]), *command[1:], "--out", str(tmp_path / "ro" / "x")]) == 2
        err = capsys.readouterr().err
        assert "Read-only file system" in err and "choose another place with --out" in err, err
        assert "--output" not in err and "Traceback" not in err
