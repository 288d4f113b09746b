"""GGUF weight types: the block formats the `gguf` package quantizes itself, and llama.cpp's K-quants.

K-quant mixes (q4_k_m: most tensors 4-bit, some 6-bit) are chosen by llama.cpp's own quantizer, so they are made
by `llama_cpp.llama_model_quantize` from a float32 GGUF rather than re-implemented here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from peftsft.core.errors import UserError



def install_command() -> str:
    """The one command that installs llama-cpp-python into this interpreter: `make gguf` where it is a peftsft
    checkout's .venv (setup.sh's portable build flags), else pip with the `gguf` extra's pinned requirement."""
    import sys
    from importlib import metadata

    root = Path(__file__).resolve().parents[4]
    if (root / "scripts" / "setup.sh").is_file() and Path(sys.prefix).resolve() == (root / ".venv").resolve():
        command = f"make -C {root} gguf"
    else:
        try:
            pins = [r.split(";")[0].strip() for r in metadata.requires("peftsft") or [] if r.startswith("llama-cpp")]
        except metadata.PackageNotFoundError:
            pins = []
        command = f'{sys.executable} -m pip install "{pins[0] if pins else "llama-cpp-python"}"'
    return f"{command}  (builds llama.cpp from source: a few minutes, once)"


@dataclass(frozen=True)
class Quant:
    file_type: str  # gguf.LlamaFileType member (the same numbering as llama.cpp's llama_ftype)
    tensor_type: str | None  # gguf.GGMLQuantizationType for 2-D weights; None: made by llama.cpp's quantizer


QUANTS: dict[str, Quant] = {
    "f32": Quant("ALL_F32", "F32"),
    "f16": Quant("MOSTLY_F16", "F16"),
    "bf16": Quant("MOSTLY_BF16", "BF16"),
    "q8_0": Quant("MOSTLY_Q8_0", "Q8_0"),
    "q5_1": Quant("MOSTLY_Q5_1", "Q5_1"),
    "q5_0": Quant("MOSTLY_Q5_0", "Q5_0"),
    "q4_1": Quant("MOSTLY_Q4_1", "Q4_1"),
    "q4_0": Quant("MOSTLY_Q4_0", "Q4_0"),
    "q6_k": Quant("MOSTLY_Q6_K", None),
    "q5_k_m": Quant("MOSTLY_Q5_K_M", None),
    "q5_k_s": Quant("MOSTLY_Q5_K_S", None),
    "q4_k_m": Quant("MOSTLY_Q4_K_M", None),
    "q4_k_s": Quant("MOSTLY_Q4_K_S", None),
    "q3_k_m": Quant("MOSTLY_Q3_K_M", None),
}


def needs_llama_cpp(quant: str) -> bool:
    return QUANTS[quant].tensor_type is None


def llama_cpp_importable() -> bool:
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


def require_quant(quant: str) -> None:
    """Refuse, before any work, a type that needs llama.cpp's quantizer when llama-cpp-python is missing."""
    if quant not in QUANTS:
        raise UserError(f"--quant {quant!r} is not a GGUF weight type peftsft writes",
                        hint=f"choose one of {', '.join(QUANTS)}")
    if needs_llama_cpp(quant) and not llama_cpp_importable():
        raise UserError(
            f"--quant {quant} is made by llama.cpp's own quantizer, and llama-cpp-python is not installed",
            hint=f"install it: {install_command()}; or pick a type the gguf package writes: "
            + ", ".join(q for q in QUANTS if not needs_llama_cpp(q)),
        )


def file_type(quant: str) -> int:
    import gguf

    return int(getattr(gguf.LlamaFileType, QUANTS[quant].file_type))


def quant_of_file(path: Path) -> str:
    """The --quant name of an existing GGUF's file type (its tolerance applies to a LoRA over it)."""
    from gguf import GGUFReader

    field = GGUFReader(str(path)).fields.get("general.file_type")
    by_type = {file_type(q): q for q in QUANTS}
    return by_type.get(int(field.contents()) if field is not None else -1, "q4_0")


def encode(array: np.ndarray, quant: str):
    """(data, ggml type): 1-D tensors stay F32 (as llama.cpp keeps them); 2-D weights whose rows split into whole
    blocks get the chosen type, others F16."""
    import gguf

    qtype = getattr(gguf.GGMLQuantizationType, QUANTS[quant].tensor_type or "F32")
    if array.ndim < 2 or qtype == gguf.GGMLQuantizationType.F32:
        return array.astype(np.float32), gguf.GGMLQuantizationType.F32
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    if array.shape[-1] % block != 0:
        qtype = gguf.GGMLQuantizationType.F16
    return gguf.quants.quantize(np.ascontiguousarray(array, dtype=np.float32), qtype), qtype


def llama_cpp_quantize(source: Path, target: Path, quant: str) -> None:
    """llama.cpp's quantizer (the one `llama-quantize` runs) from a float32 GGUF to a K-quant mix."""
    import ctypes
    import os

    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = file_type(quant)
    params.nthread = int(os.environ.get("OMP_NUM_THREADS") or 0)  # 0: llama.cpp picks
    status = llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), ctypes.byref(params))
    if status != 0:
        raise UserError(f"llama.cpp's quantizer failed ({status}) making {quant} from {source.name}")
