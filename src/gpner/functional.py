"""Pure math of GlobalPointer NER: rotary embeddings, span logits, masks, losses and divergences.

Shape letters used throughout:
    B batch, C entity types, L tokens, D head size, H hidden size, N gold spans.

Reduction convention shared by every loss and divergence here: the per-cell terms are summed over
the (L, L) cells of each (example, type) pair, giving a (B, C) tensor. ``reduction="none"``
returns that tensor, ``"mean"`` its mean and ``"sum"`` its sum.

Masks are bool. A cell is *valid* when both of its tokens are real and ``i <= j``; invalid cells
contribute exactly zero to every loss and divergence, with zero gradient, even where the logits
hold ``-inf`` (``-inf - -inf`` is NaN, so no arithmetic ever touches an invalid cell's value).
Half-precision inputs are accumulated in float32; results are returned in float32 for them.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "rope",
    "span_mask",
    "global_pointer_logits",
    "efficient_global_pointer_logits",
    "multilabel_categorical_crossentropy",
    "sparse_multilabel_categorical_crossentropy",
    "global_pointer_kl",
    "softmax_kl",
]

_REDUCTIONS = ("none", "mean", "sum")


# --------------------------------------------------------------------------- positions and logits


def rope(x: Tensor, positions: Tensor | None = None, base: float = 10000.0) -> Tensor:
    """Rotary position embedding with interleaved pairs (0, 1), (2, 3), ...

    Pair ``k`` of the vector at position ``p`` is rotated by the angle ``p * base^(-2k / D)``, so
    that for rotated ``q_i`` and ``k_j`` the score ``q_i . k_j`` depends on positions only
    through ``j - i``. Angles are computed on the fly, so any length works.

    Args:
        x: (..., L, D) with D even.
        positions: integer or float positions broadcastable to ``x.shape[:-1]``; default
            ``arange(L)``.
        base: the frequency base.
    Returns:
        (..., L, D), same dtype as ``x``.
    """
    length, dim = x.shape[-2], x.shape[-1]
    if dim % 2:
        raise ValueError(f"rope needs an even last dimension, got {dim}")
    # float64 stays float64 (exact parity tests); everything else computes angles in float32.
    angle_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    if positions is None:
        positions = torch.arange(length, device=x.device)
    inv_freq = base ** (-torch.arange(0, dim, 2, device=x.device, dtype=angle_dtype) / dim)
    angles = positions.to(angle_dtype).unsqueeze(-1) * inv_freq  # (..., L, D/2)
    cos = angles.cos().to(x.dtype)
    sin = angles.sin().to(x.dtype)
    even, odd = x[..., 0::2], x[..., 1::2]
    rotated = torch.stack((even * cos - odd * sin, odd * cos + even * sin), dim=-1)
    return rotated.flatten(-2)


def span_mask(attention_mask: Tensor) -> Tensor:
    """Valid (start, end) cells: both tokens real and ``i <= j``.

    Args:
        attention_mask: (B, L), bool or 0/1.
    Returns:
        (B, 1, L, L) bool.
    """
    am = attention_mask.bool()
    length = am.shape[-1]
    upper = torch.ones(length, length, dtype=torch.bool, device=am.device).triu_()
    return am[:, None, :, None] & am[:, None, None, :] & upper


def _fill_invalid_(logits: Tensor, attention_mask: Tensor | None) -> Tensor:
    """Set invalid cells of freshly computed logits to the dtype's lowest finite value, in place.

    A finite fill keeps naive downstream arithmetic NaN-free while ``exp`` of it is exactly 0.
    """
    length = logits.shape[-1]
    if attention_mask is None:
        lower = torch.ones(length, length, dtype=torch.bool, device=logits.device).tril_(-1)
        return logits.masked_fill_(lower, torch.finfo(logits.dtype).min)
    return logits.masked_fill_(~span_mask(attention_mask), torch.finfo(logits.dtype).min)


def global_pointer_logits(
    q: Tensor, k: Tensor, attention_mask: Tensor | None = None, *, use_rope: bool = True
) -> Tensor:
    """Standard GlobalPointer span logits ``s[b, c, i, j] = q_i . k_j / sqrt(D)``.

    Args:
        q: (B, C, L, D) start projections, one per entity type.
        k: (B, C, L, D) end projections.
        attention_mask: (B, L) bool; ``None`` means every token is real.
        use_rope: rotate q and k with :func:`rope` first.
    Returns:
        (B, C, L, L); invalid cells hold ``torch.finfo(dtype).min``.
    """
    if use_rope:
        q, k = rope(q), rope(k)
    # Scaling the (L, D) factor is cheaper than scaling the (L, L) product.
    logits = torch.matmul(q * q.shape[-1] ** -0.5, k.transpose(-1, -2))
    return _fill_invalid_(logits, attention_mask)


def efficient_global_pointer_logits(
    q: Tensor,
    k: Tensor,
    start_bias: Tensor,
    end_bias: Tensor,
    attention_mask: Tensor | None = None,
    *,
    use_rope: bool = True,
) -> Tensor:
    """Efficient GlobalPointer logits: one shared q.k score plus per-type start and end biases.

    ``s[b, c, i, j] = q_i . k_j / sqrt(D) + start_bias[b, c, i] + end_bias[b, c, j]``.

    Args:
        q: (B, L, D) shared start projection.
        k: (B, L, D) shared end projection.
        start_bias: (B, C, L).
        end_bias: (B, C, L).
        attention_mask: (B, L) bool or ``None``.
    Returns:
        (B, C, L, L); invalid cells hold ``torch.finfo(dtype).min``.
    """
    if use_rope:
        q, k = rope(q), rope(k)
    shared = torch.matmul(q * q.shape[-1] ** -0.5, k.transpose(-1, -2))  # (B, L, L)
    logits = shared[:, None] + start_bias[..., :, None] + end_bias[..., None, :]
    return _fill_invalid_(logits, attention_mask)


# --------------------------------------------------------------------------------------- helpers


def _reduce(per_pair: Tensor, reduction: str) -> Tensor:
    if reduction == "none":
        return per_pair
    if reduction == "mean":
        return per_pair.mean()
    if reduction == "sum":
        return per_pair.sum()
    raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def _accumulation_dtype(x: Tensor) -> Tensor:
    """Half precision is accumulated in float32; float32 and float64 stay as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _valid_mask(mask: Tensor | None, like: Tensor) -> Tensor | None:
    """A bool mask broadcastable to ``like`` (B, C, L, L), or None for "all valid"."""
    if mask is None:
        return None
    if mask.dtype != torch.bool:
        raise TypeError(f"masks must be bool, got {mask.dtype}")
    if mask.dim() == 2:  # an attention mask (B, L)
        mask = span_mask(mask)
    return mask


