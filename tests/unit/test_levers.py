"""Speed levers change how fast a run trains, not what it learns (issue: same learning on a fixed seed)."""

import json

import pytest
from rich.console import Console

from peftsft.training.recipe import load_recipe
from tests.conftest import decide as decide_levers
from peftsft.artifacts.tasks import run

# the un-optimised path: TRL's own loss head (every position, 32768-wide slices), SDPA, peft's LoRA layers, no
# checkpointing
UNOPTIMISED = [
    "training.loss_kernel=trl",
    "training.lora_kernel=peft",
    "model.attention=sdpa",
    "training.loss_positions=all",
    "training.loss_vocab_chunk=32768",
    "training.activation_checkpointing=false",
]
# the levers that keep the batches identical, switched the other way
OPTIMISED = [
    "training.loss_kernel=auto",  # peftsft's CPU loss head
    "training.lora_kernel=auto",  # peftsft's fused LoRA layers
    "model.attention=auto",  # peftsft's CPU training attention
    "training.loss_positions=supervised",
    "training.loss_vocab_chunk=4096",
    "training.activation_checkpointing=true",
]
# relative tolerance on every logged loss and the eval loss: fp32 sums in another order (chunked head,
# recomputed activations) differ in the last bits only
SAME_LEARNING_RTOL = 1e-4


def train(tiny_recipe, name: str, overrides: list[str]) -> dict:
    common = ["training.max_steps=6", "data.eval_fraction=0.25", "training.logging_steps=1", f"run.name={name}"]
    summary = run(load_recipe(tiny_recipe(), common + overrides), Console(quiet=True))
    lines = (summary and open(f"{summary['run_dir']}/metrics.jsonl").read().splitlines()) or []
    losses = [r["loss"] for r in map(json.loads, lines) if "loss" in r]
    return {**summary, "losses": losses}


@pytest.mark.slow
def test_levers_keep_the_loss_curve_and_eval_loss(tiny_recipe):
    for sampling in ("sequential", "group_by_length"):  # the same batches on both paths, in either order
        plain = train(tiny_recipe, f"plain-{sampling}", UNOPTIMISED + [f"training.sampling={sampling}"])
        fast = train(tiny_recipe, f"fast-{sampling}", OPTIMISED + [f"training.sampling={sampling}"])
        assert len(plain["losses"]) == len(fast["losses"]) == 6
        assert fast["losses"] == pytest.approx(plain["losses"], rel=SAME_LEARNING_RTOL)
        assert fast["eval_loss"] == pytest.approx(plain["eval_loss"], rel=SAME_LEARNING_RTOL)
        assert plain["losses"][-1] < plain["losses"][0]  # it did learn
        assert fast["levers"]["activation_checkpointing"] and not plain["levers"]["activation_checkpointing"]
        assert (fast["levers"]["loss_positions"], plain["levers"]["loss_positions"]) == ("supervised", "all")
        assert (fast["levers"]["loss_kernel"], plain["levers"]["loss_kernel"]) == ("peftsft", "trl")
        assert (fast["levers"]["lora_kernel"], plain["levers"]["lora_kernel"]) == ("peftsft", "peft")
        assert (fast["levers"]["attention"], plain["levers"]["attention"]) == ("peftsft_cpu", "sdpa")


@pytest.mark.slow
def test_length_grouping_learns_as_well_as_random_batches(tiny_recipe):
    """Length-grouped batches hold the same rows per epoch in another grouping: the eval loss after two epochs
    stays within 5% of random batches'."""
    epochs = ["training.max_steps=-1", "training.epochs=2"]
    grouped = train(tiny_recipe, "grouped", epochs + ["training.sampling=group_by_length"])
    shuffled = train(tiny_recipe, "shuffled", epochs + ["training.sampling=random"])
    assert grouped["eval_loss"] == pytest.approx(shuffled["eval_loss"], rel=0.05)
    assert grouped["train_tokens"] == shuffled["train_tokens"]  # the same non-padding tokens were trained on


def test_summary_records_the_resolved_levers(tiny_recipe):
    recipe = load_recipe(tiny_recipe(), ["quantization.bits=4"])
    levers = decide_levers(recipe, "cpu", 64)
    record = levers.as_dict()
    # this machine picks fp32 where bf16 matmuls are slow, and keeps the adapters in the same dtype
    assert record["adapter_dtype"] == ("bfloat16" if record["precision"] == "bf16" else "float32")
    assert record["checkpointing_reason"].startswith("auto: ")
    assert record["loss_vocab_chunk"] == 4096 and record["sampling"] == "group_by_length"
    explicit = decide_levers(load_recipe(tiny_recipe(), ["training.activation_checkpointing=true"]), "cpu")
    assert explicit.activation_checkpointing and explicit.checkpointing_reason == "set in the recipe"


# --------------------------------------------------------------------------- precision and adapter_dtype
# bf16 keeps 8 bits of mantissa: a bf16 run follows the fp32 loss curve to within about a percent over a few steps
BF16_RTOL = 3e-2


