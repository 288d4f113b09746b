"""The export formats, a registry of small exporters (one module each), and the GGUF weight types and merged dtypes
the CLI offers. Light on import (the CLI reads the names when it starts): each format imports its tools when used.
"""

from __future__ import annotations

from peftsft.artifacts.export.formats import adapter, gguf, gguf_lora, merged
from peftsft.artifacts.export.formats.base import ExportJob, Format
from peftsft.artifacts.export.formats.merged import DTYPES
from peftsft.core.errors import UserError

REGISTRY: dict[str, Format] = {f.name: f for f in (adapter.FORMAT, merged.FORMAT, gguf.FORMAT, gguf_lora.FORMAT)}
FORMATS = tuple(REGISTRY)
# the keys of gguf.quants.QUANTS (a test keeps them equal); the K-quants need llama-cpp-python
QUANTS = ("f32", "f16", "bf16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0", "q6_k", "q5_k_m", "q5_k_s", "q4_k_m",
          "q4_k_s", "q3_k_m")
OPTION_FLAGS = {"quant": "--quant", "dtype": "--dtype"}

__all__ = ["DTYPES", "FORMATS", "QUANTS", "REGISTRY", "ExportJob", "Format", "format_named", "refuse_options", "taking"]


def format_named(name: str) -> Format:
    if name not in REGISTRY:
        raise UserError(f"unknown export format {name!r}", hint=f"--format is one of: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def taking(option: str) -> list[str]:
    """The formats a flag ("quant", "dtype", "modelfile") applies to."""
    return [f.name for f in REGISTRY.values() if option in f.options]


def refuse_options(fmt: Format, given: dict[str, bool]) -> None:
    """--quant or --dtype given for a format they do not apply to is an error (it would be silently ignored)."""
    for option, set_ in given.items():
        if set_ and option not in fmt.options:
            flag = OPTION_FLAGS[option]
            raise UserError(f"{flag} applies to --format {', '.join(taking(option))}, not {fmt.name!r}",
                            hint=f"drop {flag}")
