"""A Hugging Face tokenizer → llama.cpp's `tokenizer.ggml.*` keys: byte-level BPE ("gpt2", Llama 3 / SmolLM /
Qwen style) or SentencePiece-style BPE with byte fallback ("llama", Llama 2 / Mistral / Gemma / Phi-3 style).

Both are read from the fast tokenizer's own `tokenizer.json` (what transformers tokenized the training data with),
so a run whose adapter dir carries no `tokenizer.model` exports the same way.
"""

from __future__ import annotations

import json
import weakref

from peftsft.core.errors import UserError

# How a Hugging Face byte-level BPE pre-tokenizer is named in llama.cpp (`tokenizer.ggml.pre`).
_GPT2_SPLIT = {"type": "ByteLevel", "use_regex": True}
_DIGITS = {"type": "Digits", "individual_digits": True}
_LLAMA3_REGEX = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}"
_QWEN2_REGEX = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"


_BACKENDS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def backend(tokenizer) -> dict:
    """tokenizer.json as a dict, parsed once per tokenizer (a 49k-token vocabulary takes seconds to parse)."""
    if tokenizer not in _BACKENDS:
        _BACKENDS[tokenizer] = json.loads(tokenizer.backend_tokenizer.to_str())
    return _BACKENDS[tokenizer]


def tokenizer_kind(tokenizer) -> str | None:
    """"gpt2" (byte-level BPE), "llama" (SentencePiece-style BPE with byte fallback), or None (neither)."""
    if not getattr(tokenizer, "is_fast", False):
        return None
    spec = backend(tokenizer)
    model, decoder = spec["model"], spec.get("decoder") or {}
    if model.get("type") != "BPE":
        return None
    if not model.get("byte_fallback") and decoder.get("type") == "ByteLevel":
        return "gpt2"
    if model.get("byte_fallback"):
        return "llama"
    return None


def tokenizer_problems(tokenizer) -> list[str]:
    kind = tokenizer_kind(tokenizer)
    if kind is None:
        return ["the tokenizer is neither byte-level BPE (Llama 3, Qwen, SmolLM) nor SentencePiece-style BPE with "
                "byte fallback (Llama 2, Mistral, Gemma, Phi-3)"]
    if kind == "gpt2" and llama_cpp_pre_tokenizer(tokenizer) == "default":
        return ["its pre-tokenizer (how text is split before BPE) has no llama.cpp name this writer knows"]
    return []


def add_tokenizer(writer, tokenizer, vocab_size: int, pre_tokenizer: str | None = None) -> None:
    """Vocabulary, merges or scores, special tokens and the chat template, as llama.cpp reads them."""
    kind = tokenizer_kind(tokenizer)
    spec = backend(tokenizer)
    tokens, types = vocab_entries(tokenizer, vocab_size)
    writer.add_tokenizer_model(kind)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    if kind == "gpt2":
        writer.add_tokenizer_pre(pre_tokenizer or llama_cpp_pre_tokenizer(tokenizer))
        writer.add_token_merges(_merges(spec["model"]["merges"]))
        writer.add_add_space_prefix(False)
    else:
        writer.add_tokenizer_pre("default")
        writer.add_token_scores(_scores(tokens, spec["model"]["merges"]))
        writer.add_add_space_prefix(_adds_space_prefix(spec))
    _add_special_tokens(writer, tokenizer)
    writer.add_chat_template(tokenizer.chat_template)