@pytest.mark.slow
def test_precision_auto_trains_as_the_precision_it_resolves_to_and_bf16_learns_like_fp32(tiny_recipe):
    auto = train(tiny_recipe, "precision-auto", ["training.sampling=sequential"])
    resolved = auto["levers"]["precision"]
    assert resolved in ("bf16", "fp32")  # CPU: bf16 with AVX-512-BF16/AMX, fp32 elsewhere
    explicit = train(tiny_recipe, "precision-explicit", ["training.sampling=sequential", f"training.precision={resolved}"])
    assert auto["losses"] == pytest.approx(explicit["losses"], rel=SAME_LEARNING_RTOL)
    assert auto["eval_loss"] == pytest.approx(explicit["eval_loss"], rel=SAME_LEARNING_RTOL)
    other = train(tiny_recipe, "precision-other",
                  ["training.sampling=sequential", f"training.precision={'fp32' if resolved == 'bf16' else 'bf16'}"])
    bf16, fp32 = (auto, other) if resolved == "bf16" else (other, auto)
    assert bf16["losses"] != fp32["losses"]  # autocast really ran in bf16
    assert bf16["losses"] == pytest.approx(fp32["losses"], rel=BF16_RTOL)
    assert bf16["eval_loss"] == pytest.approx(fp32["eval_loss"], rel=BF16_RTOL)


def _adapter_dtypes(summary: dict) -> set[str]:
    from safetensors import safe_open

    with safe_open(f"{summary['run_dir']}/adapter/adapter_model.safetensors", "pt") as fh:
        return {str(fh.get_slice(k).get_dtype()) for k in fh.keys()}


@pytest.fixture(scope="module")
def llama64_dir(tmp_path_factory, tokenizer):
    """The tiny Llama at hidden 64: bitsandbytes quantizes in blocks of 64."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    out = tmp_path_factory.mktemp("llama64")
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.mark.slow
def test_adapter_dtype_auto_is_the_dtype_it_records_and_bf16_adapters_learn_like_fp32(tiny_recipe, llama64_dir):
    """On a 4-bit base: the adapters train (and are saved) in the dtype the levers record; auto follows precision."""
    common = [f'model.source="{llama64_dir}"', "quantization.bits=4", "training.sampling=sequential", "training.precision=fp32"]
    auto = train(tiny_recipe, "adapters-auto", common)
    assert auto["levers"]["adapter_dtype"] == "float32"  # fp32 training keeps fp32 adapters (TRL would cast to bf16)
    fp32 = train(tiny_recipe, "adapters-fp32", common + ["quantization.adapter_dtype=float32"])
    bf16 = train(tiny_recipe, "adapters-bf16", common + ["quantization.adapter_dtype=bfloat16"])
    assert (_adapter_dtypes(auto), _adapter_dtypes(fp32), _adapter_dtypes(bf16)) == ({"F32"}, {"F32"}, {"BF16"})
    assert auto["losses"] == pytest.approx(fp32["losses"], rel=SAME_LEARNING_RTOL)
    assert bf16["losses"] == pytest.approx(fp32["losses"], rel=BF16_RTOL)
    assert bf16["eval_loss"] == pytest.approx(fp32["eval_loss"], rel=BF16_RTOL)


# bf16 rounds every matmul output to 8 bits of mantissa: a bf16 base against an fp32 one (both under bf16
# autocast) agrees to about a percent over a few steps, no closer
BF16_BASE_RTOL = 2e-2


@pytest.mark.slow
def test_padding_free_batches_and_fused_adamw_keep_the_loss_curve(tiny_recipe):
    """The same samples per step, flattened with restarting position ids instead of padded, and AdamW's fused
    kernel instead of its loop: in fp32 only the summation order changes."""
    common = UNOPTIMISED + ["training.precision=fp32", "training.sampling=sequential"]
    plain = train(tiny_recipe, "padded", common + ["training.padding_free=false", "training.optim=adamw_torch"])
    fast = train(tiny_recipe, "flat", common + ["training.padding_free=true", "training.optim=adamw_torch_fused"])
    assert len(plain["losses"]) == len(fast["losses"]) == 6
    assert fast["losses"] == pytest.approx(plain["losses"], rel=SAME_LEARNING_RTOL)
    assert fast["eval_loss"] == pytest.approx(plain["eval_loss"], rel=SAME_LEARNING_RTOL)
    assert fast["train_tokens"] == plain["train_tokens"]  # every real token counted, none dropped or added
    assert fast["levers"]["padding_free"] and not plain["levers"]["padding_free"]
    assert (fast["levers"]["optimizer"], plain["levers"]["optimizer"]) == ("adamw_torch_fused", "adamw_torch")


@pytest.mark.slow
def test_bf16_frozen_base_learns_like_the_fp32_base(tiny_recipe):
    """A bf16 copy of the frozen base under bf16 autocast: the same learning within bf16's rounding."""
    common = UNOPTIMISED + ["training.precision=bf16", "training.sampling=sequential"]
    plain = train(tiny_recipe, "fp32-base", common + ["training.base_dtype=float32"])
    fast = train(tiny_recipe, "bf16-base", common + ["training.base_dtype=bfloat16"])
    assert fast["losses"] == pytest.approx(plain["losses"], rel=BF16_BASE_RTOL)
    assert fast["eval_loss"] == pytest.approx(plain["eval_loss"], rel=BF16_BASE_RTOL)
    assert (fast["levers"]["base_dtype"], plain["levers"]["base_dtype"]) == ("bfloat16", "float32")


