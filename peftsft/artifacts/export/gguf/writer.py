"""Write GGUF files with the `gguf` package: a merged model (weights, tokenizer, chat template), or a LoRA adapter
alone in llama.cpp's adapter format (`general.type = adapter`, `<tensor>.lora_a` / `.lora_b`).

Tensor names come from `gguf.get_tensor_name_map` for the architecture llama.cpp runs the model as.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from peftsft.core.errors import UserError
from peftsft.artifacts.export.gguf.architectures import (
    add_metadata,
    architecture,
    check_exportable,
    llama3_rope_factors,
    rope,
)
from peftsft.artifacts.export.gguf.quants import encode, file_type, llama_cpp_quantize, needs_llama_cpp
from peftsft.artifacts.export.gguf.vocab import add_tokenizer


def write_gguf(model, tokenizer, path: Path, quant: str, name: str, pre_tokenizer: str | None = None) -> None:
    """Write `model` (merged, float weights) with `tokenizer` and its chat template to `path` as `quant`."""
    check_exportable(model.config, tokenizer)
    if not needs_llama_cpp(quant):
        _write_model(model, tokenizer, path, quant, name, pre_tokenizer)
        return
    source = path.with_name(path.name + ".f32.tmp")  # llama.cpp's quantizer reads a file and writes another
    try:
        _write_model(model, tokenizer, source, "f32", name, pre_tokenizer)
        llama_cpp_quantize(source, path, quant)
    finally:
        source.unlink(missing_ok=True)


def _write_model(model, tokenizer, path: Path, quant: str, name: str, pre_tokenizer: str | None) -> None:
    import gguf

    config = model.config
    writer = gguf.GGUFWriter(path, _arch_name(config))
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    add_metadata(writer, config)
    writer.add_file_type(file_type(quant))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    add_tokenizer(writer, tokenizer, config.vocab_size, pre_tokenizer)
    for tensor_name, array in _tensors(model):
        data, qtype = encode(array, quant)
        writer.add_tensor(tensor_name, data, raw_dtype=qtype)
    _finish(writer)


def _finish(writer) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _arch_name(config) -> str:
    import gguf

    return gguf.MODEL_ARCH_NAMES[getattr(gguf.MODEL_ARCH, architecture(config).gguf_arch)]


def _name_map(config):
    import gguf

    return gguf.get_tensor_name_map(getattr(gguf.MODEL_ARCH, architecture(config).gguf_arch),
                                    config.num_hidden_layers)


# ---------------------------------------------------------------------------------------------- tensors


def _tensors(model):
    """(gguf name, float32 array) per weight, in llama.cpp's layout, plus the tensors llama.cpp derives."""
    import gguf

    config = model.config
    names = _name_map(config)
    state = model.state_dict()
    if getattr(config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)  # llama.cpp writes no output.weight for tied embeddings
    for hf_name, tensor in state.items():
        gguf_name = _gguf_name(names, hf_name)
        array = tensor.detach().to(torch.float32).cpu().numpy()
        if hf_name.endswith("norm.weight"):
            array = array + architecture(config).norm_offset
        yield gguf_name, _permuted(gguf_name.rsplit(".", 1)[0], array, config)
    if rope(config).get("rope_type") == "llama3":
        yield f"{gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS]}.weight", llama3_rope_factors(config)


def _gguf_name(names, hf_name: str) -> str:
    base, _, suffix = hf_name.rpartition(".")
    gguf_name = names.get_name(base)
    if gguf_name is None:
        raise UserError(f"GGUF export: no llama.cpp name for tensor {hf_name!r}", hint="use --format merged")
    return f"{gguf_name}.{suffix}"


def _permuted(gguf_name: str, weights: np.ndarray, config) -> np.ndarray:
    """llama.cpp's llama graph stores q/k rows per head as interleaved rotary pairs (transformers' loader and
    llama.cpp's converter do the same); the other graphs rotate halves, as transformers does."""
    if not architecture(config).permute_qk:
        return weights
    if gguf_name.endswith("attn_q"):
        return _permute(weights, config.num_attention_heads)
    if gguf_name.endswith("attn_k"):
        return _permute(weights, config.num_key_value_heads)
    return weights


def _permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


# ---------------------------------------------------------------------------------------------- LoRA


def lora_problems(adapter_config: dict) -> list[str]:
    """What llama.cpp's LoRA loader (W + alpha/r · B·A on named weights) cannot express."""
    problems = []
    if adapter_config.get("peft_type") != "LORA":
        problems.append(f"the adapter is {adapter_config.get('peft_type')}, not LoRA")
    if adapter_config.get("use_dora"):
        problems.append("DoRA rescales weights by their norm, which a llama.cpp LoRA cannot")
    if adapter_config.get("modules_to_save"):
        problems.append(f"modules_to_save {adapter_config['modules_to_save']} are whole trained copies, not LoRA")
    if adapter_config.get("rank_pattern") or adapter_config.get("alpha_pattern"):
        problems.append("per-module ranks/alphas (rank_pattern, alpha_pattern): llama.cpp reads one alpha")
    return problems


def write_lora_gguf(adapter_dir: Path, config, path: Path, name: str) -> None:
    """The PEFT adapter in `adapter_dir` as a llama.cpp LoRA GGUF for a base of architecture `config`."""
    import gguf
    from safetensors.torch import load_file

    adapter_config = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    problems = lora_problems(adapter_config)
    if problems:
        raise UserError("cannot export this adapter as a GGUF LoRA", problems=problems,
                        hint="use --format gguf (the adapter merged into the base) instead")
    writer = gguf.GGUFWriter(path, _arch_name(config))
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_name(name)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, _llama_cpp_alpha(adapter_config))
    for tensor_name, array in _lora_tensors(load_file(adapter_dir / "adapter_model.safetensors"), config):
        writer.add_tensor(tensor_name, array.astype(np.float32), raw_dtype=gguf.GGMLQuantizationType.F32)
    _finish(writer)


def _llama_cpp_alpha(adapter_config: dict) -> float:
    """llama.cpp scales by alpha / r; rsLoRA scales by alpha / √r, which the same formula gives for alpha·√r."""
    alpha, rank = float(adapter_config["lora_alpha"]), int(adapter_config["r"])
    return alpha * math.sqrt(rank) if adapter_config.get("use_rslora") else alpha


def _lora_tensors(state: dict, config):
    """(`<gguf weight>.lora_a` [r, in], `.lora_b` [out, r]); q/k get llama.cpp's row permutation on B's rows."""
    names = _name_map(config)
    for key in sorted(state):
        if ".lora_A." not in key:
            if ".lora_B." not in key:
                raise UserError(f"the adapter holds {key!r}, which is not a LoRA A/B matrix",
                                hint="use --format gguf (the adapter merged into the base)")
            continue
        module = key.split(".lora_A.")[0].removeprefix("base_model.model.")
        gguf_name = _gguf_name(names, f"{module}.weight")
        lora_b = state[key.replace(".lora_A.", ".lora_B.")].to(torch.float32).numpy()
        yield f"{gguf_name}.lora_a", state[key].to(torch.float32).numpy()
        yield f"{gguf_name}.lora_b", _permuted(gguf_name.rsplit(".", 1)[0], lora_b, config)
