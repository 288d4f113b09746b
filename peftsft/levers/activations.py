"""What a training step keeps for the backward, per decoder layer: the formula the memory plan sums (memory.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def layer_activation_elements(dims, trains_base: bool, lora_modules: float, rank: int, dropout: float,
                              fused: bool = False, fused_norms: bool = False, tiled_mlp: bool = False) -> float:  # fmt: skip
    """Values autograd keeps per token per decoder layer of `dims` (memory.Dims; Llama family, transformers 5, padded
    batches, SDPA or peftsft's CPU attention: neither keeps the attention probabilities).

    Measured with torch.autograd.graph.saved_tensors_hooks: 2 RMSNorms (input, rms, output, flattened copy),
    q/k/v after RoPE (k/v repeated to all heads when the batch has padding), attention output twice, the MLP's
    gate, up, SiLU and product. Training the base's weights keeps 2 more hidden-sized inputs; each LoRA module
    its rank-sized middle; LoRA dropout a dropped copy of each adapted input. `fused` (the lora_kernel lever's fused
    layers): the MLP keeps gate and up only, dropout one copy per distinct input;
    `fused_norms` (fused_layers' RMSNorm): a trained norm weight keeps no normalized input. `tiled_mlp` (the
    mlp_tiling lever): the MLP keeps no intermediates per token (a tile's are counted apart).
    """
    h, i, q = dims.hidden, dims.intermediate, dims.heads * dims.head_dim
    mlp = 0 if tiled_mlp else (2 if fused else 4) * i
    elements = 4 * h + mlp + 2 * q + 2 * q + dims.heads + 11  # 11: small per-token tensors
    if trains_base and not fused_norms:
        elements += 2 * h
    elements += rank * lora_modules
    if dropout > 0:
        copies = (5 * h + q + i) if fused else (8 * h + 2 * q + i)  # measured for all 7 linear layers of a block
        elements += copies * lora_modules / 7
    return elements


def trains_base_weights(model: torch.nn.Module) -> bool:
    import torch

    return any(type(m) is torch.nn.Linear and m.weight.requires_grad for m in _base_linears(model))


def _base_linears(model: torch.nn.Module) -> list[torch.nn.Module]:
    import torch

    output = model.get_output_embeddings()
    return [m for name, m in model.named_modules() if type(m) is torch.nn.Linear and m is not output
            and "lora_" not in name]


def layers_keeping_activations(model: torch.nn.Module, layers: int) -> int:
    """Decoder layers whose activations backward needs: from the first one with something trainable on."""
    import torch

    stacks = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList)]
    blocks = max(stacks, key=len, default=[])
    embeddings_train = any(p.requires_grad for p in model.get_input_embeddings().parameters())
    if embeddings_train or len(blocks) != layers:
        return layers
    for index, block in enumerate(blocks):
        if any(p.requires_grad for p in block.parameters()):
            return layers - index
    return layers


def activation_values(hidden: int, tokens: int, per_layer: float, extra_per_layer: float, layers: int,
                      checkpointed: bool) -> float:  # fmt: skip
    """Values alive at the backward's peak: every kept layer's (checkpointing: each layer's input, and one layer
    recomputed at a time), the backward's own gradients and temporaries (about twice a layer's saved values), the
    embeddings' output and the final norm."""
    if checkpointed:
        values = layers * hidden * tokens + per_layer * tokens + extra_per_layer
    else:
        values = layers * (per_layer * tokens + extra_per_layer)
    return values + 2 * per_layer * tokens + 4 * hidden * tokens
