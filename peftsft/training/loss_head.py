"""The LM head's per-token log-probabilities on the CPU: a drop-in for TRL's `ChunkedLogProbFunction` there.

Why our own: TRL's kernel slices the vocabulary (4096-wide here) and, off CUDA, adds each slice's share of the
hidden state's gradient in fp32 by casting both bf16 operands to fp32 (`acc.addmm_(a.float(), b.float())`, as
bf16 GEMMs with an fp32 output exist only on CUDA) — fp32 GEMMs on CPUs whose bf16 GEMMs are 3–4× faster — and
folds every slice into online-softmax statistics with a dozen elementwise passes. Here the blocks are token rows
over the whole vocabulary: the log-softmax is one fused kernel, and the hidden state's gradient is one GEMM whose
inner dimension is the whole vocabulary (bf16 operands under autocast, fp32 accumulation inside the GEMM, one
rounding of the result — what autocast's own LM head backward does), so no partial product is rounded before it
is summed, which is what TRL's fp32 accumulation guards against. A trainable head's weight gradient is summed
over token blocks in fp32, as in TRL. Same signature and outputs; the logits are recomputed in the backward, so
memory stays one block (`ROW_ELEMENTS` fp32 values, ×3 while the backward runs).
"""

from __future__ import annotations

import torch

ROW_ELEMENTS = 2**22  # logits per token block: 16 MiB of fp32, 85 tokens of a 49,152 vocabulary (measured fastest
# of 2**19…2**23 for 700 tokens × SmolLM2, 2 threads: 287 ms forward + backward, TRL 4096-wide slices 531–621 ms)
OUTPUTS = ("entropy", "log_sum_sq_probs", "mean_logits", "is_top1")


def _logits(hidden, weight, bias, compute, scale: float, softcap: float | None, inv_t: float):
    """fp32 logits of a token block after TRL's transform (scale, soft-cap, temperature), and tanh for the backward."""
    z = torch.mm(hidden.to(compute), weight.t())
    if bias is not None:
        z = z + bias
    z = z.float()
    if scale != 1.0:
        z = z * scale
    t = None
    if softcap is not None:
        t = torch.tanh(z / softcap)
        z = softcap * t
    if inv_t != 1.0:
        z = z * inv_t
    return z, t


def _plain(bias, scale: float, softcap: float | None, inv_t: float) -> bool:
    """No bias and no transform: the logits are the GEMM's output as it is (every model peftsft ships)."""
    return bias is None and scale == 1.0 and softcap is None and inv_t == 1.0


def _block_logits(hidden, w, b, args, out):
    """A token block's logits: the GEMM's output written into `out` (compute dtype; given where `_plain`) or fp32
    after TRL's transform; and tanh for the soft-cap's backward."""
    if out is not None:
        return torch.mm(hidden.to(args[0]), w.t(), out=out[: hidden.shape[0]]), None
    return _logits(hidden, w, b, *args)


def _forward_blocks(hidden, w, b, targets, args, rows, logprobs, log_z, entropy, sum_sq, mean, top1) -> None:
    """Fill the per-token outputs block by block (`rows` tokens at a time, in buffers reused by every block)."""
    n = hidden.shape[0]
    rows = min(rows, n)
    logits = torch.empty(rows, w.shape[0], dtype=args[0], device=hidden.device) if _plain(b, *args[1:]) else None
    shifted, exp = torch.empty(2, rows, w.shape[0], dtype=torch.float32, device=hidden.device)
    for s in range(0, n, rows):
        e = min(s + rows, n)
        z, _ = _block_logits(hidden[s:e], w, b, args, logits)
        top = z.amax(dim=-1, keepdim=True).float()
        z_top = torch.sub(z, top, out=shifted[: e - s])  # fp32 from the GEMM's dtype in one pass
        ez = torch.exp(z_top, out=exp[: e - s])  # exp(z - max): log Z, entropy and Σp² share it
        total = ez.sum(dim=-1)
        lz = top.squeeze(1) + total.log()
        log_z[s:e] = lz
        target = z.gather(1, targets[s:e, None]).squeeze(1).float()
        logprobs[s:e] = target - lz
        if mean is not None:
            mean[s:e] = z.mean(dim=-1, dtype=torch.float32)
        if top1 is not None:  # the target is the first maximum (TRL's count: a tie with an earlier token is not)
            hit = target >= top.squeeze(1)
            maybe = hit.nonzero().squeeze(1)
            hit[maybe] = z[maybe].argmax(dim=-1) == targets[s:e][maybe]
            top1[s:e] = hit
        if entropy is not None:  # log Z - Σ p z, with Σ p z = Σ p (z - max) + max
            entropy[s:e] = lz - torch.linalg.vecdot(ez, z_top) / total - top.squeeze(1)
        if sum_sq is not None:  # log Σ p²
            sum_sq[s:e] = torch.linalg.vecdot(ez, ez).log() - 2 * total.log()


