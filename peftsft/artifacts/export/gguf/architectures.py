"""Which Hugging Face architectures map onto which llama.cpp graph, and the metadata each one needs.

The per-architecture facts (q/k row permutation, Gemma's norm offset, the keys written) follow llama.cpp's own
`convert_hf_to_gguf.py`; tensor names come from the `gguf` package's `TensorNameMap` for the chosen `MODEL_ARCH`.
A configuration llama.cpp would run differently from transformers is refused here, before any work.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from peftsft.core.errors import UserError

_HINT = "use --format merged (a standard Hugging Face model dir) for this model"


@dataclass(frozen=True)
class Arch:
    gguf_arch: str  # a gguf.MODEL_ARCH member name
    permute_qk: bool = False  # llama.cpp's llama graph rotates interleaved pairs: q/k rows are reordered per head
    norm_offset: float = 0.0  # Gemma's RMSNorm scales by (1 + weight); llama.cpp stores the sum
    metadata: Callable = field(default=lambda writer, config: None)  # architecture-specific keys
    problems: Callable = field(default=lambda config: [])  # what llama.cpp would compute differently


def rope(config, layer_type: str = "full_attention") -> dict:
    """The RoPE parameters of one attention kind (transformers nests them per layer type for Gemma 3)."""
    params = dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
    if layer_type in params and isinstance(params[layer_type], dict):
        return params[layer_type]
    params.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
    return params


def head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


# ---------------------------------------------------------------------------------------------- per family


def _llama_metadata(writer, config) -> None:
    writer.add_vocab_size(config.vocab_size)
    writer.add_rope_dimension_count(head_dim(config))


def _gemma2_metadata(writer, config) -> None:
    writer.add_attn_logit_softcapping(float(config.attn_logit_softcapping))
    writer.add_final_logit_softcapping(float(config.final_logit_softcapping))
    _sliding_window(writer, config)


def _gemma3_metadata(writer, config) -> None:
    if getattr(config, "final_logit_softcapping", None):
        writer.add_final_logit_softcapping(float(config.final_logit_softcapping))
    local = rope(config, "sliding_attention")
    if local is not rope(config) and "rope_theta" in local:
        writer.add_rope_freq_base_swa(float(local["rope_theta"]))
    _sliding_window(writer, config)


def _phi3_metadata(writer, config) -> None:
    params = rope(config)
    writer.add_rope_scaling_orig_ctx_len(
        int(params.get("original_max_position_embeddings") or config.original_max_position_embeddings)
    )
    writer.add_rope_dimension_count(int(params.get("partial_rotary_factor", 1.0) * config.hidden_size)
                                    // config.num_attention_heads)
    writer.add_sliding_window(int(getattr(config, "sliding_window", None) or 0))


def _sliding_window(writer, config) -> None:
    """The window and, per layer, whether it slides (llama.cpp would otherwise assume its own default pattern)."""
    writer.add_sliding_window(int(config.sliding_window))
    layer_types = getattr(config, "layer_types", None)
    if layer_types:
        writer.add_sliding_window_pattern([t == "sliding_attention" for t in layer_types])


def _gemma_problems(config, big_layers: int) -> list[str]:
    """llama.cpp scales queries by 1/√head_dim, or by 1/√(hidden/heads) only for the 27B layer count."""
    scalar = getattr(config, "query_pre_attn_scalar", None)
    if scalar is None or scalar == head_dim(config):
        return []
    if config.num_hidden_layers == big_layers and scalar == config.hidden_size // config.num_attention_heads:
        return []
    return [f"query_pre_attn_scalar {scalar} ≠ head_dim {head_dim(config)}: llama.cpp would scale attention "
            "differently"]


def _gemma3_problems(config) -> list[str]:
    problems = _gemma_problems(config, big_layers=62)
    if getattr(config, "attn_logit_softcapping", None):
        problems.append("Gemma 3 with attention soft-capping: llama.cpp's gemma3 graph has none")
    return problems


def _qwen2_problems(config) -> list[str]:
    if getattr(config, "use_sliding_window", False):
        return ["use_sliding_window = true: llama.cpp's qwen2 graph attends to the whole context"]
    return []


def _phi3_problems(config) -> list[str]:
    if rope(config).get("rope_type", "default") not in ("default", None):
        return [f"Phi-3 rope scaling {rope(config).get('rope_type')!r} (long-context factors) is not exported"]
    return []


ARCHITECTURES: dict[str, Arch] = {
    "llama": Arch("LLAMA", permute_qk=True, metadata=_llama_metadata),  # also SmolLM, Llama 2/3.x
    "mistral": Arch("LLAMA", permute_qk=True, metadata=_llama_metadata),  # llama.cpp runs Mistral as llama
    "qwen2": Arch("QWEN2", problems=_qwen2_problems),
    "qwen3": Arch("QWEN3"),
    "gemma2": Arch("GEMMA2", norm_offset=1.0, metadata=_gemma2_metadata,
                   problems=lambda config: _gemma_problems(config, big_layers=46)),
    "gemma3_text": Arch("GEMMA3", norm_offset=1.0, metadata=_gemma3_metadata, problems=_gemma3_problems),
    "phi3": Arch("PHI3", metadata=_phi3_metadata, problems=_phi3_problems),
}
_ROPE_TYPES = ("default", "linear", "yarn", "llama3")


def architecture(config) -> Arch:
    return ARCHITECTURES[config.model_type]


def check_exportable(config, tokenizer=None) -> None:
    """Refuse, with every reason at once, what this writer cannot map one-to-one onto a llama.cpp graph."""
    from peftsft.artifacts.export.gguf.vocab import tokenizer_problems

    problems = []
    arch = ARCHITECTURES.get(config.model_type)
    if arch is None:
        problems.append(f"model_type is {config.model_type!r}; GGUF export supports {', '.join(ARCHITECTURES)}")
    else:
        problems += _rope_problems(config) + arch.problems(config)
        if getattr(config, "mlp_bias", False):
            problems.append("MLP biases are not part of llama.cpp's graph for this architecture")
        if getattr(config, "attention_bias", False) and config.model_type != "qwen2":
            problems.append("attention biases are only exported for qwen2")
    if tokenizer is not None:
        problems += tokenizer_problems(tokenizer)
    if problems:
        raise UserError("cannot export this model as GGUF", problems=problems, hint=_HINT)


def _rope_problems(config) -> list[str]:
    kind = rope(config).get("rope_type", "default") or "default"
    if kind not in _ROPE_TYPES:
        return [f"rope scaling {kind!r} is not exported (supported: {', '.join(_ROPE_TYPES)})"]
    if kind != "default" and config.model_type not in ("llama", "mistral", "qwen2", "qwen3", "gemma3_text"):
        return [f"rope scaling {kind!r} on {config.model_type} is not exported"]
    return []


# ---------------------------------------------------------------------------------------------- metadata


def add_metadata(writer, config) -> None:
    """The hyper-parameters every llama.cpp graph reads, then the architecture's own keys."""
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_key_length(head_dim(config))
    writer.add_value_length(head_dim(config))
    _add_rope(writer, rope(config))
    architecture(config).metadata(writer, config)


