"""`peftsft plan`: the memory estimate's parts behave, the activation formula matches autograd, the CLI works.

That the estimate is close to a measured run is checked in test_benchmark.py, on the benchmark's own run.
"""

import json
import warnings

import pytest
import torch

from peftsft.commands.cli import main
from peftsft.training.recipe import load_recipe
from peftsft.models import quantized_layer_bytes
from peftsft.levers.activations import layer_activation_elements
from peftsft.levers.memory import Dims
from peftsft.training.plan import estimate


def write_recipe(tmp_path, model_dir, strategy: str = "lora") -> str:
    import tests.conftest as conftest

    data = conftest.write_jsonl(tmp_path / "train.jsonl", conftest._persona_rows(8))
    path = tmp_path / f"{strategy}.toml"
    path.write_text(
        f"""
[model]
source = "{model_dir}"
[strategy]
name = "{strategy}"
[[data.datasets]]
path = "{data}"
[data]
max_length = 128
[training]
batch_size = 4
[run]
output_dir = "{tmp_path / 'runs'}"
"""
    )
    return str(path)


@pytest.fixture
def plan_of(tmp_path, tiny_model_dir):
    def make(*overrides: str, strategy: str = "lora", **kwargs):
        recipe = load_recipe(write_recipe(tmp_path, tiny_model_dir, strategy), list(overrides))
        return estimate(recipe, "cpu", **kwargs)

    return make


def test_full_trains_everything_lora_a_sliver(plan_of):
    full, lora = plan_of(strategy="full"), plan_of()
    assert full.trainable_params == full.total_params
    assert 0 < lora.trainable_params < full.trainable_params / 10
    # AdamW: fp32 gradients and two fp32 states per trainable parameter
    assert full.components["gradients"] == 4 * full.trainable_params
    assert full.components["optimizer"] == 2 * full.components["gradients"]
    assert lora.components["gradients"] == 4 * lora.trainable_params
    assert full.peak_bytes > lora.peak_bytes


def test_quantized_base_counts_packed_weights(plan_of):
    fp32 = "training.precision=fp32"  # "auto" adapters follow the CPU kind (bf16 where it has fast bf16): fix them
    plain, qlora = plan_of(fp32), plan_of(fp32, "quantization.bits=4")
    bf16_adapters = plan_of(fp32, "quantization.bits=4", "quantization.adapter_dtype=bfloat16")
    assert qlora.quantized_params > 0
    # the quantized linears shrink from 4 bytes to the bytes bitsandbytes holds for them (exactly, layer by layer:
    # test_quantization checks those against the measured layers); fp32 training keeps fp32 adapters ("auto"),
    # while bfloat16 adapters (TRL's QLoRA default) halve theirs
    held = sum(quantized_layer_bytes(shape, 4, True) for shape in _tiny_linear_shapes())
    assert sum(a * b for a, b in _tiny_linear_shapes()) == qlora.quantized_params
    assert plain.components["weights"] - qlora.components["weights"] == 4 * qlora.quantized_params - held
    assert qlora.components["weights"] - bf16_adapters.components["weights"] == 2 * qlora.trainable_params
    assert qlora.trainable_params == plain.trainable_params
    assert qlora.components["gradients"] == 4 * qlora.trainable_params
    assert bf16_adapters.components["gradients"] == 2 * qlora.trainable_params


def _tiny_linear_shapes() -> list[tuple[int, int]]:
    """[out, in] of the tiny Llama's linear layers (conftest: hidden 64, MLP 128, 4 heads, 2 KV heads, 2 layers)."""
    per_layer = [(64, 64), (32, 64), (32, 64), (64, 64), (128, 64), (128, 64), (64, 128)]
    return per_layer * 2


def test_quantized_adapters_follow_the_precision_auto_picks(plan_of, monkeypatch):
    import peftsft.levers.precision as precision

    for fast_bf16, dtype in ((True, 2), (False, 4)):  # an AVX-512-BF16/AMX CPU trains in bf16, an AVX2 one in fp32
        monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda fast=fast_bf16: fast)
        qlora = plan_of("quantization.bits=4")
        assert qlora.precision == ("bf16" if fast_bf16 else "fp32")
        assert qlora.components["gradients"] == dtype * qlora.trainable_params


