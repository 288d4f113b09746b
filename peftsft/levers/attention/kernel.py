"""peftsft's CPU training attention: short sequences through two matmuls and a softmax, long ones through SDPA.

Why our own: PyTorch's CPU flash-attention kernel (what SDPA runs on the CPU) spends several times its forward time
in its backward at chat-row lengths; up to SHORT_KEYS keys the plain product — the query heads of a key/value group
as one batched matmul (no repeated K/V), PyTorch's softmax kernel on the scores' own dtype, one more matmul, the
probabilities recomputed in the backward — trains faster (figures: docs/speed.md). Both paths see the mask
transformers builds for SDPA, so samples and padding are kept apart exactly as with SDPA; under no_grad
(generation, evaluation) it is SDPA unchanged. A flattened batch is attended sample by sample.
"""

from __future__ import annotations

import functools
import importlib.metadata

import torch
import torch.utils.weak

from peftsft.core.errors import UserError
from peftsft.levers.lora_kernel.lora_linear import compute_dtype

SHORT_KEYS = 320  # up to this many keys the matmul path, SDPA above (on par near 450 keys: a margin)


def cpu_training_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, *,
                           sdpa, **kwargs):  # fmt: skip
    """transformers' attention signature: (batch, heads, q, dim) in, ((batch, q, heads, dim), None) out; `sdpa` is
    transformers' sdpa_attention_forward, bound by the lever's register()."""
    positions = kwargs.pop("position_ids", None) if module.training else None
    segments = None
    if query.device.type == "cpu":  # the same for every layer of a forward: derived from the mask once
        q_len, k_len, name = query.shape[2], key.shape[2], type(module).__name__
        # the entry holds `positions`: no other tensor can take its id while the entry lives
        segments = _derived(attention_mask, ("samples", q_len, k_len, id(positions)),
                            lambda: (positions, _samples(attention_mask, q_len, k_len, positions, name)))[1]
    if segments is None:
        out = _attend(module, query, key, value, attention_mask, dropout, scaling, is_causal, sdpa, kwargs)
        return out.transpose(1, 2).contiguous(), None
    # each sample on its own; split, not slices: its backward is one concatenation of the samples' gradients,
    # where each slice's backward writes a zero-filled tensor of the whole batch's size to be summed
    sizes = [e - s for s, e in segments]
    parts = zip(segments, *(t.split(sizes, dim=2) for t in (query, key, value)))
    outs = [_attend(module, q, k, v, attention_mask[..., s:e, s:e], dropout, scaling, is_causal, sdpa, kwargs)
            for (s, e), q, k, v in parts]  # fmt: skip
    return torch.cat([out.transpose(1, 2) for out in outs], dim=1), None  # one copy into (batch, q, heads, dim)


def _attend(module, query, key, value, attention_mask, dropout, scaling, is_causal, sdpa, kwargs) -> torch.Tensor:
    """One batch's attention output (batch, heads, q, dim): the matmul path for short keys under autograd on the
    CPU, SDPA otherwise."""
    short = key.shape[2] <= SHORT_KEYS and query.shape[2] > 1
    if not (short and torch.is_grad_enabled() and query.device.type == "cpu") or kwargs.get("position_bias") \
            is not None or kwargs.get("softcap") is not None:  # fmt: skip
        out = sdpa(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal,
                   **kwargs)[0]
        return out.transpose(1, 2)  # transformers' sdpa_attention_forward returns (batch, q, heads, dim)
    batch, heads, q_len, dim = query.shape
    kv_heads, k_len = key.shape[1], key.shape[2]
    groups = heads // kv_heads
    scale = scaling if scaling is not None else dim**-0.5
    # the query heads that share a key/value head as one taller query (heads are numbered kv * groups + g, as in
    # repeat_kv): the products read each K and V once, with no repeated copies and no sums of them in the backward
    q = query.reshape(batch * kv_heads, groups * q_len, dim)
    k = key.reshape(batch * kv_heads, k_len, dim)
    v = value.reshape(batch * kv_heads, k_len, dim)
    bias = empty = None
    if attention_mask is None:  # SDPA's is_causal case: a causal mask over the keys, aligned at the end
        if getattr(module, "is_causal", True) and is_causal is not False:
            bias, empty = _causal_terms(q_len, k_len, compute_dtype(query), query.device)
    elif attention_mask.dtype == torch.bool:
        mask, dtype = attention_mask[..., :k_len], compute_dtype(query)
        bias, empty = _derived(mask, ("terms", kv_heads, groups, dtype),
                               lambda: _mask_terms(_grouped(mask, kv_heads, groups), dtype))  # fmt: skip
    else:
        bias = _grouped(attention_mask[..., :k_len], kv_heads, groups)
    if dropout and module.training:  # dropout draws from the probabilities: autograd keeps them
        probs = _probabilities(q, k, bias, empty, scale, (batch, kv_heads, groups, q_len, k_len), query.dtype)
        probs = torch.nn.functional.dropout(probs, p=dropout, training=True)
        out = torch.bmm(probs.view(batch * kv_heads, groups * q_len, k_len), v)
    else:
        out = RecomputedAttention.apply(q, k, v, bias, empty, scale, (batch, kv_heads, groups, q_len, k_len),
                                        query.dtype)  # fmt: skip
    return out.view(batch, heads, q_len, dim)


