"""A gated MLP's down projection and an RMSNorm as autograd functions that keep less for the backward.

Why our own: autograd keeps every intermediate of `down(act(gate(x)) * up(x))` — gate, up, act(gate) and their
product, four (tokens, intermediate) tensors per layer — and an RMSNorm runs as eight elementwise ops each way.
Here the down projection (a plain LoRA layer, computed as lora_linear.py does) keeps only gate and up and recomputes
act(gate) and the product in the backward, and the RMSNorm keeps its input and the per-token 1/rms in fewer passes.
Same formulas, same roundings in the forward; activation checkpointing gives more memory back but re-runs every
matmul of the layer. Which transformers modules qualify: modules.py.
"""

from __future__ import annotations

import torch

from peftsft.levers.lora_kernel.lora_linear import compute_dtype, lora_arguments, lora_gradients, lora_products

ACTIVATIONS = ("silu", "gelu_tanh")


def activate(act: str, x: torch.Tensor) -> torch.Tensor:
    """act(x) for a name in ACTIVATIONS: the kernels transformers' SiLU and tanh-GELU modules call."""
    if act == "silu":
        return torch.nn.functional.silu(x)
    return torch.nn.functional.gelu(x, approximate="tanh")


def activation_gradient(act: str, grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """grad · act'(x), through PyTorch's own backward kernels (what autograd runs for `activate`)."""
    if act == "silu":
        return torch.ops.aten.silu_backward(grad, x)
    return torch.ops.aten.gelu_backward(grad, x, approximate="tanh")


def gated_down(layer, gate: torch.Tensor, up: torch.Tensor, name: str, act: str) -> torch.Tensor:
    """layer(act(gate) * up) for a peft LoRA Linear `layer` whose adapter `name` lora_linear.eligible_adapter
    accepts, through GatedLoraDownFunction."""
    return GatedLoraDownFunction.apply(gate, up, *lora_arguments(layer, name), act)


class GatedLoraDownFunction(torch.autograd.Function):
    """down(act(gate) * up) for a LoRA down projection (weight, bias, lora_a, lora_b, scaling, dropout p): the
    forward of `LoraLinearFunction` on the product, keeping gate and up instead of the product and act(gate)."""

    @staticmethod
    def forward(ctx, gate, up, weight, bias, lora_a, lora_b, scaling: float, p: float, act: str):
        product = activate(act, gate) * up  # in gate/up's own dtype, as the module computes it
        compute = compute_dtype(product)
        with torch.autocast(gate.device.type, enabled=False):
            flat, (w, a, b), out, dropped, mask, h = lora_products(product, weight, bias, lora_a, lora_b, scaling, p,
                                                                   compute)  # fmt: skip
        del product, flat  # recomputed in the backward (with dropout, its output is kept instead)
        ctx.save_for_backward(gate, up, dropped if mask is not None else None, h, w, a, b, mask)
        ctx.scaling, ctx.p, ctx.act, ctx.compute = scaling, p, act, compute
        ctx.dtypes = (weight.dtype, None if bias is None else bias.dtype, lora_a.dtype, lora_b.dtype)
        return out.view(*gate.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx, grad):
        gate, up, dropped, h, w, a, b, mask = ctx.saved_tensors
        need_gate, need_up, *needs = ctx.needs_input_grad[:6]
        activated = activate(ctx.act, gate)
        product = activated * up
        with torch.autocast(grad.device.type, enabled=False):
            flat = product.reshape(-1, product.shape[-1]).to(ctx.compute)
            g = grad.reshape(-1, grad.shape[-1]).to(ctx.compute)
            grads = lora_gradients(g, flat, flat if mask is None else dropped, h, w, a, b, mask, ctx.scaling, ctx.p,
                                   (need_gate or need_up, *needs))  # fmt: skip
        grad_gate = grad_up = None
        if grads[0] is not None:
            grad_product = grads[0].view(product.shape).to(product.dtype)
            del product, flat  # (tokens, intermediate) each: freed before the next ones are made
            grads[0] = None
            grad_up = grad_product * activated if need_up else None
            del activated
            grad_gate = activation_gradient(ctx.act, grad_product * up, gate) if need_gate else None
        rest = [None if t is None else t.to(dtype) for t, dtype in zip(grads[1:], ctx.dtypes)]
        return (grad_gate, grad_up, *rest, None, None, None)


class RMSNormFunction(torch.autograd.Function):
    """weight * (x / rms(x)).to(x.dtype), the rms over the last dimension in fp32 (transformers' Llama-style
    RMSNorm); keeps x and the per-token 1/rms."""

    @staticmethod
    def forward(ctx, x, weight, eps: float):
        x32 = x.to(torch.float32)
        rstd = torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
        normed = (x32 * rstd).to(x.dtype)
        ctx.save_for_backward(x, weight, rstd)
        return weight * normed

    @staticmethod
    def backward(ctx, grad):
        x, weight, rstd = ctx.saved_tensors
        x32 = x.to(torch.float32)
        normed = x32 * rstd
        grad_weight = None
        if ctx.needs_input_grad[1]:
            rows = (grad * normed.to(x.dtype)).reshape(-1, weight.shape[-1])
            grad_weight = rows.sum(dim=0).to(weight.dtype)
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_normed = (grad * weight).to(x.dtype).to(torch.float32)  # autograd rounds it to x's dtype
            mean = (grad_normed * normed).mean(-1, keepdim=True)
            grad_x = (rstd * (grad_normed - normed * mean)).to(x.dtype)
        return grad_x, grad_weight, None
