"""The memory plan: a run's peak training memory from the model's config, summed from the levers' terms.

It covers what training allocates on top of the runtime (Python + libraries, the CUDA context): weights (quantized
where the recipe says so, in the dtypes the dtype levers give them), gradients, optimizer states (optimizer lever),
saved activations (precision, lora_kernel and checkpointing levers), the LM head (loss_head lever) and oneDNN's
cached kernels (kernel_caches lever). Peak = weights + optimizer + kernel caches + max(activations + loss head,
gradients): activations are freed during backward while gradients are created, and both ends of backward are where
memory tops out. The model is a meta-device skeleton: shapes, no memory.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from peftsft.core.config import Recipe
from peftsft.core.errors import UserError
from peftsft.levers import dtypes, kernel_caches, loss_head, lora_kernel, optimizer, precision
from peftsft.levers.activations import layer_activation_elements, layers_keeping_activations, trains_base_weights
from peftsft.levers.decision import Levers
from peftsft.levers.situation import Situation

if TYPE_CHECKING:
    import torch


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
    levers: dict[str, Any] = field(default_factory=dict)  # the levers planned with (Levers.as_dict)

    @property
    def peak_bytes(self) -> int:
        c = self.components
        return c["weights"] + c["optimizer"] + c["kernel_caches"] + max(c["activations"] + c["loss_head"],
                                                                        c["gradients"])  # fmt: skip

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "peak_bytes": self.peak_bytes}


def plan(situation: Situation, levers: Levers) -> MemoryPlan:
    """The run's peak memory with `levers`, on a skeleton of its model (the situation's, when it is one)."""
    recipe, device, notes = situation.recipe, situation.device, []
    model, params = skeleton(recipe, device, notes, situation.model)
    dtypes.prepare(model, levers.base_dtype)  # what the run does to its model, before and after building the trainer
    dtypes.settle(model, levers.adapter_dtype)
    batch, seq, seq_from = recipe.training.batch_size, recipe.data.max_length, "[data] max_length"
    if situation.longest_sample and not recipe.data.packing:
        seq, seq_from = min(situation.longest_sample, recipe.data.max_length), "longest sample in the data"
    seq += getattr(params, "num_virtual_tokens", 0) or 0  # prompt-learning methods lengthen every row
    result = MemoryPlan(
        device=device, dims=Dims.from_config(model.config), total_params=0, trainable_params=0, quantized_params=0,
        batch=batch, seq=seq, seq_from=seq_from, precision=levers.precision, checkpointing=levers.activation_checkpointing,
        checkpointing_reason=levers.checkpointing_reason, available_bytes=situation.available_bytes, notes=notes,
        levers=levers.as_dict(),
    )  # fmt: skip
    _count(result, model, recipe)
    trainable = [p for p in model.parameters() if p.requires_grad]
    trainable_bytes = sum(p.numel() * p.element_size() for p in trainable)
    output = model.get_output_embeddings()
    head_grad = output.weight.numel() * 4 if output is not None and output.weight.requires_grad else 0
    tokens = batch * (seq - 1)
    result.components = {
        "weights": _weight_bytes(result, model, recipe, levers),
        "gradients": trainable_bytes,
        "optimizer": optimizer.state_bytes(levers.optimizer, sum(p.numel() for p in trainable), trainable_bytes, notes),
        "activations": _activation_bytes(result, model, levers, params),
        "loss_head": loss_head.memory_bytes(levers.loss_head, tokens, result.dims.hidden, result.dims.vocab, device,
                                            levers.precision, head_grad) if levers.loss_head else 0,
        "kernel_caches": kernel_caches.memory_bytes(device, levers.precision),
    }  # fmt: skip
    return result


def skeleton(recipe: Recipe, device: str, notes: list[str], model=None):
    """(the model on the `meta` device with the recipe's strategy applied, the strategy's parameters); `model` is
    returned as it is when it is such a skeleton already."""
    from peftsft.strategies.registry import get_strategy, validate_params

    params = validate_params(get_strategy(recipe.strategy.name), recipe.strategy.params)
    if model is not None and next(model.parameters()).device.type == "meta":
        return model, params
    config = _load_config(recipe)
    return _with_strategy(config, recipe, _weights_dtype(recipe, device, notes), params), params


def _load_config(recipe: Recipe):
    from transformers import AutoConfig

    from peftsft.models import materialize, resolve_source

    location = materialize(resolve_source(recipe.model.source))  # a GGUF is converted once and cached
    try:
        return AutoConfig.from_pretrained(
            location, trust_remote_code=recipe.model.trust_remote_code, revision=recipe.model.revision
        )
    except OSError as exc:
        raise UserError(
            f"[model] source: no config.json for {recipe.model.source!r}: {str(exc).splitlines()[0]}",
            hint="the plan reads the model's config only; give a local model dir, a .gguf or a cached Hub id",
        ) from None


def _weights_dtype(recipe: Recipe, device: str, notes: list[str]):
    import torch

    from peftsft.models import resolve_dtype

    if device == "cuda" and not torch.cuda.is_available():
        notes.append("no CUDA device here: planned for one with bf16 support (Ampere or newer)")
        return torch.bfloat16 if recipe.model.dtype == "auto" else getattr(torch, recipe.model.dtype)
    return resolve_dtype(recipe.model.dtype, device)


def _with_strategy(config, recipe: Recipe, dtype, params):
    import torch
    from transformers import AutoModelForCausalLM

    from peftsft.strategies import StrategyContext, get_strategy

    strategy = get_strategy(recipe.strategy.name)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=recipe.model.trust_remote_code)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # peft asks a deprecated transformers property
            return strategy.apply(model, params, StrategyContext())
    except RuntimeError:
        if not hasattr(params, "init"):
            raise
        # PiSSA/OLoRA decompose real weights to start from; the adapter's shapes are LoRA's all the same
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        return strategy.apply(model, params.model_copy(update={"init": "default"}), StrategyContext())


def _count(plan: MemoryPlan, model: torch.nn.Module, recipe: Recipe) -> None:
    from peftsft.strategies import trainable_summary

    summary = trainable_summary(model)
    plan.total_params, plan.trainable_params = summary["total_params"], summary["trainable_params"]
    if recipe.quantization.bits is not None:
        plan.quantized_params = sum(m.weight.numel() for m in quantizable_linears(model))


def quantizable_linears(model: torch.nn.Module) -> list[torch.nn.Module]:
    """Frozen nn.Linear layers of the base (bitsandbytes keeps the LM head and the adapters in float)."""
    import torch

    output = model.get_output_embeddings()
    return [
        m for name, m in model.named_modules()
        if type(m) is torch.nn.Linear and m is not output and not m.weight.requires_grad
        and not any(part.startswith(("lora_", "hada_", "lokr_", "oft_", "vera_")) for part in name.split("."))
    ]


def _weight_bytes(plan: MemoryPlan, model: torch.nn.Module, recipe: Recipe, levers: Levers) -> int:
    tensors = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    if recipe.quantization.bits is None:
        return sum(t.numel() * t.element_size() for t in tensors.values())
    from peftsft.models import quantized_layer_bytes

    quant = recipe.quantization
    quantized = quantizable_linears(model)
    quantized_ids = {id(m.weight) for m in quantized}
    # the bitsandbytes layout peftsft trains on, on every CPU and on CUDA: see models.BNB_CPU_PATHS
    held = sum(quantized_layer_bytes(tuple(m.weight.shape), quant.bits, quant.double_quant) for m in quantized)
    per_param = held / max(plan.quantized_params, 1)
    # k-bit preparation (peft) upcasts the remaining frozen float weights (embeddings, norms) to fp32
    rest = sum(
        t.numel() * (t.element_size() if t.requires_grad else 4) for i, t in tensors.items() if i not in quantized_ids
    )
    plan.notes.append(f"{quant.bits}-bit base: {per_param:.3f} bytes per quantized weight; trainable weights in "
                      f"{levers.adapter_dtype}")  # fmt: skip
    return int(rest + held)


def _activation_bytes(plan: MemoryPlan, model: torch.nn.Module, levers: Levers, params) -> int:
    dims, tokens = plan.dims, plan.batch * plan.seq
    lora_modules = sum(1 for m in model.modules() if hasattr(m, "lora_A")) / max(dims.layers, 1)
    dora = getattr(params, "use_dora", False)
    per_layer = layer_activation_elements(
        dims, trains_base_weights(model), lora_modules, getattr(params, "r", 0) or 0,
        getattr(params, "dropout", 0.0) or 0.0, lora_kernel.fused_mlp(levers.lora_kernel, model, dora),
        lora_kernel.fused_norms(levers.lora_kernel, model),
    )
    extra_per_layer = 0
    if dora:
        # DoRA also keeps its weight-norm path per token and the layer's W + BA per layer (rough, measured)
        per_layer *= 2
        extra_per_layer = 0.85 * sum(m.weight.numel() for m in quantizable_linears(model)) / max(dims.layers, 1)
        plan.notes.append("DoRA activations are a rough estimate")
    layers = layers_keeping_activations(model, dims.layers)
    if plan.checkpointing:
        # each layer keeps its input; in backward one layer at a time is recomputed
        values = layers * dims.hidden * tokens + per_layer * tokens + extra_per_layer
    else:
        values = layers * (per_layer * tokens + extra_per_layer)
    # the backward of a layer holds gradients and temporaries about twice its saved activations
    values += 2 * per_layer * tokens
    values += 4 * dims.hidden * tokens  # embeddings output, final norm
    return int(values * precision.activation_bytes(plan.precision))