def test_checkpointing_auto_turns_on_only_when_memory_needs_it(plan_of, monkeypatch):
    import peftsft.levers.checkpointing as plan_module

    roomy = plan_of()  # the tiny model in this machine's free RAM: off, and the reason names the numbers
    assert not roomy.checkpointing and roomy.checkpointing_reason.startswith("auto: off")
    assert "needed without it" in roomy.checkpointing_reason and "available (on above 80%)" in roomy.checkpointing_reason
    # activations that outweigh everything else are no reason on their own while memory is plentiful
    dominated = plan_of("training.batch_size=64", "training.loss_vocab_chunk=256")
    assert not dominated.checkpointing
    just_fits = int(roomy.training_peak_bytes / plan_module.THRESHOLD) + 1  # checkpointing helps training only
    monkeypatch.setattr(plan_module, "memory_available", lambda device: just_fits)
    assert not plan_of().checkpointing  # at 80% of the available memory: still off
    monkeypatch.setattr(plan_module, "memory_available", lambda device: just_fits - 2)
    tight = plan_of()  # past 80%: on
    assert tight.checkpointing and tight.checkpointing_reason.startswith("auto: on, without it")
    assert "over 80%" in tight.checkpointing_reason and "with it ~" in tight.checkpointing_reason
    assert tight.components["activations"] < roomy.components["activations"]
    assert tight.components["activations"] == plan_of("training.activation_checkpointing=true").components["activations"]
    assert not plan_of("training.activation_checkpointing=false").checkpointing  # an explicit setting wins
    monkeypatch.setattr(plan_module, "memory_available", lambda device: None)
    unknown = plan_of()
    assert not unknown.checkpointing and "available memory unknown" in unknown.checkpointing_reason


def test_checkpointing_plans_for_a_given_memory_size(plan_of, monkeypatch):
    """`available_bytes` (plan --memory) stands for a device this machine lacks: it wins over the measurement."""
    import peftsft.levers.checkpointing as plan_module

    monkeypatch.setattr(plan_module, "memory_available", lambda device: 2**50)
    roomy = plan_of()
    small = plan_of(available_bytes=roomy.training_peak_bytes)
    assert small.checkpointing and small.available_bytes == roomy.training_peak_bytes
    assert not plan_of(available_bytes=2 * roomy.training_peak_bytes).checkpointing


def test_checkpointing_and_batch_shape_move_activations(plan_of):
    base = plan_of()
    checkpointed = plan_of("training.activation_checkpointing=true")
    assert checkpointed.components["activations"] < base.components["activations"]
    worst_case = plan_of(read_data=False)
    assert worst_case.seq == 128 and worst_case.seq_from == "[data] max_length"
    assert base.seq <= 128 and base.seq_from == "longest sample in the data"
    doubled = plan_of("training.batch_size=8")
    assert doubled.components["activations"] > base.components["activations"]


@pytest.mark.parametrize(
    "strategy, trains_base, dropout, fused",
    [("full", True, 0.0, False), ("full", True, 0.0, True), ("lora", False, 0.0, False), ("lora", False, 0.1, False), ("lora", False, 0.0, True),
     ("lora", False, 0.1, True)],
)
def test_activation_formula_matches_autograd(strategy, trains_base, dropout, fused):
    """Per layer per token, the formula equals what autograd saves (padded batch, SDPA, fp32), with peft's layers
    or with peftsft's fused LoRA layers and gated MLP."""
    from transformers import LlamaConfig

    sizes = dict(hidden_size=48, intermediate_size=112, num_attention_heads=4, num_key_value_heads=2, head_dim=16)
    tokens = 2 * 9
    per_layer = _saved_values(2, sizes, strategy, dropout, fused) - _saved_values(1, sizes, strategy, dropout, fused)
    dims = Dims.from_config(LlamaConfig(num_hidden_layers=2, vocab_size=100, **sizes))
    lora = strategy == "lora"
    expected = layer_activation_elements(dims, trains_base, 7 if lora else 0, 4, dropout, fused and lora, fused)
    assert per_layer / tokens == pytest.approx(expected, rel=0.01)


def _saved_values(layers: int, sizes: dict, strategy: str, dropout: float, fused: bool = False) -> float:
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=100, num_hidden_layers=layers, tie_word_embeddings=True, **sizes)
    config._attn_implementation = "sdpa"
    model = LlamaForCausalLM(config)
    if strategy == "lora":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", lora_dropout=dropout))
    model.train()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            saved[ptr] = t.untyped_storage().nbytes()
        return t

    ids = torch.randint(0, 100, (2, 9))
    mask = torch.ones_like(ids)
    mask[0, 6:] = 0  # a padded row, as in any batch of mixed lengths
    from peftsft.levers.lora_kernel import patch

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), patch(model, "peftsft" if fused else "peft", []):
        model(input_ids=ids, attention_mask=mask)
    return sum(saved.values()) / 4


