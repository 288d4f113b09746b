"""The memory plan: a run's peak training memory from the model's config, summed from the levers' terms.

It covers what training allocates on top of the runtime (Python + libraries, the CUDA context): weights (quantized
where the recipe says so, in the dtypes the dtype levers give them), gradients, optimizer states (optimizer lever),
saved activations (precision, lora_kernel and checkpointing levers), the LM head (loss_head lever) and oneDNN's
cached kernels (kernel_caches lever). Peak = weights + optimizer + kernel caches + max(activations + loss head,
gradients): activations are freed during backward while gradients are created, and both ends of backward are where
memory tops out. The model is a meta-device skeleton: shapes, no memory.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from peftsft.levers import dtypes, kernel_caches, loss_head, lora_kernel, mlp_tiling, optimizer, precision
from peftsft.levers.activations import activation_values, layer_activation_elements, layers_keeping_activations
from peftsft.levers.activations import trains_base_weights
from peftsft.levers.decision import Levers
from peftsft.levers.situation import Situation
from peftsft.levers.model_skeleton import skeleton

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
    def training_peak_bytes(self) -> int:
        c = self.components
        return c["weights"] + c["optimizer"] + c["kernel_caches"] + max(c["activations"] + c["loss_head"],
                                                                        c["gradients"])  # fmt: skip

    @property
    def peak_bytes(self) -> int:
        """Training's peak, or the general check's where it is larger (it scores the model with training's
        optimizer states and gradients released)."""
        c = self.components
        return max(self.training_peak_bytes, c["weights"] + c["kernel_caches"] + c.get("general_check", 0))

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "peak_bytes": self.peak_bytes, "training_peak_bytes": self.training_peak_bytes}


@dataclass
class ModelFacts:
    """What the plan reads off the skeleton, in one pass."""

    total_params: int
    trainable_params: int
    trainable_bytes: int  # the trainable weights as they train (dtype levers applied)
    head_grad_bytes: int  # the fp32 accumulator of a trainable LM head's gradient (0 for a frozen head)
    quantized_shapes: list[tuple[int, int]]  # [out, in] of the frozen linear layers (what a k-bit base quantizes)
    unquantized_bytes: int  # every other tensor (quantized runs: frozen float ones upcast to fp32 by k-bit prep)
    lora_modules_per_layer: float
    trains_base: bool
    layers_kept: int  # decoder layers whose activations the backward needs


def plan(situation: Situation, levers: Levers) -> MemoryPlan:
    """The run's peak memory with `levers`, on a skeleton of its model (the situation's, when it is one)."""
    from peftsft.models import quantized_layer_bytes

    recipe, device, notes, quant = situation.recipe, situation.device, [], situation.recipe.quantization
    model, params = skeleton(recipe, device, notes, situation.model)
    dtypes.prepare(model, levers.base_dtype)  # what the run does to its model, before and after building the trainer
    dtypes.settle(model, levers.adapter_dtype)
    dims, facts = Dims.from_config(model.config), model_facts(model, quant.bits is not None)
    batch, seq, seq_from = recipe.training.batch_size, recipe.data.max_length, "[data] max_length"
    if situation.sequences_per_row > 1:
        batch *= situation.sequences_per_row
        notes.append(f"{recipe.training.batch_size} pair(s) a step: chosen and rejected answers in one forward, "
                     f"{batch} sequences")
    if situation.longest_sample and not recipe.data.packing:
        seq, seq_from = min(situation.longest_sample, recipe.data.max_length), "longest sample in the data"
    seq += getattr(params, "num_virtual_tokens", 0) or 0  # prompt-learning methods lengthen every row
    weights = facts.unquantized_bytes
    if quant.bits is not None:  # the bitsandbytes layout peftsft trains on, on every CPU and on CUDA
        held = sum(quantized_layer_bytes(shape, quant.bits, quant.double_quant) for shape in facts.quantized_shapes)
        quantized = sum(o * i for o, i in facts.quantized_shapes)
        notes.append(f"{quant.bits}-bit base: {held / max(quantized, 1):.3f} bytes per quantized weight; trainable "
                     f"weights in {levers.adapter_dtype}")  # fmt: skip
        weights += held
    dora, rank, dropout = getattr(params, "use_dora", False), getattr(params, "r", 0) or 0, getattr(params, "dropout", 0.0)
    per_layer = layer_activation_elements(
        dims, facts.trains_base, facts.lora_modules_per_layer, rank, dropout or 0.0,
        lora_kernel.fused_mlp(levers.lora_kernel, model, dora), lora_kernel.fused_norms(levers.lora_kernel, model),
        levers.mlp_tiling,
    )
    extra_per_layer = 0.0
    if dora:  # DoRA also keeps its weight-norm path per token and the layer's W + BA per layer (rough, measured)
        per_layer *= 2
        extra_per_layer = 0.85 * sum(o * i for o, i in facts.quantized_shapes) / max(dims.layers, 1)
        notes.append("DoRA activations are a rough estimate")
    values = activation_values(dims.hidden, batch * seq, per_layer, extra_per_layer, facts.layers_kept,
                               levers.activation_checkpointing)  # fmt: skip
    if levers.mlp_tiling:
        values += mlp_tiling.tile_elements(dims.intermediate)
    components = {
        "weights": int(weights),
        "gradients": facts.trainable_bytes,
        "optimizer": optimizer.state_bytes(levers.optimizer, facts.trainable_params, facts.trainable_bytes, notes),
        "activations": int(values * precision.activation_bytes(levers.precision)),
        "loss_head": loss_head.memory_bytes(levers.loss_head, batch * (seq - 1), dims.hidden, dims.vocab, device,
                                            levers.precision, facts.head_grad_bytes) if levers.loss_head else 0,
        "kernel_caches": kernel_caches.memory_bytes(device, levers.precision),
    }  # fmt: skip
    return MemoryPlan(
        device=device, dims=dims, total_params=facts.total_params, trainable_params=facts.trainable_params,
        quantized_params=sum(o * i for o, i in facts.quantized_shapes) if quant.bits else 0, batch=batch, seq=seq, seq_from=seq_from,
        precision=levers.precision, checkpointing=levers.activation_checkpointing,
        checkpointing_reason=levers.checkpointing_reason, available_bytes=situation.available_bytes,
        components=components, notes=notes, levers=levers.as_dict(),
    )  # fmt: skip


def model_facts(model: torch.nn.Module, quantized: bool) -> ModelFacts:
    import torch

    from peftsft.strategies import trainable_summary

    summary = trainable_summary(model)
    output = model.get_output_embeddings()
    linears = [
        m for name, m in model.named_modules()
        if type(m) is torch.nn.Linear and m is not output and not m.weight.requires_grad
        and not any(part.startswith(("lora_", "hada_", "lokr_", "oft_", "vera_")) for part in name.split("."))
    ]  # frozen nn.Linear layers of the base: bitsandbytes keeps the LM head and the adapters in float
    quantized_ids = {id(m.weight) for m in linears} if quantized else set()
    tensors = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    # k-bit preparation (peft) upcasts the remaining frozen float weights (embeddings, norms) to fp32
    rest = sum(t.numel() * (t.element_size() if t.requires_grad or not quantized else 4)
               for i, t in tensors.items() if i not in quantized_ids)  # fmt: skip
    trainable = [p for p in model.parameters() if p.requires_grad]
    layers = model.config.get_text_config().num_hidden_layers
    return ModelFacts(
        total_params=summary["total_params"],
        trainable_params=summary["trainable_params"],
        trainable_bytes=sum(p.numel() * p.element_size() for p in trainable),
        head_grad_bytes=output.weight.numel() * 4 if output is not None and output.weight.requires_grad else 0,
        quantized_shapes=[tuple(m.weight.shape) for m in linears],
        unquantized_bytes=rest,
        lora_modules_per_layer=sum(1 for m in model.modules() if hasattr(m, "lora_A")) / max(layers, 1),
        trains_base=trains_base_weights(model),
        layers_kept=layers_keeping_activations(model, layers),
    )