def vocab_entries(tokenizer, vocab_size: int) -> tuple[list[str], list[int]]:
    """Every id up to the model's vocab size: its token and llama.cpp token type (unused padding as [PADn])."""
    import gguf

    if len(tokenizer) > vocab_size:
        raise UserError(f"the tokenizer has {len(tokenizer)} tokens but the model only {vocab_size} embeddings")
    by_id = {i: token for token, i in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    byte_fallback = tokenizer_kind(tokenizer) == "llama"
    unk = tokenizer.unk_token_id
    tokens, types = [], []
    for i in range(vocab_size):
        if i in added:
            tokens.append(added[i].content)
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        elif i in by_id:
            tokens.append(by_id[i])
            types.append(_normal_type(by_id[i], i == unk, byte_fallback))
        else:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
    return tokens, [int(t) for t in types]


def _normal_type(token: str, is_unknown: bool, byte_fallback: bool):
    import gguf

    if is_unknown:
        return gguf.TokenType.UNKNOWN
    if byte_fallback and len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
        return gguf.TokenType.BYTE  # SentencePiece's byte fallback pieces <0x00>…<0xFF>
    return gguf.TokenType.NORMAL


def _merges(merges: list) -> list[str]:
    """tokenizer.json's merges as llama.cpp's "a b" strings (a space inside a part is written as U+0120+256)."""
    if merges and isinstance(merges[0], str):
        return merges
    return [" ".join(part.replace(" ", chr(ord(" ") + 256)) for part in pair) for pair in merges]


def _scores(tokens: list[str], merges: list) -> list[float]:
    """SentencePiece scores for llama.cpp's tokenizer, which merges the highest-scoring adjacent pair first: a
    merged piece scores -(its merge rank), so it applies the merges in tokenizer.json's order, as BPE does."""
    pairs = [m.split(" ") if isinstance(m, str) else m for m in merges]
    rank = {"".join(pair): -float(i) for i, pair in reversed(list(enumerate(pairs)))}
    return [rank.get(token, -1e9 if len(token) > 1 else 0.0) for token in tokens]


def _adds_space_prefix(spec: dict) -> bool:
    """llama.cpp's `add_space_prefix`: "▁" before the text and after every special token, as Llama 2's legacy
    tokenizer does (a normalizer Prepend, or a Metaspace pre-tokenizer with prepend_scheme "always"). Mistral's
    and non-legacy Llama tokenizers prepend only at the very start of the input ("first"), which llama.cpp cannot
    express: chat prompts begin with a special token (BOS), after which they add nothing, so False matches every
    rendered prompt — the export's token-id check proves it per run. Gemma prepends nothing."""
    steps = []
    for part in ("normalizer", "pre_tokenizer"):
        node = spec.get(part) or {}
        steps += node.get("normalizers") or node.get("pretokenizers") or [node]
    for step in steps:
        if step.get("type") == "Prepend":
            return True
        if step.get("type") == "Metaspace":
            return step.get("prepend_scheme", "always") == "always"
    return False


def _add_special_tokens(writer, tokenizer) -> None:
    for kind in ("bos", "eos", "unk", "pad"):
        token_id = getattr(tokenizer, f"{kind}_token_id")
        if token_id is not None:
            getattr(writer, f"add_{kind}_token_id")(token_id)
    probe = tokenizer("a")["input_ids"]
    writer.add_add_bos_token(bool(probe) and probe[0] == tokenizer.bos_token_id)
    writer.add_add_eos_token(bool(probe) and probe[-1] == tokenizer.eos_token_id)


def llama_cpp_pre_tokenizer(tokenizer) -> str:
    """llama.cpp's name for a byte-level BPE tokenizer's pre-tokenization (how text is split before BPE)."""
    pre = backend(tokenizer).get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    shape = [{k: step.get(k) for k in ("type", "use_regex", "individual_digits") if k in step} for step in steps]
    if shape == [_GPT2_SPLIT]:
        return "gpt-2"
    if shape == [_DIGITS, _GPT2_SPLIT]:
        return "smollm"  # same split as llama.cpp's "starcoder"/"refact"
    if _split_pattern(steps).startswith(_LLAMA3_REGEX):
        return "llama-bpe"
    if _split_pattern(steps).startswith(_QWEN2_REGEX):
        return "qwen2"
    return "default"


def _split_pattern(steps: list[dict]) -> str:
    if len(steps) != 2 or steps[0].get("type") != "Split" or steps[1].get("type") != "ByteLevel":
        return ""
    return (steps[0].get("pattern") or {}).get("Regex", "")
