"""Every touch of TRL/transformers internals, in one place: checked against the versions it was written for.

Why internals at all: TRL offers no argument for its fused LM head's vocabulary slice or for scoring only the
supervised positions off CUDA (see `loss_head`), and casts adapters on a quantized base to bf16 unconditionally
(see `set_adapter_dtype`). Each patch here names what it needs; a missing attribute is a named fallback recorded
in summary.json's levers (`fallbacks`), never a silent no-op, and whatever we change is restored after training.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import inspect
import warnings
from collections.abc import Iterator

from peftsft.core.errors import UserError

# The releases this module was written and tested against: a different major (or a TRL minor outside the range)
# fails loudly instead of patching attributes that may mean something else.
SUPPORTED = {"trl": ((1, 16), (1, 99)), "transformers": ((5, 0), (5, 99))}


def _version(package: str) -> tuple[int, int]:
    major, minor, *_ = (importlib.metadata.version(package).split(".") + ["0"])[:2]
    return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)


def check_versions() -> dict[str, str]:
    """The installed TRL/transformers versions; a UserError naming the supported range when outside it."""
    found = {}
    for package, (low, high) in SUPPORTED.items():
        version = _version(package)
        found[package] = importlib.metadata.version(package)
        if not low <= version <= high:
            raise UserError(
                f"{package} {found[package]} is not supported by this peftsft "
                f"(written for {low[0]}.{low[1]} to {high[0]}.x)",
                hint=f"pip install '{package}>={low[0]}.{low[1]},<{high[0] + 1}'",
            )
    return found


def register_attention(name: str, function) -> None:
    """Register `function` as transformers attention `name`, with SDPA's mask format; it is called with
    `sdpa=sdpa_attention_forward`, transformers' own (transformers.integrations.sdpa_attention)."""
    import functools

    check_versions()
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(name, functools.partial(function, sdpa=sdpa_attention_forward))
    AttentionMaskInterface.register(name, sdpa_mask)


def attention_implementation(model) -> str:
    """The attention backend transformers chose for `model` (a private config attribute in transformers 5)."""
    return getattr(getattr(model, "config", None), "_attn_implementation", None) or "eager"


