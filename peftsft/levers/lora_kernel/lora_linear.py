"""A LoRA linear layer's forward and backward as one autograd function: a drop-in for peft's on the CPU.

Why our own: peft computes base(x) + lora_B(lora_A(x)) * scaling as separate ops, so every adapted layer adds two
full-size elementwise passes in the forward (the scaling and the sum) and two in the backward, plus autocast's
casts — at small hidden sizes about what the rank-16 products themselves cost. Here the adapter's product is added
inside the base GEMM's output (`addmm_`, scaling as its alpha, fp32 accumulation), the input's gradient likewise
(g·W + s·(g·B)·A), and the scaling touches rank-sized tensors only; dropout on the adapter's input draws the same
mask as peft's. Same values as peft's (fewer roundings under autocast); eligible layers only: a plain `nn.Linear`
base, one active vanilla adapter without bias (see `eligible_adapter`).
"""

from __future__ import annotations

import torch


def eligible_adapter(layer, x: torch.Tensor, args: tuple, kwargs: dict) -> str | None:
    """The one active adapter where the fused function computes exactly what peft's Linear.forward would; None
    sends the call to peft (generation and evaluation too: no autograd there)."""
    if args or any(value is not None for value in kwargs.values()) or not torch.is_grad_enabled():
        return None
    if x.device.type != "cpu" or layer.disable_adapters or layer.merged or layer.fan_in_fan_out:
        return None
    if type(layer.base_layer) is not torch.nn.Linear:  # quantized or otherwise wrapped bases: peft's own path
        return None
    active = [name for name in layer.active_adapters if name in layer.lora_A]
    if len(active) != 1 or active[0] in getattr(layer, "lora_variant", {}):
        return None
    name = active[0]
    if type(layer.lora_dropout[name]) not in (torch.nn.Identity, torch.nn.Dropout):
        return None
    return name if layer.lora_A[name].bias is None and layer.lora_B[name].bias is None else None


def lora_arguments(layer, name: str) -> tuple:
    """(weight, bias, lora_a, lora_b, scaling, dropout p) of adapter `name` of a peft LoRA Linear layer, as the
    fused functions take them (p is 0 outside training)."""
    base, dropout = layer.base_layer, layer.lora_dropout[name]
    p = dropout.p if isinstance(dropout, torch.nn.Dropout) and dropout.training else 0.0
    lora_a, lora_b = layer.lora_A[name].weight, layer.lora_B[name].weight
    return base.weight, base.bias, lora_a, lora_b, float(layer.scaling[name]), float(p)


def fused_forward(layer, x: torch.Tensor, name: str) -> torch.Tensor:
    """peft's LoRA Linear forward for adapter `name` of a layer (see `eligible_adapter`), through
    LoraLinearFunction."""
    return LoraLinearFunction.apply(x, *lora_arguments(layer, name))


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype the products run in: autocast's where it is on, else the input's."""
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype


def lora_products(x, weight, bias, lora_a, lora_b, scaling: float, p: float, compute: torch.dtype) -> tuple:
    """Under autocast off: x flattened to (tokens, in) and the weights in the compute dtype, and the products of
    out = flat·Wᵀ + bias + s·(dropout_p(flat)·Aᵀ)·Bᵀ, the adapter's share added inside the GEMM's output. Returns
    (flat, (w, a, b), out, dropped, mask, h)."""
    flat = x.reshape(-1, x.shape[-1]).to(compute)
    w, a, b = weight.to(compute), lora_a.to(compute), lora_b.to(compute)
    out = torch.mm(flat, w.t()) if bias is None else torch.addmm(bias.to(compute), flat, w.t())
    dropped, mask = torch.native_dropout(flat, p, True) if p > 0 else (flat, None)  # F.dropout's own mask
    h = torch.mm(dropped, a.t())  # (tokens, r)
    out.addmm_(h, b.t(), alpha=scaling)
    return flat, (w, a, b), out, dropped, mask, h


def lora_gradients(g, flat, dropped, h, w, a, b, mask, scaling: float, p: float, needs) -> list:
    """The gradients (compute dtype, flat input's shape) for `needs` = (x, weight, bias, lora_a, lora_b) of
    `lora_products`, given the output's gradient `g` (tokens, out); None where not needed. `flat` is read only for
    the weight's gradient."""
    need_x, need_w, need_bias, need_a, need_b = needs
    grads = [None] * 5
    gh = torch.mm(g, b)  # (tokens, r): the gradient reaching x·Aᵀ, before the scaling
    if need_x:
        grads[0] = torch.mm(g, w)
        if mask is None:
            grads[0].addmm_(gh, a, alpha=scaling)
        else:  # dropout's gradient: the kept inputs, scaled by 1 / (1 - p)
            grads[0].addcmul_(torch.mm(gh, a), mask, value=scaling / (1 - p))
    if need_w:
        grads[1] = torch.mm(g.t(), flat)
    if need_bias:
        grads[2] = g.sum(dim=0)
    if need_a:
        grads[3] = torch.mm(gh.t(), dropped).mul_(scaling)
    if need_b:
        grads[4] = torch.mm(g.t(), h).mul_(scaling)
    return grads


class LoraLinearFunction(torch.autograd.Function):
    """y = x·Wᵀ + b + s·(dropout_p(x)·Aᵀ)·Bᵀ with one rounding of y; under autocast every product runs in its dtype
    (bf16), the gradients come back in each input's own dtype."""

    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, scaling: float, p: float = 0.0):
        with torch.autocast(x.device.type, enabled=False):
            flat, (w, a, b), out, dropped, mask, h = lora_products(x, weight, bias, lora_a, lora_b, scaling, p,
                                                                   compute_dtype(x))  # fmt: skip
        ctx.save_for_backward(flat if weight.requires_grad else None, dropped, h, w, a, b, mask)
        ctx.scaling, ctx.p = scaling, p
        ctx.dtypes = (x.dtype, weight.dtype, None if bias is None else bias.dtype, lora_a.dtype, lora_b.dtype)
        return out.view(*x.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx, grad):
        flat, dropped, h, w, a, b, mask = ctx.saved_tensors
        with torch.autocast(grad.device.type, enabled=False):
            g = grad.reshape(-1, grad.shape[-1]).to(dropped.dtype)
            grads = lora_gradients(g, flat, dropped, h, w, a, b, mask, ctx.scaling, ctx.p, ctx.needs_input_grad[:5])
        if grads[0] is not None:
            grads[0] = grads[0].view(*grad.shape[:-1], w.shape[1])
        grads = [None if t is None else t.to(dtype) for t, dtype in zip(grads, ctx.dtypes)]
        return (*grads, None, None)
