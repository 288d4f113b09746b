"""QLoRA / 8-bit bases on CPU: gradients match LoRA on the dequantized weights, footprint, trainable counts."""

import pytest
import torch
from rich.console import Console

from peftsft.core.config import QuantizationSection
from peftsft.training.recipe import load_recipe
from peftsft.core.errors import UserError
from peftsft.models import load_model, quantized_footprint, resolve_dtype
from peftsft.strategies import StrategyContext, get_strategy, trainable_summary
from peftsft.strategies.registry import validate_params

bnb = pytest.importorskip("bitsandbytes")

# 4-bit: the only difference between QLoRA and LoRA on the dequantized weights is float summation order
GRAD_RTOL = 1e-4


@pytest.fixture(scope="module")
def llama64_dir(tmp_path_factory, tokenizer):
    """A 2-layer hidden-64 Llama (bitsandbytes quantizes in blocks of 64) with the real tokenizer."""
    return _save_llama(tmp_path_factory.mktemp("llama64"), tokenizer, hidden=64, intermediate=128)


def _save_llama(out, tokenizer, hidden, intermediate, layers=2, vocab=None):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab or len(tokenizer), hidden_size=hidden, intermediate_size=intermediate,
        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _model_section(path):
    from peftsft.core.config import ModelSection

    return ModelSection(source=str(path))


def _lora(model, quantized):
    strategy = get_strategy("lora")
    return strategy.apply(model, validate_params(strategy, {"r": 4, "alpha": 8, "dropout": 0.0}),
                          StrategyContext(quantized=quantized))


def _dequantized_copy(quantized_peft, path):
    """The same architecture in float32 whose linear weights are the 4-bit weights dequantized."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    for name, module in quantized_peft.get_base_model().named_modules():
        if isinstance(module, bnb.nn.Linear4bit):
            target = model.get_submodule(name.replace(".base_layer", ""))
            target.weight.data = bnb.functional.dequantize_4bit(module.weight.data, module.weight.quant_state)
    return model


def test_qlora_gradients_match_lora_on_dequantized_weights(llama64_dir):
    quant = QuantizationSection(bits=4, quant_type="nf4", double_quant=True, compute_dtype="float32")
    qmodel, _, _ = load_model(_model_section(llama64_dir), quant)
    qlora = _lora(qmodel, quantized=True)
    reference = _lora(_dequantized_copy(qlora, llama64_dir), quantized=False)

    torch.manual_seed(1)  # B starts at zero, which would leave A without gradient: give both the same random B
    state = {k: torch.randn_like(v) * 0.1 for k, v in qlora.state_dict().items() if "lora_" in k}
    qlora.load_state_dict(state, strict=False)
    reference.load_state_dict(state, strict=False)

    batch = torch.randint(0, 1000, (2, 16))
    grads = []
    for model in (qlora, reference):
        model.train()
        model(input_ids=batch, labels=batch).loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) == 2 * 7 * 2  # A and B, 7 linears, 2 layers
    for name, grad in grads[0].items():
        other = grads[1][name]
        assert grad is not None and grad.abs().max() > 0, name
        rel = (grad - other).abs().max() / other.abs().max()
        assert rel < GRAD_RTOL, f"{name}: relative gradient difference {rel:.2e}"


def test_kbit_base_is_frozen_and_trainable_count_matches_plain_lora(llama64_dir):
    plain, _, _ = load_model(_model_section(llama64_dir), QuantizationSection())
    for bits in (4, 8):
        quantized, _, _ = load_model(_model_section(llama64_dir), QuantizationSection(bits=bits, compute_dtype="float32"))
        lora_q, lora_p = _lora(quantized, True), _lora(plain if bits == 4 else _fresh(llama64_dir), False)
        assert trainable_summary(lora_q)["trainable_params"] == trainable_summary(lora_p)["trainable_params"]
        trainable = [n for n, p in lora_q.named_parameters() if p.requires_grad]
        assert trainable and all("lora_" in n for n in trainable), trainable


def _fresh(path):
    model, _, _ = load_model(_model_section(path), QuantizationSection())
    return model


def test_nf4_footprint_is_about_half_a_byte_per_parameter(tmp_path, tokenizer):
    """A small model (hidden 256): NF4 + double quant stores ≤ 0.55 bytes per linear weight."""
    path = _save_llama(tmp_path, tokenizer, hidden=256, intermediate=768, layers=2, vocab=2048)
    model, _, _ = load_model(_model_section(path), QuantizationSection(bits=4, compute_dtype="float32"))
    footprint = quantized_footprint(model)
    linear_params = 2 * (4 * 256 * 256 // 1 - 2 * 256 * 128 + 3 * 256 * 768)  # q,o full; k,v half (2 kv heads of 4)
    assert footprint["quantized_params"] == linear_params
    assert footprint["bytes_per_param"] <= 0.55, footprint
    eight, _, _ = load_model(_model_section(path), QuantizationSection(bits=8))
    assert 1.0 <= quantized_footprint(eight)["bytes_per_param"] <= 1.05


def test_qlora_run_reports_the_quantized_base(tiny_recipe, llama64_dir):
    recipe = load_recipe(tiny_recipe(), [f'model.source="{llama64_dir}"', "quantization.bits=4",
                                         'quantization.compute_dtype="float32"'])
    from peftsft.artifacts.tasks import run

    summary = run(recipe, Console(quiet=True))
    assert summary["quantized_base"]["bytes_per_param"] < 1.0
    assert summary["last_loss"] is not None and summary["steps"] == 3


def test_compute_dtype_auto_is_float32_on_cpu():
    assert resolve_dtype("auto", "cpu") == torch.float32


def test_missing_bitsandbytes_is_a_validate_time_error(tiny_recipe, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a))
    with pytest.raises(UserError) as info:
        load_recipe(tiny_recipe(), ["quantization.bits=4"])
    assert "needs bitsandbytes" in str(info.value) and "remove [quantization]" in str(info.value)


@pytest.mark.gpu
def test_qlora_trains_on_cuda(tiny_recipe, llama64_dir):
    from peftsft.artifacts.tasks import run

    recipe = load_recipe(tiny_recipe(), [f'model.source="{llama64_dir}"', "quantization.bits=4",
                                         'training.device="cuda"', "run.name=cuda"])
    summary = run(recipe, Console(quiet=True))
    assert summary["device"] == "cuda" and summary["quantized_base"]["bytes_per_param"] < 0.6
