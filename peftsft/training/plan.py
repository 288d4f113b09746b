"""`peftsft plan RECIPE`: peak training memory estimated from the model's config, before any weight is loaded.

The estimate covers what training allocates on top of the runtime (Python + torch libraries, the CUDA context):
weights (quantized where the recipe says so), gradients, optimizer states, saved activations and TRL's chunked
loss head, and on the CPU in bf16 oneDNN's cached kernels (core/kernel_caches.py). Peak = weights + optimizer
states + kernel caches + max(activations + loss head, gradients): activations are freed during backward while
gradients are created, and both ends of backward are where memory tops out.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from peftsft.core.config import Recipe
from peftsft.core.errors import UserError
from peftsft.core.kernel_caches import cached_kernel_bytes
from peftsft.training.activations import (
    fused_mlp,
    fused_norms,
    layer_activation_elements,
    layers_keeping_activations,
    trains_base_weights,
)
from peftsft.training.rules import memory_available

if TYPE_CHECKING:
    import torch

# TRL's fused LM head (trl.kernels.chunked_logprob) scores logits in [4096 tokens x 32768 vocab] tiles
LOSS_TILE_TOKENS = 4096  # and [training] loss_vocab_chunk vocabulary entries
# live fp32 tiles at the head's peak (its backward): the torch fallback used without Triton (CPU) holds ~9
# (logits, scaled, log-probabilities, probabilities, one-hot, gradient and temporaries; measured with the peak
# RSS); the Triton kernels on CUDA work in place in one buffer
LOSS_TILES_TORCH, LOSS_TILES_TRITON = 9, 1
# peftsft's CPU head (training/loss_head.py): one token block of logits at a time; its backward holds ~4 (logits,
# turned into log-probabilities in place, probabilities, the gradient, a temporary; measured 4.2 blocks on the
# benchmark's --quick job, fp32, before fp32 logits were shifted in place: one block fewer since); a LoRA run's eager
# forward holds 3 (logits, shifted, exp → p − onehot; 2 in fp32)
LOSS_BLOCKS_PEFTSFT = 4


@dataclass
class Dims:
    """The decoder's sizes, read from its config (Llama names; most architectures map onto them)."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int

    @classmethod
    def from_config(cls, config) -> Dims:
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        hidden, heads = text.hidden_size, text.num_attention_heads
        return cls(
            layers=text.num_hidden_layers,
            hidden=hidden,
            intermediate=getattr(text, "intermediate_size", None) or 4 * hidden,
            heads=heads,
            kv_heads=getattr(text, "num_key_value_heads", None) or heads,
            head_dim=getattr(text, "head_dim", None) or hidden // heads,
            vocab=text.vocab_size,
        )


@dataclass
class MemoryPlan:
    device: str
    dims: Dims
    total_params: int
    trainable_params: int
    quantized_params: int
    batch: int
    seq: int
    seq_from: str  # where `seq` came from: the longest sample in the data, or [data] max_length
    precision: str
    checkpointing: bool = False  # activation checkpointing, as set or as "auto" decided it
    checkpointing_reason: str = "set in the recipe"
    available_bytes: int | None = None  # memory the run may use: measured here, or given for a device elsewhere
    components: dict[str, int] = field(default_factory=dict)  # bytes
    notes: list[str] = field(default_factory=list)

    @property
    def peak_bytes(self) -> int:
        c = self.components
        return c["weights"] + c["optimizer"] + c["kernel_caches"] + max(c["activations"] + c["loss_head"],
                                                                        c["gradients"])  # fmt: skip

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "peak_bytes": self.peak_bytes}


# ---------------------------------------------------------------------------------------------- estimate