# What a forward's layers derive from its attention mask again and again (transformers builds the mask once and
# passes the same tensor to every layer): the samples of a flattened batch, each block's additive bias and rows
# without keys. Why a cache: deriving them per layer and per sample costs host syncs and a masked fill of every
# score block. Keyed weakly by the tensor a mask is a view of (an entry goes with its mask) and by the view's place
# in it, and dropped when the mask is written to.
_DERIVED = torch.utils.weak.WeakTensorKeyDictionary()


def _derived(mask: torch.Tensor | None, key: tuple, make):
    """make() for `mask` and `key`, computed once per mask (and view of it); without a mask, every time."""
    if mask is None:
        return make()
    base = mask if mask._base is None else mask._base
    version, known = _DERIVED.get(base, (None, None))
    if version != base._version:
        version, known = base._version, {}
        _DERIVED[base] = (version, known)
    key = (mask.storage_offset(), tuple(mask.shape), tuple(mask.stride()), *key)
    if key not in known:
        known[key] = make()
    return known[key]


def _mask_terms(keep: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A boolean mask as scores see it: the additive bias (0 where `keep`, the dtype's lowest value elsewhere — the
    scores it is added to round to that value) and the rows that may attend to no key (None when there are none)."""
    bias = torch.zeros(keep.shape, dtype=dtype, device=keep.device).masked_fill_(~keep, torch.finfo(dtype).min)
    empty = ~keep.any(dim=-1, keepdim=True)
    return bias, (empty if bool(empty.any()) else None)


@functools.lru_cache(maxsize=32)
def _causal_terms(q_len: int, k_len: int, dtype: torch.dtype, device: torch.device) -> tuple:
    """`_mask_terms` of a causal mask over the keys, aligned at the end (SDPA's is_causal)."""
    return _mask_terms(torch.ones(q_len, k_len, dtype=torch.bool, device=device).tril(k_len - q_len), dtype)


def _samples(mask: torch.Tensor | None, q_len: int, k_len: int, position_ids: torch.Tensor | None = None,
             model: str = "the model") -> list[tuple[int, int]] | None:  # fmt: skip
    """The samples of a flattened batch (padding-free or packed): [(start, end)] of the query/key positions when
    there are at least two and the boolean `mask` (1, 1, n, n) lets no query attend outside its own sample; None
    otherwise. Attention computed sample by sample is then exactly attention over the whole mask, at Σ lengths²
    instead of (Σ lengths)² work.

    Samples start where `position_ids` (1, n) restart (given while training); without them, where a query's first
    visible key is itself (transformers' block-diagonal causal mask). A mask the rule misreads is not split; a mask
    that lets the samples of restarting position ids see each other is an error (they would learn from each
    other)."""
    keep = None
    if mask is not None and mask.dtype == torch.bool and mask.dim() == 4 and mask.shape[:2] == (1, 1) \
            and q_len == k_len:  # fmt: skip
        keep = mask[0, 0, :, :k_len]
    starts = None
    if position_ids is not None and position_ids.dim() == 2 and tuple(position_ids.shape) == (1, q_len):
        restarts = (position_ids[0, 1:] - position_ids[0, :-1] != 1).nonzero().squeeze(1) + 1
        starts = [0, *restarts.tolist()] if len(restarts) else None
        if starts is not None and (keep is None or not _apart(keep, starts)):
            raise UserError(f"transformers {importlib.metadata.version('transformers')}: the attention mask "
                            f"{model} receives lets the samples of a padding-free or packed batch see each other",
                            hint="set [training] padding_free = false and [data] packing = false")  # fmt: skip
    elif keep is not None and q_len > 1:
        first = keep.view(torch.uint8).argmax(dim=1)  # first visible key of each query (0 where it sees none)
        starts = (first == torch.arange(q_len, device=keep.device)).nonzero().squeeze(1).tolist()
        starts = starts if len(starts) > 1 and starts[0] == 0 and _apart(keep, starts) else None
    return list(zip(starts, starts[1:] + [q_len])) if starts else None


def _apart(keep: torch.Tensor, starts: list[int]) -> bool:
    """Whether the blocks beginning at `starts` hold every pair `keep` (queries × keys) allows."""
    ends = starts[1:] + [keep.shape[0]]
    inside = sum(int(torch.count_nonzero(keep[s:e, s:e])) for s, e in zip(starts, ends))
    return inside == int(torch.count_nonzero(keep))  # count_nonzero: no int64 copy of the mask, as sum() makes


def _probabilities(q, k, bias, empty, scale: float, shape: tuple, dtype) -> torch.Tensor:
    """The attention probabilities (batch, kv_heads, groups, q, k) of grouped q, k: scaled scores in the GEMM,
    `bias` added, softmax in `dtype`, zeros in the `empty` rows."""
    scores = torch.baddbmm(q.new_zeros(()), q, k.transpose(1, 2), beta=0.0, alpha=scale).view(shape)
    return MaskedSoftmax.apply(scores, bias, empty, dtype)


class RecomputedAttention(torch.autograd.Function):
    """probabilities · v for grouped q, k, v (see `_probabilities`), keeping q, k and v but not the probabilities:
    the backward computes them again, exactly (the same kernels on the same inputs).

    Why: the probabilities are (batch × heads × q × k) per layer — at 4 rows of 260 tokens on SmolLM2, 0.3 GiB over
    its 30 layers, growing with the square of the length — for one more q·kᵀ product and softmax per layer in the
    backward. Under autocast the products run in its dtype and the softmax as MaskedSoftmax runs it."""

    @staticmethod
    def forward(ctx, q, k, v, bias, empty, scale: float, shape: tuple, dtype):
        compute = compute_dtype(q)
        ctx.dtypes = (q.dtype, k.dtype, v.dtype)
        with torch.autocast(q.device.type, enabled=False):
            q, k, v = q.to(compute), k.to(compute), v.to(compute)
            probs = _probabilities(q, k, bias, empty, scale, shape, dtype)
            out = torch.bmm(probs.view(q.shape[0], q.shape[1], k.shape[1]).to(compute), v)
        ctx.save_for_backward(q, k, v, bias, empty)
        ctx.scale, ctx.shape, ctx.dtype = scale, shape, dtype
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k, v, bias, empty = ctx.saved_tensors
        with torch.autocast(grad.device.type, enabled=False):
            probs = _probabilities(q, k, bias, empty, ctx.scale, ctx.shape, ctx.dtype)
            probs = probs.view(q.shape[0], q.shape[1], k.shape[1])
            grad = grad.to(v.dtype)
            grad_v = torch.bmm(probs.to(v.dtype).transpose(1, 2), grad)
            grad_probs = torch.bmm(grad, v.transpose(1, 2)).to(probs.dtype)
            grad_scores = torch._softmax_backward_data(grad_probs, probs, -1, probs.dtype).to(q.dtype)
            grad_q = torch.bmm(grad_scores, k).mul_(ctx.scale)
            grad_k = torch.bmm(grad_scores.transpose(1, 2), q).mul_(ctx.scale)
        grads = (t.to(dtype) for t, dtype in zip((grad_q, grad_k, grad_v), ctx.dtypes))
        return (*grads, None, None, None, None, None)


def _grouped(mask: torch.Tensor, kv_heads: int, groups: int) -> torch.Tensor:
    """A (batch, 1 or heads, q, k) mask laid out as the grouped scores (batch, kv_heads, groups, q, k)."""
    if mask.shape[1] == 1:
        return mask[:, :, None]
    return mask.view(mask.shape[0], kv_heads, groups, *mask.shape[2:])


class MaskedSoftmax(torch.autograd.Function):
    """softmax over the last dimension of scores + `bias` (an additive mask, broadcastable, or None), in `dtype`;
    the `empty` rows (broadcastable bool, or None: rows that may attend to no key, e.g. left padding) are zeros, as
    SDPA gives them.

    Why our own: PyTorch's softmax on bf16 scores accumulates in fp32 and writes bf16 in one pass, and its
    backward kernel is one more, where autocast's fp32 softmax adds a cast and an fp32 backward; hence autocast is
    off inside. Only the probabilities are kept for the backward: masked keys have
    probability 0, so their gradient is 0 without a pass of its own."""

    @staticmethod
    def forward(ctx, scores: torch.Tensor, bias: torch.Tensor | None, empty: torch.Tensor | None,
                dtype: torch.dtype) -> torch.Tensor:  # fmt: skip
        with torch.autocast(scores.device.type, enabled=False):
            if bias is not None:  # in place where nothing else reads the scores (no copy of them)
                scores = scores.add_(bias) if not scores.requires_grad else scores + bias
            probs = torch.softmax(scores.to(dtype), dim=-1)
            if empty is not None:
                probs.masked_fill_(empty, 0.0)
        ctx.save_for_backward(probs)
        ctx.scores_dtype = scores.dtype
        return probs

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (probs,) = ctx.saved_tensors
        with torch.autocast(probs.device.type, enabled=False):
            grad_scores = torch._softmax_backward_data(grad.to(probs.dtype), probs, -1, probs.dtype)
        return grad_scores.to(ctx.scores_dtype), None, None, None
