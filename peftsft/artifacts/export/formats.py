"""The export formats, GGUF weight types and merged dtypes peftsft writes (light: read when the CLI starts)."""

FORMATS = ("adapter", "merged", "gguf", "gguf-lora")
DTYPES = ("bfloat16", "float16", "float32")
# the keys of gguf.quants.QUANTS (a test keeps them equal); the K-quants need llama-cpp-python
QUANTS = ("f32", "f16", "bf16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0", "q6_k", "q5_k_m", "q5_k_s", "q4_k_m",
          "q4_k_s", "q3_k_m")
