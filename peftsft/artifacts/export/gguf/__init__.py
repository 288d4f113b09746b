"""GGUF export: architectures (which llama.cpp graph, which metadata), vocab (tokenizer keys), quants (weight
types, llama.cpp's K-quants), writer (merged model or LoRA adapter as GGUF)."""

from peftsft.artifacts.export.gguf.architectures import ARCHITECTURES, check_exportable
from peftsft.artifacts.export.gguf.quants import QUANTS, needs_llama_cpp, require_quant
from peftsft.artifacts.export.gguf.vocab import llama_cpp_pre_tokenizer
from peftsft.artifacts.export.gguf.writer import lora_problems, write_gguf, write_lora_gguf

__all__ = [
    "ARCHITECTURES", "QUANTS", "check_exportable", "llama_cpp_pre_tokenizer", "lora_problems", "needs_llama_cpp",
    "require_quant", "write_gguf", "write_lora_gguf",
]  # fmt: skip