def _add_rope(writer, params: dict) -> None:
    import gguf

    writer.add_rope_freq_base(float(params.get("rope_theta", 10000.0)))
    kind = params.get("rope_type", "default")
    if kind == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(params["factor"]))
    elif kind == "yarn":
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(float(params["factor"]))
        writer.add_rope_scaling_orig_ctx_len(int(params["original_max_position_embeddings"]))
        for key, add in (("attention_factor", writer.add_rope_scaling_yarn_attn_factor),
                         ("beta_fast", writer.add_rope_scaling_yarn_beta_fast),
                         ("beta_slow", writer.add_rope_scaling_yarn_beta_slow)):  # fmt: skip
            if params.get(key) is not None:
                add(float(params[key]))
    # llama3: llama.cpp reads per-frequency factors from a `rope_freqs` tensor (see tensors.rope_factors)


def llama3_rope_factors(config):
    """Per-frequency divisors of Llama 3's RoPE, as llama.cpp's `rope_freqs` tensor holds them: taken from
    transformers' own RoPE initialisation (default ÷ llama3 inverse frequencies), so both compute the same."""
    import torch

    from peftsft.core.compat import rope_inverse_frequencies

    dim = head_dim(config)
    base = float(rope(config)["rope_theta"])
    default = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    scaled = rope_inverse_frequencies("llama3", config)
    return (default / scaled).float().numpy()