class CpuLogProbFunction(torch.autograd.Function):
    """(hidden [N, H], weight [V, H], bias, targets [N], temperature, chunk_size, softcap, logit_scale, outputs) →
    (log p(target), entropy, log Σp², mean logit, target is the argmax); `chunk_size` is TRL's vocabulary slice,
    unused here."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, temperature, chunk_size, final_logit_softcapping=None,
                logit_scale=1.0, outputs=OUTPUTS):  # fmt: skip
        ctx.set_materialize_grads(False)
        autocast = torch.is_autocast_enabled(hidden.device.type)
        compute = torch.get_autocast_dtype(hidden.device.type) if autocast else hidden.dtype
        n, vocab = hidden.shape[0], weight.shape[0]
        args = (compute, logit_scale, final_logit_softcapping, 1.0 / temperature)
        w = weight.to(compute)
        b = bias.to(compute) if bias is not None else None
        f32 = dict(dtype=torch.float32, device=hidden.device)
        logprobs, log_z = torch.empty(n, **f32), torch.empty(n, **f32)
        entropy = torch.empty(n, **f32) if "entropy" in outputs else None
        sum_sq = torch.empty(n, **f32) if "log_sum_sq_probs" in outputs else None
        mean = torch.empty(n, **f32) if "mean_logits" in outputs else None
        top1 = torch.empty(n, dtype=torch.bool, device=hidden.device) if "is_top1" in outputs else None
        rows = max(1, ROW_ELEMENTS // vocab)
        with torch.autocast(hidden.device.type, enabled=False):  # dtypes are explicit here (vecdot would go bf16)
            _forward_blocks(hidden, w, b, targets, args, rows, logprobs, log_z, entropy, sum_sq, mean, top1)
        ctx.save_for_backward(hidden, weight, bias, targets, log_z, log_z if entropy is None else entropy)
        ctx.args = args
        ctx.mark_non_differentiable(*(x for x in (sum_sq, mean, top1) if x is not None))
        return logprobs, entropy, sum_sq, mean, top1

    @staticmethod
    def backward(ctx, grad_logprobs, grad_entropy, *_):
        hidden, weight, bias, targets, log_z, entropy = ctx.saved_tensors
        compute, scale, softcap, inv_t = ctx.args
        needs_hidden, needs_weight, needs_bias = ctx.needs_input_grad[:3]
        w = weight.to(compute)
        b = bias.to(compute) if bias is not None else None
        grad_hidden = torch.empty_like(hidden) if needs_hidden else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if needs_weight else None
        grad_bias = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if needs_bias else None
        n, vocab = hidden.shape[0], weight.shape[0]
        rows = min(max(1, ROW_ELEMENTS // vocab), n)
        logits = torch.empty(rows, vocab, dtype=compute, device=hidden.device) if _plain(b, *ctx.args[1:]) else None
        buffer = torch.empty(rows, vocab, dtype=torch.float32, device=hidden.device)
        low = torch.empty(rows, vocab, dtype=compute, device=hidden.device) if compute != torch.float32 else None
        with torch.autocast(hidden.device.type, enabled=False):  # dtypes are explicit here
            for s in range(0, n, rows):
                e = min(s + rows, n)
                z, t = _block_logits(hidden[s:e], w, b, ctx.args, logits)
                g = grad_logprobs[s:e, None].float() if grad_logprobs is not None else None
                log_p = torch.sub(z, log_z[s:e, None], out=buffer[: e - s])  # fp32 from the GEMM's dtype
                if grad_entropy is None:  # TRL's SFT loss: p in place, then -g p (the same products as below)
                    grad = log_p.exp_()
                    if g is not None:
                        grad.mul_(-g).scatter_add_(1, targets[s:e, None], g)
                    else:
                        grad.zero_()
                else:
                    p = log_p.exp()
                    if g is not None:  # d log p_target / dz_j = 1[j = target] - p_j
                        grad = p.mul(-g)
                        grad.scatter_add_(1, targets[s:e, None], g)
                    else:
                        grad = torch.zeros_like(p)
                    # d entropy / dz_j = -p_j (log p_j + entropy)
                    grad.sub_(log_p.add_(entropy[s:e, None]).mul_(p).mul_(grad_entropy[s:e, None].float()))
                if inv_t != 1.0:
                    grad.mul_(inv_t)
                if t is not None:
                    grad.mul_(1 - t * t)
                if scale != 1.0:
                    grad.mul_(scale)
                if grad_hidden is not None:
                    operand = low[: e - s].copy_(grad) if low is not None else grad
                    grad_hidden[s:e] = torch.mm(operand, w).to(hidden.dtype)
                if grad_weight is not None:
                    grad_weight.addmm_(grad.t(), hidden[s:e].float())
                if grad_bias is not None:
                    grad_bias += grad.sum(dim=0)
        grad_weight = grad_weight.to(weight.dtype) if grad_weight is not None else None
        grad_bias = grad_bias.to(bias.dtype) if grad_bias is not None else None
        return grad_hidden, grad_weight, grad_bias, None, None, None, None, None, None