@contextlib.contextmanager
def loss_head(vocab_chunk: int, supervised_only: bool, fallbacks: list[str], kernel: str = "trl") -> Iterator[None]:
    """Point TRL's fused LM head at a vocabulary slice and (off CUDA) at the supervised positions only; restore after.

    Why module attributes: TRL reads `trl.trainer.utils._CHUNKED_LOGPROB_CHUNK_SIZE` on every call; on CPU its
    32768-wide fp32 tiles are the largest single allocation of a LoRA step (~0.6 GiB at 800 tokens), and 4096-wide
    ones are also faster (measured). It scores only the supervised positions where `trl.trainer.utils._use_triton`
    says so (CUDA), and every position elsewhere, to keep shapes static for XLA; on CPU that only wastes the head's
    work on prompts (~15% of a SmolLM2 step at 42% supervised tokens, measured). The kernel module keeps its own
    `_use_triton`, so the kernels themselves are unaffected. With kernel "peftsft", `_ChunkedLogProbFunction` (the
    name TRL's fused forward calls) is training/loss_head.py's drop-in. Missing attributes go to `fallbacks`."""
    check_versions()
    import trl.trainer.utils as trl_utils

    saved = {}
    wanted = {"_CHUNKED_LOGPROB_CHUNK_SIZE": vocab_chunk}
    if supervised_only:
        wanted["_use_triton"] = lambda device: True
    if kernel == "peftsft":
        from peftsft.training.loss_head import CpuLogProbFunction

        wanted["_ChunkedLogProbFunction"] = CpuLogProbFunction
    for name, value in wanted.items():
        if not hasattr(trl_utils, name):
            fallbacks.append(f"trl.trainer.utils.{name} is missing in this TRL: that lever falls back to TRL's default")
            warnings.warn(f"peftsft: {fallbacks[-1]}", stacklevel=2)
            continue
        saved[name] = getattr(trl_utils, name)
        setattr(trl_utils, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(trl_utils, name, value)


def set_adapter_dtype(model, adapter_dtype: str | None) -> None:
    """Undo TRL's bf16 cast of the trainable weights on a quantized base where the levers say float32.

    Why: TRL casts them unconditionally (QLoRA paper); on CPUs without bf16 matmuls that makes every adapter
    matmul ~100x slower, while fp32 adapters learn at least as exactly."""
    import torch

    if adapter_dtype != "float32":
        return
    for param in model.parameters():
        if param.requires_grad and param.dtype == torch.bfloat16:
            param.data = param.data.float()


@contextlib.contextmanager
def adapter_input_casts_skipped(model, skip: bool) -> Iterator[None]:
    """Under half-precision autocast with a half-precision frozen base: peft's LoRA layers skip casting their
    input to the adapter's fp32 (peft.helpers.disable_input_dtype_casting); restored after.

    Why: autocast casts it straight back to bf16 for the adapter's matmul, so the round trip (a copy of every
    adapted layer's input, forward and backward) changes no value and costs time."""
    if not skip:
        yield
        return
    from peft.helpers import disable_input_dtype_casting

    with disable_input_dtype_casting(model):
        yield


# peft's LoRA Linear.forward(self, x, *args, **kwargs) with base_layer / lora_A / lora_B / lora_dropout / scaling /
# active_adapters / lora_variant as lora_linear.eligible_adapter reads them: unchanged from 0.17 to the 0.21 tested here
PEFT_LORA_FORWARD = ((0, 17), (0, 99))


@contextlib.contextmanager
def lora_forward(enabled: bool, fallbacks: list[str]) -> Iterator[None]:
    """peft's LoRA `Linear.forward` sends eligible layers to training/lora_linear.py's fused function while the
    block runs (every other call goes to peft's own); restored after. Outside the peft versions it was written for,
    peft's forward stays and the fallback is recorded."""
    if not enabled:
        yield
        return
    from peft.tuners.lora import layer as lora_layer

    from peftsft.training.lora_linear import eligible_adapter, fused_forward

    low, high = PEFT_LORA_FORWARD
    if not low <= _version("peft") <= high or not hasattr(lora_layer, "Linear"):
        fallbacks.append(f"peft {importlib.metadata.version('peft')} is outside {low}-{high}: LoRA layers run "
                         "peft's own forward")  # fmt: skip
        warnings.warn(f"peftsft: {fallbacks[-1]}", stacklevel=2)
        yield
        return
    original = lora_layer.Linear.forward

    def forward(self, x, *args, **kwargs):
        name = eligible_adapter(self, x, args, kwargs)
        return original(self, x, *args, **kwargs) if name is None else fused_forward(self, x, name)

    lora_layer.Linear.forward = forward
    try:
        yield
    finally:
        lora_layer.Linear.forward = original


# transformers 5's standard gated MLP forward (shared by ~130 modeling files: Llama, Qwen2/3, Mistral, Gemma 1-3,
# SmolLM3...) and Llama-style RMSNorm forward, line by line: a module whose class's forward reads otherwise keeps it
MLP_FORWARD = ("down_proj = self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))", "return down_proj")
RMSNORM_FORWARD = (
    "input_dtype = hidden_states.dtype",
    "hidden_states = hidden_states.to(torch.float32)",
    "variance = hidden_states.pow(2).mean(-1, keepdim=True)",
    "hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)",
    "return self.weight * hidden_states.to(input_dtype)",
)


@functools.cache
def forward_body(cls: type) -> tuple[str, ...]:
    """The statements of `cls.forward` (stripped lines, without its signature, blanks and comments); () when its
    source is not available."""
    try:
        lines = inspect.getsource(cls.forward).splitlines()
    except (OSError, TypeError):
        return ()
    start = next((i for i, line in enumerate(lines) if line.rstrip().endswith(":")), len(lines)) + 1
    return tuple(line.strip() for line in lines[start:] if line.strip() and not line.strip().startswith("#"))


def activation_name(act) -> str | None:
    """fused_layers' name for a transformers activation module, None for one it does not compute."""
    import torch
    from transformers.activations import GELUTanh, SiLUActivation

    if type(act) in (SiLUActivation, torch.nn.SiLU):
        return "silu"
    tanh_gelu = type(act) is GELUTanh and isinstance(getattr(act, "act", None), functools.partial) \
        and act.act.func is torch.nn.functional.gelu and act.act.keywords == {"approximate": "tanh"}  # fmt: skip
    if tanh_gelu or (type(act) is torch.nn.GELU and act.approximate == "tanh"):
        return "gelu_tanh"
    return None


def fusable_mlp(module) -> str | None:
    """The activation's name (fused_layers.ACTIVATIONS) when `module` is a gated MLP with transformers' standard
    forward and an activation fused_layers computes; None otherwise."""
    if forward_body(type(module)) != MLP_FORWARD or getattr(type(module).forward, "peftsft_fused", False):
        return None
    return activation_name(module.act_fn)


@contextlib.contextmanager
def fused_layers(model, enabled: bool, fallbacks: list[str]) -> Iterator[None]:
    """While the block runs, the standard gated MLPs (with a LoRA down projection) and Llama-style RMSNorms train
    through training/fused_layers.py (fewer tensors kept for the backward; every other call — no grad, not on the
    CPU, other adapters — runs the module's own forward); restored after. The classes of `model`'s modules are
    patched, not the instances: transformers' kernels integration resets instance forwards on `train()`. A model
    with gated MLPs none of which has the standard forward records the fallback."""
    if not enabled or model is None:
        yield
        return
    originals, gated = {}, False
    for module in model.modules():
        cls = type(module)
        gated = gated or all(hasattr(module, f"{part}_proj") for part in ("gate", "up", "down"))
        if cls in originals or getattr(cls.forward, "peftsft_fused", False):
            continue
        if fusable_mlp(module):
            originals[cls] = cls.forward
            cls.forward = _fused_mlp_forward(cls.forward)
        elif forward_body(cls) == RMSNORM_FORWARD:
            originals[cls] = cls.forward
            cls.forward = _fused_norm_forward(cls.forward)
    if gated and not any(body == MLP_FORWARD for body in map(forward_body, originals)):
        fallbacks.append(f"transformers {importlib.metadata.version('transformers')}: no gated MLP of "
                         f"{type(model).__name__} has the standard forward and a SiLU/tanh-GELU activation; they keep "
                         "every activation")  # fmt: skip
    try:
        yield
    finally:
        for cls, forward in originals.items():
            cls.forward = forward


def _fused_mlp_forward(original):
    from peft.tuners.lora import layer as lora_layer

    from peftsft.training.fused_layers import gated_down
    from peftsft.training.lora_linear import eligible_adapter

    def forward(self, x):
        act, down = activation_name(self.act_fn), self.down_proj
        name = eligible_adapter(down, x, (), {}) if act and isinstance(down, lora_layer.Linear) else None
        if name is None:
            return original(self, x)
        return gated_down(down, self.gate_proj(x), self.up_proj(x), name, act)

    forward.peftsft_fused = True
    return forward


def _fused_norm_forward(original):
    import torch

    from peftsft.training.fused_layers import RMSNormFunction

    def forward(self, hidden_states):
        x = hidden_states
        if not (x.requires_grad or self.weight.requires_grad) or not torch.is_grad_enabled() or x.device.type != "cpu":
            return original(self, x)
        return RMSNormFunction.apply(x, self.weight, self.variance_epsilon)

    forward.peftsft_fused = True
    return forward
