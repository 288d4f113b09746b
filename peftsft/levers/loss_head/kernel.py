"""The LM head's per-token log-probabilities on the CPU: a drop-in for TRL's `ChunkedLogProbFunction` there.

Why our own: TRL's kernel slices the vocabulary and, off CUDA, accumulates each slice's share of the hidden state's
gradient in fp32 by casting both bf16 operands to fp32 (fp32 GEMMs on CPUs whose bf16 GEMMs are several times
faster), folding every slice into online-softmax statistics with a dozen elementwise passes. Here the blocks are
token rows over the whole vocabulary: the log-softmax is one fused kernel, and the hidden state's gradient is one
GEMM whose inner dimension is the whole vocabulary (fp32 accumulation inside the GEMM, one rounding of the result —
what autocast's own LM head backward does). A trainable head's weight gradient is summed over blocks in fp32, as in
TRL. Same signature and outputs; memory stays one block of logits at a time.

Where only the log-probs carry a gradient back (a frozen head without bias — LoRA — in grad mode), the forward also
computes that gradient up to each token's incoming factor, E = (p − onehot(target)) · W per block, while the
block's probabilities are at hand (as Liger's fused linear cross-entropy does on GPUs): the backward is then −g ⊙ E,
with no second logits GEMM or softmax pass. The factor g multiplies after the GEMM, so a power-of-two loss scale
stays exact.
"""

from __future__ import annotations

import torch

# logits per token block: 170 tokens of a 49,152 vocabulary; larger blocks outgrow the cache (docs/speed.md)
ROW_ELEMENTS = 2**23
# an fp32 block's logits GEMM runs over this many vocabulary rows at a time, so the weight slice stays in cache for
# all the block's tokens; bf16 GEMMs run whole
VOCAB_SLICE_FP32 = 1024
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
    if out is None:
        return _logits(hidden, w, b, *args)
    out, x = out[: hidden.shape[0]], hidden.to(args[0])
    if args[0] != torch.float32:
        return torch.mm(x, w.t(), out=out), None
    for s in range(0, w.shape[0], VOCAB_SLICE_FP32):  # the block's columns slice by slice (see VOCAB_SLICE_FP32)
        torch.mm(x, w[s : s + VOCAB_SLICE_FP32].t(), out=out[:, s : s + VOCAB_SLICE_FP32])
    return out, None


