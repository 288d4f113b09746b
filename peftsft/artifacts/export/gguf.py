"""A merged Llama-family model → one GGUF file (weights, tokenizer, chat template), written with the `gguf` package.

Tensor names and the q/k row permutation follow llama.cpp's converter, which is also what transformers' GGUF
loader undoes, so the file round-trips through `from_pretrained(..., gguf_file=...)`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from peftsft.core.errors import UserError

# --quant → (tensor type for 2-D weights, the file type llama.cpp records)
QUANTS = {"f16": ("F16", "MOSTLY_F16"), "q8_0": ("Q8_0", "MOSTLY_Q8_0")}

# How a Hugging Face byte-level BPE pre-tokenizer is named in llama.cpp (`tokenizer.ggml.pre`).
_GPT2_SPLIT = {"type": "ByteLevel", "use_regex": True}
_DIGITS = {"type": "Digits", "individual_digits": True}


def check_exportable(config, tokenizer=None) -> None:
    """Only plain Llama-architecture models with byte-level BPE vocabularies map one-to-one onto llama.cpp's
    `llama` tensors and `gpt2` tokenizer model."""
    problems = []
    if config.model_type != "llama":
        problems.append(f"model_type is {config.model_type!r}; GGUF export supports 'llama' (Llama, SmolLM, …)")
    rope = getattr(config, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        problems.append(f"rope scaling {rope.get('rope_type')!r} is not exported")
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        problems.append("attention/MLP biases are not exported")
    if tokenizer is not None and not _is_byte_level_bpe(tokenizer):
        problems.append("the tokenizer is not byte-level BPE (GPT-2 style, as in Llama 3 and SmolLM)")
    if problems:
        raise UserError(
            "cannot export this model as GGUF",
            problems=problems,
            hint="use --format merged (llama.cpp's convert_hf_to_gguf.py converts more architectures)",
        )


def write_gguf(model, tokenizer, path: Path, quant: str, name: str, pre_tokenizer: str | None = None) -> None:
    """Write `model` (merged, float weights) with `tokenizer` and its chat template to `path`."""
    import gguf

    config = model.config
    check_exportable(config, tokenizer)
    writer = gguf.GGUFWriter(path, "llama")
    _add_model_metadata(writer, config, name, quant)
    _add_tokenizer(writer, tokenizer, config.vocab_size, pre_tokenizer or llama_cpp_pre_tokenizer(tokenizer))
    for tensor_name, array, qtype in _tensors(model, quant):
        writer.add_tensor(tensor_name, array, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _add_model_metadata(writer, config, name: str, quant: str) -> None:
    import gguf

    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_type("model")
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_freq_base(float(_rope_theta(config)))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(config.vocab_size)
    writer.add_rope_dimension_count(head_dim)
    if head_dim != config.hidden_size // config.num_attention_heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_file_type(getattr(gguf.LlamaFileType, QUANTS[quant][1]))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _rope_theta(config) -> float:
    rope = getattr(config, "rope_parameters", None) or {}
    return rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))


# ---------------------------------------------------------------------------------------------- tensors


def _tensors(model, quant: str):
    """(gguf name, array, ggml type) per weight: 1-D stay F32, 2-D go to the chosen type (as llama.cpp does)."""
    import gguf

    config = model.config
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    state = model.state_dict()
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)  # llama.cpp writes no output.weight for tied embeddings
    for hf_name, tensor in state.items():
        base, _, suffix = hf_name.rpartition(".")
        gguf_name = names.get_name(base)
        if gguf_name is None:
            raise UserError(f"GGUF export: no llama.cpp name for tensor {hf_name!r}", hint="use --format merged")
        array = _permuted(gguf_name, tensor.detach().to(torch.float32).cpu().numpy(), config)
        yield f"{gguf_name}.{suffix}", *_encode(array, quant)


def _permuted(gguf_name: str, weights: np.ndarray, config) -> np.ndarray:
    """llama.cpp stores q/k rows per head as interleaved rotary pairs; transformers' loader reverses this."""
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