def test_plan_command_prints_table_and_json(tmp_path, tiny_model_dir, capsys):
    assert main(["plan", write_recipe(tmp_path, tiny_model_dir), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    for word in ("weights", "gradients", "optimizer", "activations", "loss_head", "peak"):
        assert word in out
    assert main(["plan", write_recipe(tmp_path, tiny_model_dir, "full"), "--device", "cpu", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["trainable_params"] == data["total_params"]
    c = data["components"]
    assert data["training_peak_bytes"] == c["weights"] + c["optimizer"] + c["kernel_caches"] + max(
        c["activations"] + c["loss_head"], c["gradients"]
    )


def test_plan_command_reports_recipe_errors(tmp_path, tiny_model_dir, capsys):
    assert main(["plan", write_recipe(tmp_path, tiny_model_dir, "nope")]) == 2
    assert "unknown strategy 'nope'" in capsys.readouterr().err


def test_bf16_on_the_cpu_counts_onednns_cached_kernels(plan_of, monkeypatch):
    """bf16 products on the CPU keep a compiled kernel per shape (the kernel_caches lever): counted at the caches'
    capacity, the one peftsft sets or the user's; fp32 runs keep none."""
    from peftsft.levers.kernel_caches import CAPACITY, KERNEL_BYTES, VARIABLES

    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    bf16, fp32 = plan_of("training.precision=bf16"), plan_of("training.precision=fp32")
    assert bf16.components["kernel_caches"] == CAPACITY * KERNEL_BYTES and fp32.components["kernel_caches"] == 0
    c = bf16.components
    assert bf16.training_peak_bytes == c["weights"] + c["optimizer"] + CAPACITY * KERNEL_BYTES + max(
        c["activations"] + c["loss_head"], c["gradients"]
    )
    monkeypatch.setenv("LRU_CACHE_CAPACITY", "1024")
    assert plan_of("training.precision=bf16").components["kernel_caches"] == 1024 * KERNEL_BYTES


def test_the_general_check_counts_where_it_outgrows_training(tiny_recipe, monkeypatch):
    """Chat runs score the general check around training: the plan's peak is the larger of the two."""
    from peftsft.training import general_check

    recipe = load_recipe(tiny_recipe())
    plain = estimate(load_recipe(tiny_recipe(), ["eval.general_check=false"]), "cpu", read_data=False)
    assert "general_check" not in plain.components and plain.peak_bytes == plain.training_peak_bytes
    checked = estimate(recipe, "cpu", read_data=False)
    assert checked.components["general_check"] == general_check.memory_bytes(checked.dims)
    monkeypatch.setattr(general_check, "memory_bytes", lambda dims: 100 * 2**30)
    large = estimate(recipe, "cpu", read_data=False)
    c = large.components
    assert large.peak_bytes == c["weights"] + c["kernel_caches"] + 100 * 2**30 > large.training_peak_bytes


def test_what_only_training_needs_is_released_before_scoring(tiny_recipe):
    from peftsft.training.skeleton import release_training_memory
    from tests.conftest import sft_trainer

    from peftsft.data import build_datasets
    from peftsft.models import load_model
    from peftsft.strategies import StrategyContext, get_strategy
    from peftsft.strategies.registry import validate_params

    recipe = load_recipe(tiny_recipe(), ["training.max_steps=1"])
    model, tokenizer, _ = load_model(recipe.model, recipe.quantization, "cpu")
    train_ds, _, _ = build_datasets(tokenizer, recipe.data, recipe.training.seed)
    strategy = get_strategy("lora")
    model = strategy.apply(model, validate_params(strategy, recipe.strategy.params), StrategyContext())
    trainer = sft_trainer(recipe, model, tokenizer, train_ds)
    trainer.train()
    kept = next(p for p in model.parameters() if p.requires_grad)
    kept.grad = torch.ones_like(kept)  # a gradient left behind
    release_training_memory(trainer, model)
    assert all(p.grad is None for p in model.parameters())
    assert trainer.optimizer is None and trainer.accelerator._optimizers == []