def _log1p_sum_exp(x: Tensor) -> Tensor:
    """``log(1 + sum exp(x))`` over the last two dims, stable, ``-inf`` entries counting as 0.

    The shift ``m >= 0`` is finite even when every entry is ``-inf``, so neither the value nor the
    gradient can become NaN.
    """
    m = x.detach().amax(dim=(-2, -1), keepdim=True).clamp_min(0)
    return _shifted_log1p(m.squeeze(-1).squeeze(-1), torch.exp(x - m).sum(dim=(-2, -1)))


def _shifted_log1p(m: Tensor, shifted_sum: Tensor) -> Tensor:
    """``log(1 + sum exp(x))`` from ``m = max(0, max x)`` and ``shifted_sum = sum exp(x - m)``.

    Where ``m == 0`` the answer is ``log1p(shifted_sum)``, which keeps its precision for a
    confident model's tiny losses (``log(1 + 1e-12)`` is 0 in float32); elsewhere
    ``shifted_sum >= 1`` and the plain form is exact. Both branches are finite, so ``where``
    is safe.
    """
    return torch.where(m > 0, m + torch.log(torch.exp(-m) + shifted_sum), torch.log1p(shifted_sum))


# ----------------------------------------------------------------------------------------- losses


def multilabel_categorical_crossentropy(
    logits: Tensor, targets: Tensor, mask: Tensor | None = None, reduction: str = "mean"
) -> Tensor:
    """Multi-label categorical cross-entropy with dense 0/1 targets.

    Per (example, type): ``log(1 + sum_neg e^s) + log(1 + sum_pos e^-s)`` over valid cells.

    Args:
        logits: (B, C, L, L).
        targets: (B, C, L, L) 0/1 or bool.
        mask: bool, (B, L) attention mask or broadcastable to (B, C, L, L); None = all valid.
        reduction: "none" -> (B, C), "mean", "sum".
    """
    s = _accumulation_dtype(logits)
    positive = targets.bool()
    valid = _valid_mask(mask, s)
    negative_off = positive if valid is None else positive | ~valid
    positive_off = ~positive if valid is None else ~positive | ~valid
    neg = _log1p_sum_exp(s.masked_fill(negative_off, -math.inf))
    pos = _log1p_sum_exp((-s).masked_fill(positive_off, -math.inf))
    return _reduce(neg + pos, reduction)