def estimate(
    recipe: Recipe, device: str | None = None, read_data: bool = True, longest_sample: int | None = None,
    available_bytes: int | None = None,
) -> MemoryPlan:
    """The recipe's peak training memory on `device` (default: the recipe's, resolved on this machine).

    `longest_sample` (tokens), when the caller knows it, saves reading the data again; `available_bytes` plans
    for a device with that much memory (e.g. a 24 GB GPU this machine lacks) instead of measuring this one's."""
    from peftsft.training.rules import adapter_dtype, base_dtype, cast_frozen_base, has_frozen_base
    from peftsft.models import materialize, pick_device, resolve_source

    device = device or pick_device(recipe.training.device)
    location = materialize(resolve_source(recipe.model.source))  # a GGUF is converted once and cached
    config = _load_config(location, recipe)
    notes: list[str] = []
    dtype, precision = _dtype_and_precision(recipe, device, notes)
    model, strategy_params = _skeleton_with_strategy(config, recipe, dtype)
    if adapter_dtype(recipe, precision) == "bfloat16":
        _adapters_to_bf16(model)
    cast_frozen_base(model, base_dtype(recipe, precision, has_frozen_base(model)))  # as make_trainer does
    batch, seq, seq_from = _batch_shape(recipe, location, read_data)
    if longest_sample and not recipe.data.packing:
        seq, seq_from = min(longest_sample, recipe.data.max_length), "longest sample in the data"
    seq += getattr(strategy_params, "num_virtual_tokens", 0) or 0  # prompt-learning methods lengthen every row
    plan = MemoryPlan(
        device=device, dims=Dims.from_config(config), total_params=0, trainable_params=0, quantized_params=0,
        batch=batch, seq=seq, seq_from=seq_from, precision=precision, notes=notes, available_bytes=available_bytes,
    )
    _count(plan, model, recipe)
    plan.checkpointing = recipe.training.activation_checkpointing is True
    _fill_components(plan, model, recipe, strategy_params)
    if recipe.training.activation_checkpointing == "auto":
        _decide_checkpointing(plan, model, recipe, strategy_params)
    return plan


# Share of the available memory a run may fill without activation checkpointing ("auto" turns it on above it);
# the rest is headroom for fragmentation, the runtime and the estimate's error
CHECKPOINTING_THRESHOLD = 0.8


def _decide_checkpointing(plan: MemoryPlan, model: torch.nn.Module, recipe: Recipe, params) -> None:
    """activation_checkpointing = "auto": on only when the run without it would fill over CHECKPOINTING_THRESHOLD
    of the memory available (GPU or CPU; unknown: off), as it costs ~25% of the speed. Why our own rule: TRL turns
    it on for every run, even where memory is plentiful; transformers has no memory-driven switch."""
    available = plan.available_bytes if plan.available_bytes is not None else memory_available(plan.device)
    plan.available_bytes = available
    needed = plan.peak_bytes
    share = f"{CHECKPOINTING_THRESHOLD:.0%}"
    if available is None:
        plan.checkpointing_reason = f"auto: off, ~{gib(needed)} needed; available memory unknown"
        return
    if needed <= CHECKPOINTING_THRESHOLD * available:
        plan.checkpointing_reason = (
            f"auto: off, ~{gib(needed)} needed without it, {needed / available:.0%} of {gib(available)} available "
            f"(on above {share})"
        )
        return
    plan.checkpointing = True
    plan.components["activations"] = _activation_bytes(plan, model, recipe, params)
    plan.checkpointing_reason = (
        f"auto: on, without it ~{gib(needed)} needed, {needed / available:.0%} of {gib(available)} available "
        f"(over {share}); with it ~{gib(plan.peak_bytes)}"
    )


def _load_config(location: str, recipe: Recipe):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(
            location, trust_remote_code=recipe.model.trust_remote_code, revision=recipe.model.revision
        )
    except OSError as exc:
        raise UserError(
            f"[model] source: no config.json for {recipe.model.source!r}: {str(exc).splitlines()[0]}",
            hint="plan reads the model's config only; give a local model dir, a .gguf or a cached Hub id",
        ) from None


def _dtype_and_precision(recipe: Recipe, device: str, notes: list[str]):
    """The weights' dtype and the autocast precision the run would use on `device`."""
    import torch

    from peftsft.models import resolve_dtype
    from peftsft.training.rules import resolve_precision

    if device == "cuda" and not torch.cuda.is_available():
        notes.append("no CUDA device here: planned for one with bf16 support (Ampere or newer)")
        dtype = torch.bfloat16 if recipe.model.dtype == "auto" else getattr(torch, recipe.model.dtype)
        precision = "bf16" if recipe.training.precision == "auto" else recipe.training.precision
        return dtype, precision
    return resolve_dtype(recipe.model.dtype, device), resolve_precision(recipe.training.precision, device)


def _skeleton_with_strategy(config, recipe: Recipe, dtype):
    """The model on the `meta` device (shapes, no memory) with the recipe's strategy applied."""
    import torch

    from transformers import AutoModelForCausalLM

    from peftsft.strategies import StrategyContext, get_strategy
    from peftsft.strategies.registry import validate_params

    strategy = get_strategy(recipe.strategy.name)
    params = validate_params(strategy, recipe.strategy.params)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=recipe.model.trust_remote_code)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # peft asks a deprecated transformers property
            return strategy.apply(model, params, StrategyContext()), params
    except RuntimeError:
        if not hasattr(params, "init"):
            raise
        # PiSSA/OLoRA decompose real weights to start from; the adapter's shapes are LoRA's all the same
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        return strategy.apply(model, params.model_copy(update={"init": "default"}), StrategyContext()), params