def block_rows(vocab: int) -> int:
    """Tokens per block: `ROW_ELEMENTS` logits."""
    return max(1, ROW_ELEMENTS // vocab)


def _forward_blocks(hidden, w, b, targets, args, rows, outs, eager) -> None:
    """Fill the per-token outputs block by block (`rows` tokens at a time, in buffers reused by every block), and
    `eager` (when given) with each token's (p − onehot) · W."""
    logprobs, log_z, entropy, sum_sq, mean, top1 = outs
    n = hidden.shape[0]
    rows = min(rows, n)
    logits = torch.empty(rows, w.shape[0], dtype=args[0], device=hidden.device) if _plain(b, *args[1:]) else None
    # fp32 logits are shifted in place (a third block-sized buffer less at the step's memory peak)
    in_place = args[0] == torch.float32
    exp = torch.empty(rows, w.shape[0], dtype=torch.float32, device=hidden.device)
    shifted = None if in_place else torch.empty_like(exp)
    for s in range(0, n, rows):
        e = min(s + rows, n)
        z, t = _block_logits(hidden[s:e], w, b, args, logits)
        top = z.amax(dim=-1, keepdim=True).float()
        target = z.gather(1, targets[s:e, None]).squeeze(1).float()
        if mean is not None:
            mean[s:e] = z.mean(dim=-1, dtype=torch.float32)
        # fp32 from the GEMM's dtype: copied into the buffer and shifted there (a dtype-promoting sub would cast into
        # a block-sized temporary first); the argmax below is the same on shifted logits
        z_top = z.sub_(top) if in_place else shifted[: e - s].copy_(z).sub_(top)
        ez = torch.exp(z_top, out=exp[: e - s])  # exp(z - max): log Z, entropy and Σp² share it
        total = ez.sum(dim=-1)
        lz = top.squeeze(1) + total.log()
        log_z[s:e] = lz
        logprobs[s:e] = target - lz
        if top1 is not None:  # the target is the first maximum (TRL's count: a tie with an earlier token is not)
            hit = target >= top.squeeze(1)
            maybe = hit.nonzero().squeeze(1)
            hit[maybe] = z[maybe].argmax(dim=-1) == targets[s:e][maybe]
            top1[s:e] = hit
        if entropy is not None:  # log Z - Σ p z, with Σ p z = Σ p (z - max) + max
            entropy[s:e] = lz - _row_dots(ez, z_top) / total - top.squeeze(1)
        if sum_sq is not None:  # log Σ p²
            sum_sq[s:e] = _row_dots(ez, ez).log() - 2 * total.log()
        if eager is not None:  # ez becomes p − onehot in place, times the transform's derivative
            grad = ez.div_(total[:, None]).scatter_add_(1, targets[s:e, None], ez.new_full((e - s, 1), -1.0))
            grad = _chain(grad, t, args)
            if grad.dtype != args[0]:  # into the logits' buffer, read by nothing after this (no 8 MiB allocation)
                grad = logits[: e - s].copy_(grad) if logits is not None else grad.to(args[0])
            torch.mm(grad, w, out=eager[s:e])


def _row_dots(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Σ_j a_ij · b_ij per row, as a batched GEMM: `linalg.vecdot` materializes the block-sized product first, a
    page-faulted allocation each time where large ones are mmapped."""
    return torch.bmm(a.unsqueeze(1), b.unsqueeze(2)).view(-1)


def _chain(grad, t, args):
    """d loss / d z_raw from d loss / d z (in place): the temperature's, soft-cap's and logit scale's derivatives."""
    _, scale, _, inv_t = args
    if inv_t != 1.0:
        grad.mul_(inv_t)
    if t is not None:
        grad.mul_(1 - t * t)
    if scale != 1.0:
        grad.mul_(scale)
    return grad


class CpuLogProbFunction(torch.autograd.Function):
    """(hidden [N, H], weight [V, H], bias, targets [N], temperature, chunk_size, softcap, logit_scale, outputs) →
    (log p(target), entropy, log Σp², mean logit, target is the argmax); `chunk_size` is TRL's vocabulary slice,
    unused here. `apply` adds whether to compute the hidden gradient eagerly (decided where grad mode is visible)."""

    @classmethod
    def apply(cls, *args):
        hidden, weight, bias = args[:3]
        eager = (torch.is_grad_enabled() and hidden.requires_grad and not weight.requires_grad
                 and bias is None)  # fmt: skip
        args = args + (None, 1.0, OUTPUTS)[len(args) - 6 :]  # TRL passes all nine; the last three have defaults
        return super().apply(*args, eager)

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, temperature, chunk_size, final_logit_softcapping=None,
                logit_scale=1.0, outputs=OUTPUTS, eager=False):  # fmt: skip
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
        rows = block_rows(vocab)
        early = torch.empty(n, hidden.shape[1], dtype=compute, device=hidden.device) if eager else None
        with torch.autocast(hidden.device.type, enabled=False):  # dtypes are explicit here (vecdot would go bf16)
            outs = (logprobs, log_z, entropy, sum_sq, mean, top1)
            _forward_blocks(hidden, w, b, targets, args, rows, outs, early)
        ctx.save_for_backward(hidden, weight, bias, targets, log_z, log_z if entropy is None else entropy, early)
        ctx.args = args
        ctx.mark_non_differentiable(*(x for x in (sum_sq, mean, top1) if x is not None))
        return logprobs, entropy, sum_sq, mean, top1

    @staticmethod
    def backward(ctx, grad_logprobs, grad_entropy, *_):
        hidden, weight, bias, targets, log_z, entropy, early = ctx.saved_tensors
        compute, scale, softcap, inv_t = ctx.args
        needs_hidden, needs_weight, needs_bias = ctx.needs_input_grad[:3]
        if early is not None and grad_entropy is None:  # d log p / dh = -(p - onehot) W, computed in the forward
            g = grad_logprobs[:, None].float() if grad_logprobs is not None else early.new_zeros(())
            return (early * -g).to(hidden.dtype), *(None,) * 9
        w = weight.to(compute)
        b = bias.to(compute) if bias is not None else None
        grad_hidden = torch.empty_like(hidden) if needs_hidden else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if needs_weight else None
        grad_bias = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if needs_bias else None
        n, vocab = hidden.shape[0], weight.shape[0]
        rows = min(block_rows(vocab), n)
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
                _chain(grad, t, ctx.args)
                if grad_hidden is not None:
                    operand = low[: e - s].copy_(grad) if low is not None else grad
                    grad_hidden[s:e] = torch.mm(operand, w).to(hidden.dtype)
                if grad_weight is not None:
                    grad_weight.addmm_(grad.t(), hidden[s:e].float())
                if grad_bias is not None:
                    grad_bias += grad.sum(dim=0)
        grad_weight = grad_weight.to(weight.dtype) if grad_weight is not None else None
        grad_bias = grad_bias.to(bias.dtype) if grad_bias is not None else None
        return grad_hidden, grad_weight, grad_bias, None, None, None, None, None, None, None