def _unique_span_index(spans: Tensor, shape: torch.Size) -> tuple[Tensor, ...]:
    """Deduplicated (b, c, i, j) index tensors from an (N, 4) span tensor."""
    _, num_types, length, _ = shape
    spans = spans.long().reshape(-1, 4)
    b, c, i, j = spans.unbind(-1)
    flat = ((b * num_types + c) * length + i) * length + j
    flat = torch.unique(flat)
    j = flat % length
    i = (flat // length) % length
    c = (flat // (length * length)) % num_types
    b = flat // (length * length * num_types)
    return b, c, i, j


def sparse_multilabel_categorical_crossentropy(
    logits: Tensor, spans: Tensor, mask: Tensor | None = None, reduction: str = "mean"
) -> Tensor:
    """Multi-label categorical cross-entropy with sparse gold spans.

    Same value and gradient as :func:`multilabel_categorical_crossentropy` with the equivalent
    dense targets, but no (B, C, L, L) target tensor is built: positives are gathered by index and
    excluded from the negative term by writing ``-inf`` into the masked copy that the negative
    term needs anyway (subtracting their mass instead would cancel catastrophically once the model
    is confident).

    Args:
        logits: (B, C, L, L).
        spans: (N, 4) integer rows ``[b, c, i, j]``; duplicates count once; spans on invalid cells
            are ignored, as the dense loss ignores them.
        mask: bool, (B, L) or broadcastable to (B, C, L, L); None = all valid.
        reduction: "none" -> (B, C), "mean", "sum".
    """
    s = _accumulation_dtype(logits)
    batch, num_types = s.shape[0], s.shape[1]
    valid = _valid_mask(mask, s)
    b, c, i, j = _unique_span_index(spans.to(s.device), s.shape)
    if valid is not None:
        vb = valid.expand(s.shape)
        keep = vb[b, c, i, j]
        b, c, i, j = b[keep], c[keep], i[keep], j[keep]

    negative = s.masked_fill(~valid, -math.inf) if valid is not None else s.clone()
    negative.index_put_((b, c, i, j), torch.tensor(-math.inf, dtype=s.dtype, device=s.device))
    neg = _log1p_sum_exp(negative)  # (B, C)

    # Positive term per (example, type) group: log(1 + sum exp(-s_pos)), as a scatter.
    group = b * num_types + c
    x = -s[b, c, i, j]  # (N,)
    m = torch.zeros(batch * num_types, dtype=s.dtype, device=s.device)
    m = m.scatter_reduce(0, group, x.detach(), reduce="amax", include_self=True)
    shifted_sum = torch.zeros_like(m).index_add(0, group, torch.exp(x - m[group]))
    pos = _shifted_log1p(m, shifted_sum).view(batch, num_types)
    return _reduce(neg + pos, reduction)


# ------------------------------------------------------------------------------------ divergences


def global_pointer_kl(
    s: Tensor, t: Tensor, mask: Tensor | None = None, reduction: str = "mean"
) -> Tensor:
    """The GlobalPointer divergence ``D(s, t) = sum_valid (sigmoid(s) - sigmoid(t)) (s - t)``.

    Equal to the sum over cells of the symmetric KL of the binary distributions
    ``[sigmoid(x), 1 - sigmoid(x)]``; symmetric, non-negative, zero iff ``s == t`` on valid cells.

    Args:
        s, t: (B, C, L, L) logits.
        mask: bool, (B, L) or broadcastable to (B, C, L, L); None = all valid (the finite fill of
            :func:`global_pointer_logits` then contributes exactly 0; ``-inf`` cells need a mask).
        reduction: "none" -> (B, C), "mean", "sum".
    """
    s, t = _accumulation_dtype(s), _accumulation_dtype(t)
    valid = _valid_mask(mask, s)
    if valid is not None:
        # Zero both sides before any arithmetic: masked cells then give (0.5 - 0.5) * 0 = 0 and
        # masked_fill passes no gradient to them.
        s = s.masked_fill(~valid, 0.0)
        t = t.masked_fill(~valid, 0.0)
    cells = (torch.sigmoid(s) - torch.sigmoid(t)) * (s - t)
    return _reduce(cells.sum(dim=(-2, -1)), reduction)


def softmax_kl(s: Tensor, t: Tensor, mask: Tensor | None = None, reduction: str = "mean") -> Tensor:
    """Symmetric softmax KL over the valid cells of each (example, type): the baseline.

    ``KL(p || q) + KL(q || p)`` with ``p = softmax(s)``, ``q = softmax(t)`` taken over the valid
    cells of each (example, type), computed as ``<p - q, s - t>``, to which it is identical.
    An (example, type) without valid cells contributes 0.

    Args:
        s, t: (B, C, L, L) logits.
        mask: bool, (B, L) or broadcastable to (B, C, L, L); None = all valid.
        reduction: "none" -> (B, C), "mean", "sum".
    """
    s, t = _accumulation_dtype(s), _accumulation_dtype(t)
    valid = _valid_mask(mask, s)
    if valid is not None:
        # The lowest finite value gets probability exactly 0 next to any real logit, and
        # min - min = 0, so masked cells add nothing and no NaN can arise.
        low = torch.finfo(s.dtype).min
        s = s.masked_fill(~valid, low)
        t = t.masked_fill(~valid, low)
    p = torch.softmax(s.flatten(-2), dim=-1)
    q = torch.softmax(t.flatten(-2), dim=-1)
    per_pair = ((p - q) * (s - t).flatten(-2)).sum(-1)
    return _reduce(per_pair, reduction)