def _encode(array: np.ndarray, quant: str):
    """Quantize 2-D weights whose rows split into whole blocks; everything else keeps full precision."""
    import gguf

    qtype = getattr(gguf.GGMLQuantizationType, QUANTS[quant][0])
    if array.ndim < 2:
        return array.astype(np.float32), gguf.GGMLQuantizationType.F32
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    if array.shape[-1] % block != 0:
        qtype = gguf.GGMLQuantizationType.F16
    return gguf.quants.quantize(np.ascontiguousarray(array), qtype), qtype


# ---------------------------------------------------------------------------------------------- tokenizer


def _is_byte_level_bpe(tokenizer) -> bool:
    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    model, decoder = backend["model"], backend.get("decoder") or {}
    return model.get("type") == "BPE" and not model.get("byte_fallback") and decoder.get("type") == "ByteLevel"


def _add_tokenizer(writer, tokenizer, vocab_size: int, pre_tokenizer: str) -> None:
    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    tokens, types = vocab_entries(tokenizer, vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_tokenizer)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(_merges(backend["model"]["merges"]))
    writer.add_add_space_prefix(False)
    _add_special_tokens(writer, tokenizer)
    writer.add_chat_template(tokenizer.chat_template)


def vocab_entries(tokenizer, vocab_size: int) -> tuple[list[str], list[int]]:
    """Every id up to the model's vocab size: its token and llama.cpp token type (unused padding as [PADn])."""
    import gguf

    if len(tokenizer) > vocab_size:
        raise UserError(f"the tokenizer has {len(tokenizer)} tokens but the model only {vocab_size} embeddings")
    by_id = {i: token for token, i in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        if i in added:
            tokens.append(added[i].content)
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        elif i in by_id:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
        else:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
    return tokens, [int(t) for t in types]


def _merges(merges: list) -> list[str]:
    """tokenizer.json's merges as llama.cpp's "a b" strings (a space inside a part is written as U+0120+256)."""
    if merges and isinstance(merges[0], str):
        return merges
    return [" ".join(part.replace(" ", chr(ord(" ") + 256)) for part in pair) for pair in merges]


def _add_special_tokens(writer, tokenizer) -> None:
    for kind in ("bos", "eos", "unk", "pad"):
        token_id = getattr(tokenizer, f"{kind}_token_id")
        if token_id is not None:
            getattr(writer, f"add_{kind}_token_id")(token_id)
    probe = tokenizer("a")["input_ids"]
    writer.add_add_bos_token(bool(probe) and probe[0] == tokenizer.bos_token_id)
    writer.add_add_eos_token(bool(probe) and probe[-1] == tokenizer.eos_token_id)


def llama_cpp_pre_tokenizer(tokenizer) -> str:
    """llama.cpp's name for the tokenizer's pre-tokenization (how text is split before BPE)."""
    pre = json.loads(tokenizer.backend_tokenizer.to_str()).get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    shape = [{k: step.get(k) for k in ("type", "use_regex", "individual_digits") if k in step} for step in steps]
    if shape == [_GPT2_SPLIT]:
        return "gpt-2"
    if shape == [_DIGITS, _GPT2_SPLIT]:
        return "smollm"  # same split as llama.cpp's "starcoder"/"refact"
    if _is_llama3_split(steps):
        return "llama-bpe"
    return "default"


def _is_llama3_split(steps: list[dict]) -> bool:
    if len(steps) != 2 or steps[0].get("type") != "Split" or steps[1].get("type") != "ByteLevel":
        return False
    pattern = (steps[0].get("pattern") or {}).get("Regex", "")
    return pattern.startswith("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}")


def source_pre_tokenizer(gguf_path: str) -> str | None:
    """The `tokenizer.ggml.pre` of a base model that came as GGUF: the name llama.cpp already knows it by."""
    from transformers.integrations.gguf import read_gguf_metadata  # reads metadata only: fast on big vocabularies

    metadata, _ = read_gguf_metadata(gguf_path)
    return metadata.get("tokenizer.ggml.pre")
