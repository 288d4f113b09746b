"""Per-machine rules behind the speed levers: functions of the recipe, the device and the model, no decisions stored
(plus the frozen-base cast that `base_dtype` implies, shared by the trainer and the memory plan)."""

from __future__ import annotations

from pathlib import Path

from peftsft.core.config import Recipe
from peftsft.training.attention import NAME as ATTENTION_BY_SAMPLE

# TRL's own slice; its CUDA kernel scores a slice in place, the torch code it runs elsewhere keeps ~9 copies
TRL_VOCAB_CHUNK, CPU_VOCAB_CHUNK = 32768, 4096


def resolve_precision(requested: str, device: str) -> str:
    """bf16 autocast when it pays: CUDA with bf16, or a CPU with native bf16 matmuls."""
    import torch

    if requested != "auto":
        return requested
    if device == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_fast_bf16() else "fp32"


def cpu_features() -> set[str]:
    """The CPU's feature flags as Linux reports them (empty where /proc/cpuinfo is unreadable)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_has_fast_bf16(capability: str | None = None) -> bool:
    """Native bf16 in the CPU (AVX-512-BF16 or AMX) and torch running its AVX-512 kernels: with
    ATEN_CPU_CAPABILITY=avx2 (or a build without them) torch takes its slow bf16 path on the same CPU."""
    if capability is None:
        import torch

        capability = torch.backends.cpu.get_cpu_capability()
    return bool({"avx512_bf16", "amx_bf16"} & cpu_features()) and capability.startswith("AVX512")


def adapter_dtype(recipe: Recipe, precision: str) -> str | None:
    """The trainable weights' dtype on a quantized base (None without one): bf16 only where training runs in bf16."""
    if recipe.quantization.bits is None:
        return None
    if recipe.quantization.adapter_dtype != "auto":
        return recipe.quantization.adapter_dtype
    return "bfloat16" if precision == "bf16" else "float32"


def loss_vocab_chunk(setting: int | str, device: str) -> int:
    if setting != "auto":
        return int(setting)
    return TRL_VOCAB_CHUNK if device == "cuda" else CPU_VOCAB_CHUNK


def loss_kernel(setting: str, device: str) -> str:
    """"peftsft" (training/loss_head.py) on the CPU, "trl" (its Triton kernel) on CUDA, unless the recipe says trl."""
    return "peftsft" if setting == "auto" and device == "cpu" else "trl"


def lora_kernel(setting: str, device: str) -> str:
    """"peftsft" (training/lora_linear.py for plain LoRA layers) on the CPU, "peft" elsewhere or when the recipe
    says peft."""
    return "peftsft" if setting == "auto" and device == "cpu" else "peft"


def optimizer_name(setting: str) -> str:
    """auto: AdamW's fused kernel (torch >= 2.4 on CPU and CUDA): one kernel for every update instead of a loop
    over the adapter's ~400 small tensors (transformers' own default since torch 2.8)."""
    return "adamw_torch_fused" if setting == "auto" else setting


def base_dtype(recipe: Recipe, precision: str, has_adapters: bool) -> str | None:
    """The frozen base's dtype under adapters (None: left as loaded). bf16 where training runs in bf16: autocast
    casts frozen (non-leaf-requiring-grad) weights again at every use, a bf16 copy of the base per step; the
    trainable adapters and their optimizer states stay float32."""
    setting = recipe.training.base_dtype
    if recipe.quantization.bits is not None or not has_adapters:
        return None  # a quantized base has its own dtype; without adapters (full fine-tuning) nothing is frozen
    if setting != "auto":
        return setting
    return "bfloat16" if precision == "bf16" else None


def padding_free(setting: bool | str, attention: str, packing: bool, batch_size: int,
                 position_ids: bool = True) -> bool:
    """Padding-free batches (packing is padding-free already). auto: on where attention skips the other samples'
    tokens (flash attention's per-sample lengths, flex attention's block mask, peftsft's CPU attention sample by
    sample); off for sdpa/eager, where transformers 5 keeps the flattened samples apart with a dense
    block-diagonal mask: attention then costs (sum of lengths)² instead of batch × longest², more than the little
    padding length-grouped batches (the default sampling) leave; off for one sample a batch (nothing to flatten,
    and TRL warns) and where the model drops position ids (`takes_position_ids`). An explicit true works on every
    backend that keeps samples apart."""
    if packing:
        return False
    if setting != "auto":
        return bool(setting)
    return attention in VARLEN_ATTENTION and batch_size > 1 and position_ids


def takes_position_ids(model) -> bool:
    """Whether `model` passes position ids on to its layers, which is what keeps a flattened batch's samples apart:
    peft's prompt-learning adapters (prompt, prefix, p-tuning) drop them."""
    return not getattr(getattr(model, "active_peft_config", None), "is_prompt_learning", False)


# attention backends whose cost on a flattened batch grows with each sample's length, not the batch's total
VARLEN_ATTENTION = ("flash_attention_2", "flash_attention_3", "flex_attention", ATTENTION_BY_SAMPLE)


def has_frozen_base(model) -> bool:
    """Adapters on frozen float weights (LoRA family and other peft adapters), as opposed to full fine-tuning."""
    params = [p for p in model.parameters() if p.is_floating_point()]
    return any(p.requires_grad for p in params) and any(not p.requires_grad for p in params)


def cast_frozen_base(model, dtype: str | None) -> None:
    """The frozen floating weights to `dtype` (levers.base_dtype), the trainable ones untouched.

    Why: under autocast, torch caches the bf16 copy of a weight only for leaves that require grad, so a frozen
    fp32 base is cast again at every use (forward, recomputation) — a copy of the whole base each step."""
    import torch

    if dtype is None:
        return
    target = getattr(torch, dtype)
    for param in model.parameters():
        if not param.requires_grad and param.is_floating_point() and param.dtype != target:
            param.data = param.data.to(target)  # buffers (rotary frequencies) stay fp32 by design


def memory_available(device: str) -> int | None:
    """Bytes a run can still allocate: free memory of the current CUDA device, or the RAM Linux calls available."""
    import torch

    if device == "cuda":
        return int(torch.cuda.mem_get_info()[0]) if torch.cuda.is_available() else None
    try:
        for line in open("/proc/meminfo", encoding="ascii"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None