def _adapters_to_bf16(model: torch.nn.Module) -> None:
    """What TRL's SFTTrainer does on a quantized base (QLoRA paper): trainable weights in bf16, bar DoRA's magnitude."""
    import torch

    for name, param in model.named_parameters():
        if param.requires_grad and "lora_magnitude_vector" not in name:
            param.data = param.data.to(torch.bfloat16)


def _batch_shape(recipe: Recipe, location: str, read_data: bool) -> tuple[int, int, str]:
    """(batch, tokens per row at the peak): the longest batch is padded to the longest sample."""
    batch, max_length = recipe.training.batch_size, recipe.data.max_length
    if recipe.data.packing or not read_data:
        return batch, max_length, "[data] max_length"
    from peftsft.data import build_datasets
    from peftsft.data.build import apply_template
    from peftsft.models import load_tokenizer

    tokenizer = load_tokenizer(location, recipe.model)
    apply_template(tokenizer, recipe.data)
    train_only = recipe.data.model_copy(update={"eval_path": None, "eval_fraction": 0.0})  # eval keeps no activations
    _, _, stats = build_datasets(tokenizer, train_only, recipe.training.seed)
    return batch, min(stats.max_tokens, max_length), "longest sample in the data"


def _count(plan: MemoryPlan, model: torch.nn.Module, recipe: Recipe) -> None:
    from peftsft.strategies import trainable_summary

    summary = trainable_summary(model)
    plan.total_params, plan.trainable_params = summary["total_params"], summary["trainable_params"]
    if recipe.quantization.bits is not None:
        plan.quantized_params = sum(m.weight.numel() for m in _quantizable_linears(model))


def _quantizable_linears(model: torch.nn.Module) -> list[torch.nn.Module]:
    """Frozen nn.Linear layers of the base (bitsandbytes keeps the LM head and the adapters in float)."""
    import torch

    output = model.get_output_embeddings()
    return [
        m for name, m in model.named_modules()
        if type(m) is torch.nn.Linear and m is not output and not m.weight.requires_grad
        and not any(part.startswith(("lora_", "hada_", "lokr_", "oft_", "vera_")) for part in name.split("."))
    ]


# ---------------------------------------------------------------------------------------------- components


def _fill_components(plan: MemoryPlan, model: torch.nn.Module, recipe: Recipe, params) -> None:
    from peftsft.training.rules import optimizer_name

    trainable = [p for p in model.parameters() if p.requires_grad]
    plan.components = {
        "weights": _weight_bytes(plan, model, recipe),
        "gradients": sum(p.numel() * p.element_size() for p in trainable),
        "optimizer": _optimizer_bytes(optimizer_name(recipe.training.optim), trainable, plan.notes),
        "activations": _activation_bytes(plan, model, recipe, params),
        "loss_head": _loss_head_bytes(plan, model, recipe),
        # bf16 products on the CPU go through oneDNN, which keeps a compiled kernel per shape
        "kernel_caches": cached_kernel_bytes() if plan.device == "cpu" and plan.precision == "bf16" else 0,
    }


def _weight_bytes(plan: MemoryPlan, model: torch.nn.Module, recipe: Recipe) -> int:
    tensors = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    if recipe.quantization.bits is None:
        return sum(t.numel() * t.element_size() for t in tensors.values())
    from peftsft.models import quantized_layer_bytes

    quant = recipe.quantization
    quantized = _quantizable_linears(model)
    quantized_ids = {id(m.weight) for m in quantized}
    # the bitsandbytes layout peftsft trains on, on every CPU and on CUDA: see models.BNB_CPU_PATHS
    held = sum(quantized_layer_bytes(tuple(m.weight.shape), quant.bits, quant.double_quant) for m in quantized)
    per_param = held / max(plan.quantized_params, 1)
    # k-bit preparation (peft) upcasts the remaining frozen float weights (embeddings, norms) to fp32
    rest = sum(
        t.numel() * (t.element_size() if t.requires_grad else 4) for i, t in tensors.items() if i not in quantized_ids
    )
    from peftsft.training.rules import adapter_dtype

    plan.notes.append(
        f"{quant.bits}-bit base: {per_param:.3f} bytes per quantized weight; trainable weights in "
        f"{adapter_dtype(recipe, plan.precision)}"
    )
    return int(rest + held)


