"""The export formats, GGUF weight types and merged dtypes peftsft writes (light: read when the CLI starts)."""

FORMATS = ("adapter", "merged", "gguf")
DTYPES = ("bfloat16", "float16", "float32")
QUANTS = ("f16", "q8_0")