def _optimizer_bytes(optim: str, trainable: list[torch.Tensor], notes: list[str]) -> int:
    """Adam-style optimizers keep two states per trainable value (in its dtype); 8-bit ones a byte each."""
    values = sum(p.numel() for p in trainable)
    nbytes = sum(p.numel() * p.element_size() for p in trainable)
    name = optim.lower()
    if "8bit" in name:
        return 2 * values
    if "sgd" in name or "adafactor" in name:
        notes.append(f"optimizer {optim}: states counted as 0 (SGD without momentum / factored Adafactor)")
        return 0
    if "lion" in name:
        return nbytes
    if "adam" not in name:
        notes.append(f"optimizer {optim}: assumed to keep two states per trainable value, like AdamW")
    return 2 * nbytes


def _activation_bytes(plan: MemoryPlan, model: torch.nn.Module, recipe: Recipe, params) -> int:
    dims, tokens = plan.dims, plan.batch * plan.seq
    per_value = 4 if plan.precision == "fp32" else 2.4  # autocast: half-precision matmul outputs, fp32 norms
    lora_modules = sum(1 for m in model.modules() if hasattr(m, "lora_A")) / max(dims.layers, 1)
    trains_base = trains_base_weights(model)
    per_layer = layer_activation_elements(
        dims, trains_base, lora_modules, getattr(params, "r", 0) or 0, getattr(params, "dropout", 0.0) or 0.0,
        fused_mlp(plan.device, model, recipe, params), fused_norms(plan.device, model, recipe),
    )
    if getattr(params, "use_dora", False):
        # DoRA also keeps its weight-norm path per token and the layer's W + BA per layer (rough, measured)
        per_layer *= 2
        extra_per_layer = 0.85 * sum(m.weight.numel() for m in _quantizable_linears(model)) / max(dims.layers, 1)
        plan.notes.append("DoRA activations are a rough estimate")
    else:
        extra_per_layer = 0
    layers = layers_keeping_activations(model, dims.layers)
    if plan.checkpointing:
        # each layer keeps its input; in backward one layer at a time is recomputed
        values = layers * dims.hidden * tokens + per_layer * tokens + extra_per_layer
    else:
        values = layers * (per_layer * tokens + extra_per_layer)
    # the backward of a layer holds gradients and temporaries about twice its saved activations (measured on
    # SmolLM2 LoRA with and without checkpointing)
    values += 2 * per_layer * tokens
    values += 4 * dims.hidden * tokens  # embeddings output, final norm
    return int(values * per_value)


def _loss_head_bytes(plan: MemoryPlan, model: torch.nn.Module, recipe: Recipe) -> int:
    """TRL's fused LM head: logits only ever exist as [tokens x vocab] tiles, plus fp32 gradient accumulators."""
    from peftsft.training.loss_head import block_rows
    from peftsft.training.rules import loss_kernel, loss_vocab_chunk

    dims = plan.dims
    tokens = plan.batch * (plan.seq - 1)
    if loss_kernel(recipe.training.loss_kernel, plan.device) == "peftsft":  # ≤ 3 fp32 token blocks + hidden grad
        block = min(tokens, block_rows(dims.vocab)) * dims.vocab
        blocks = LOSS_BLOCKS_PEFTSFT - (plan.precision == "fp32")  # fp32 logits are shifted in place: one fewer
        return int(blocks * block * 4 + tokens * dims.hidden * 4 + _head_weight_grad_bytes(model))
    vocab_slice = loss_vocab_chunk(recipe.training.loss_vocab_chunk, plan.device)
    tile = min(tokens, LOSS_TILE_TOKENS) * min(dims.vocab, vocab_slice)
    if plan.device == "cuda":
        half = plan.precision in ("bf16", "fp16")
        head = LOSS_TILES_TRITON * tile * (2 if half else 4)
    else:
        head = LOSS_TILES_TORCH * tile * 4
    head += tokens * dims.hidden * 4  # gradient w.r.t. the last hidden states
    return int(head + _head_weight_grad_bytes(model))


def _head_weight_grad_bytes(model: torch.nn.Module) -> int:
    """The fp32 accumulator for a trainable head's weight gradient (none for a frozen head)."""
    output = model.get_output_embeddings()
    return output.weight.numel() * 4 if output is not None and output.weight.requires_grad else 0


def gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:.2f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.1f} MiB"
