"""Pure math of GlobalPointer NER: rotary embeddings, span logits, masks, losses and divergences.

Shape letters used throughout:
    B batch, C entity types, L tokens, D head size, H hidden size, N gold spans,
    W maximum span width (banded layout).

Reduction convention shared by every loss and divergence here: the per-cell terms are summed over
the (L, L) cells of each (example, type) pair, giving a (B, C) tensor. ``reduction="none"``
returns that tensor, ``"mean"`` its mean and ``"sum"`` its sum.

Masks are bool. A cell is *valid* when both of its tokens are real and ``i <= j``; invalid cells
contribute exactly zero to every loss and divergence, with zero gradient, even where the logits
hold ``-inf`` (``-inf - -inf`` is NaN, so no arithmetic ever touches an invalid cell's value).
Half-precision inputs are accumulated in float32; results are returned in float32 for them.

Layouts. The *full* layout stores span ``(i, j)`` at ``logits[b, c, i, j]``: (B, C, L, L). With a
maximum span width ``W`` the *band* layout stores only ``0 <= j - i < W``: ``logits[b, c, i, w]``
is span ``(i, i + w)``, (B, C, L, W); cells with ``i + w >= L`` are invalid. Functions that take
``max_width`` read and write the band layout; gold spans are always given as ``[b, c, i, j]``.
A band computation equals the full one restricted to spans shorter than ``W`` (the full layout
with :func:`span_mask` ``(attention_mask, max_width=W)``).

Two ways to compute the losses:

* From logits (drop-in): :func:`sparse_multilabel_categorical_crossentropy`,
  :func:`global_pointer_kl` ... take materialised (B, C, L, L) or band logits. They are custom
  autograd functions that work through the logits in cache-sized row blocks, keep no masked
  copies and save only their inputs.
* From factors (fused, the fast path for training): a head returns :class:`SpanFactors` (rotated,
  scaled q and k plus optional biases) instead of logits, and :func:`fused_crossentropy`,
  :func:`fused_global_pointer_kl` and :func:`fused_rdrop_losses` compute the logits block by
  block, only over the valid triangle (or band), and recompute them in backward: no (B, C, L, L)
  tensor of any kind exists at any point.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = [
    "rope",
    "span_mask",
    "band_mask",
    "global_pointer_logits",
    "efficient_global_pointer_logits",
    "SpanFactors",
    "global_pointer_factors",
    "efficient_global_pointer_factors",
    "factors_to_logits",
    "projected_factors",
    "multilabel_categorical_crossentropy",
    "sparse_multilabel_categorical_crossentropy",
    "global_pointer_kl",
    "softmax_kl",
    "fused_crossentropy",
    "fused_global_pointer_kl",
    "fused_rdrop_losses",
    "dense_to_band",
    "band_to_dense",
    "spans_to_band",
    "band_to_spans",
    "select_cells",
    "use_compiled_kernels",
]

_REDUCTIONS = ("none", "mean", "sum")

# Cells per row block of the blocked kernels: 2**20 float32 cells are 4 MiB, so a block and its
# few temporaries stay in the L2/L3 caches. Tests lower it to exercise many blocks.
_BLOCK_CELLS = 1 << 20


# --------------------------------------------------------------------------- positions and masks


def _rope_tables(
    x: Tensor, positions: Tensor | None, base: float, scale: float = 1.0
) -> tuple[Tensor, Tensor]:
    """``(cos, sin)`` of the rotation angles, (..., L, D/2) in ``x``'s dtype, times ``scale``."""
    length, dim = x.shape[-2], x.shape[-1]
    if dim % 2:
        raise ValueError(f"rope needs an even last dimension, got {dim}")
    # float64 stays float64 (exact parity tests); everything else computes angles in float32.
    angle_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    if positions is None:
        positions = torch.arange(length, device=x.device)
    inv_freq = base ** (-torch.arange(0, dim, 2, device=x.device, dtype=angle_dtype) / dim)
    angles = positions.to(angle_dtype).unsqueeze(-1) * inv_freq  # (..., L, D/2)
    return (angles.cos() * scale).to(x.dtype), (angles.sin() * scale).to(x.dtype)


def _rotate(x: Tensor, cos: Tensor, sin: Tensor, out: Tensor | None = None) -> Tensor:
    """Pairs ``(e, o)`` of ``x`` -> ``(e cos - o sin, o cos + e sin)``, in 4 half-size passes."""
    if out is None:
        shape = torch.broadcast_shapes(x.shape, (*cos.shape[:-1], x.shape[-1]))
        out = torch.empty(shape, dtype=x.dtype, device=x.device)
    pairs, out_pairs = x.unflatten(-1, (-1, 2)), out.unflatten(-1, (-1, 2))
    even, odd = pairs[..., 0], pairs[..., 1]
    out_even, out_odd = out_pairs[..., 0], out_pairs[..., 1]
    torch.mul(even, cos, out=out_even)
    out_even.addcmul_(odd, sin, value=-1.0)
    torch.mul(odd, cos, out=out_odd)
    out_odd.addcmul_(even, sin)
    return out


class _Rope(torch.autograd.Function):
    """The rotation of :func:`rope` with given tables; backward rotates by the opposite angle."""

    @staticmethod
    def forward(ctx, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        ctx.save_for_backward(cos, sin)
        ctx.shape = x.shape
        return _rotate(x, cos, sin)

    @staticmethod
    def backward(ctx, grad: Tensor):
        cos, sin = ctx.saved_tensors
        dx = _rotate(grad, cos, -sin)
        if dx.shape != ctx.shape:  # x was broadcast against batched positions
            dx = dx.sum_to_size(ctx.shape)
        return dx, None, None


class _ProjectedPair(torch.autograd.Function):
    """``q`` and ``k`` cut from one projection output, rotated (``q`` also scaled), in one node.

    ``split(base)`` returns the two (..., L, D) views. Backward writes both gradients straight
    into one buffer shaped like ``base`` (the views partition it), instead of autograd's
    zero-filled, base-sized buffer per view.
    """

    @staticmethod
    def forward(ctx, base: Tensor, split, use_rope: bool, scale: float):
        qv, kv = split(base)
        ctx.split, ctx.use_rope, ctx.scale = split, use_rope, scale
        ctx.base_shape = base.shape
        if not use_rope:
            return (qv * scale).contiguous(), kv.contiguous()
        cos, sin = _rope_tables(qv, None, 10000.0)
        ctx.save_for_backward(cos, sin)
        return _rotate(qv, cos * scale, sin * scale), _rotate(kv, cos, sin)

    @staticmethod
    def backward(ctx, gq: Tensor | None, gk: Tensor | None):
        ref = gq if gq is not None else gk
        grad = torch.empty(ctx.base_shape, dtype=ref.dtype, device=ref.device)
        gqv, gkv = ctx.split(grad)
        scale = ctx.scale
        if ctx.use_rope:
            cos, sin = ctx.saved_tensors
        for g, view, factor in ((gq, gqv, scale), (gk, gkv, 1.0)):
            if g is None:
                view.zero_()
            elif ctx.use_rope:
                _rotate(g, cos * factor, sin * -factor, out=view)
            else:
                torch.mul(g, factor, out=view)
        return grad, None, None, None


def rope(
    x: Tensor, positions: Tensor | None = None, base: float = 10000.0, *, scale: float = 1.0
) -> Tensor:
    """Rotary position embedding with interleaved pairs (0, 1), (2, 3), ...

    Pair ``k`` of the vector at position ``p`` is rotated by the angle ``p * base^(-2k / D)``, so
    that for rotated ``q_i`` and ``k_j`` the score ``q_i . k_j`` depends on positions only
    through ``j - i``. Angles are computed on the fly, so any length works.

    Args:
        x: (..., L, D) with D even.
        positions: integer or float positions broadcastable to ``x.shape[:-1]``; default
            ``arange(L)``.
        base: the frequency base.
        scale: multiplies the result (folded into the rotation tables, so it costs nothing).
    Returns:
        (..., L, D), same dtype as ``x``.
    """
    cos, sin = _rope_tables(x, positions, base, scale)
    return _Rope.apply(x, cos, sin)


def _check_width(max_width: int | None) -> None:
    if max_width is not None and (not isinstance(max_width, int) or max_width < 1):
        raise ValueError(f"max_width must be a positive int or None, got {max_width!r}")


def span_mask(attention_mask: Tensor, max_width: int | None = None) -> Tensor:
    """Valid (start, end) cells of the full layout: both tokens real, ``i <= j`` (``< i + W``).

    Args:
        attention_mask: (B, L), bool or 0/1.
        max_width: also require ``j - i < max_width``; None = any width.
    Returns:
        (B, 1, L, L) bool.
    """
    _check_width(max_width)
    am = attention_mask.bool()
    length = am.shape[-1]
    upper = torch.ones(length, length, dtype=torch.bool, device=am.device).triu_()
    if max_width is not None:
        upper.tril_(max_width - 1)
    return am[:, None, :, None] & am[:, None, None, :] & upper


def band_mask(attention_mask: Tensor, max_width: int) -> Tensor:
    """Valid cells of the band layout: ``(i, w)`` with tokens ``i`` and ``i + w < L`` real.

    Args:
        attention_mask: (B, L), bool or 0/1.
        max_width: W.
    Returns:
        (B, 1, L, W) bool.
    """
    _check_width(max_width)
    am = attention_mask.bool()
    padded = torch.nn.functional.pad(am, (0, max_width - 1))  # (B, L + W - 1), False beyond L
    ends = padded.unfold(-1, max_width, 1)  # (B, L, W): ends[b, i, w] = am[b, i + w]
    return (am[..., None] & ends)[:, None]


def _band_view(x: Tensor, width: int) -> Tensor:
    """The band of a contiguous (..., r, r + W - 1) block: ``view[..., i, w] = x[..., i, i+w]``."""
    rows, cols = x.shape[-2], x.shape[-1]
    lead = x.shape[:-2]
    strides = list(x.stride()[:-2]) + [cols + 1, 1]
    return x.as_strided((*lead, rows, width), strides, x.storage_offset())


def dense_to_band(x: Tensor, max_width: int, fill: float | None = None) -> Tensor:
    """Full layout (..., L, L) -> band layout (..., L, W); cells past the end get ``fill``.

    ``fill`` defaults to ``torch.finfo(x.dtype).min`` (0 for bool).
    """
    _check_width(max_width)
    length = x.shape[-1]
    if fill is None:
        fill = False if x.dtype == torch.bool else torch.finfo(x.dtype).min
    padded = x.new_full((*x.shape[:-1], length + max_width - 1), fill)
    padded[..., :length] = x
    return _band_view(padded, max_width).clone()


def band_to_dense(x: Tensor, fill: float | None = None) -> Tensor:
    """Band layout (..., L, W) -> full layout (..., L, L); cells outside the band get ``fill``.

    ``fill`` defaults to ``torch.finfo(x.dtype).min`` (False for bool). Costs O(L^2) memory: for
    decoding long texts prefer :func:`select_cells`, which reads the band directly.
    """
    length, width = x.shape[-2], x.shape[-1]
    if fill is None:
        fill = False if x.dtype == torch.bool else torch.finfo(x.dtype).min
    padded = x.new_full((*x.shape[:-1], length + width - 1), fill)
    _band_view(padded, width).copy_(x)
    return padded[..., :length].contiguous()


def spans_to_band(spans: Tensor, max_width: int) -> Tensor:
    """Rows ``[b, c, i, j]`` -> band rows ``[b, c, i, j - i]``; spans not shorter than W dropped.

    Args:
        spans: (N, 4) integer.
    Returns:
        (N', 4) long, N' <= N: only the spans with ``0 <= j - i < max_width``.
    """
    _check_width(max_width)
    spans = spans.long().reshape(-1, 4)
    width = spans[:, 3] - spans[:, 2]
    keep = (width >= 0) & (width < max_width)
    out = spans[keep].clone()
    out[:, 3] = width[keep]
    return out


def band_to_spans(band_spans: Tensor) -> Tensor:
    """Band rows ``[b, c, i, w]`` -> rows ``[b, c, i, i + w]``: the inverse of
    :func:`spans_to_band`."""
    out = band_spans.long().reshape(-1, 4).clone()
    out[:, 3] += out[:, 2]
    return out


def select_cells(
    logits: Tensor,
    threshold: float = 0.0,
    attention_mask: Tensor | None = None,
    *,
    max_width: int | None = None,
) -> tuple[Tensor, Tensor]:
    """The valid cells scoring above ``threshold``, for decoding either layout.

    Args:
        logits: (B, C, L, L), or band (B, C, L, W) when ``max_width`` is given.
        threshold: a cell is selected when ``logits > threshold`` (NaN never is).
        attention_mask: (B, L) bool or None (all tokens real).
        max_width: W for band logits; None for the full layout.
    Returns:
        ``index`` (K, 4) long rows ``[b, c, i, j]`` in span coordinates, ordered by
        ``(b, i, j, c)``, and ``scores`` (K,) float32, in the same order.
    """
    logits = logits.detach()
    batch, _, length, cols = logits.shape
    if max_width is None:
        if cols != length:
            raise ValueError(f"full-layout logits must be (B, C, L, L), got {tuple(logits.shape)}")
        am = attention_mask if attention_mask is not None else logits.new_ones(batch, length)
        valid = span_mask(am.bool())
    else:
        if cols != max_width:
            raise ValueError(f"band logits must be (B, C, L, {max_width}), got {logits.shape}")
        am = attention_mask if attention_mask is not None else logits.new_ones(batch, length)
        valid = band_mask(am.bool(), max_width)
    keep = (logits > threshold) & valid  # (B, C, L, L or W)
    keep = keep.permute(0, 2, 3, 1)  # (B, L, L or W, C): nonzero order is (b, i, j, c)
    rows = torch.nonzero(keep)  # (K, 4) [b, i, j or w, c]
    scores = logits.permute(0, 2, 3, 1)[keep].float()
    index = rows[:, [0, 3, 1, 2]]
    if max_width is not None:
        index[:, 3] += index[:, 2]
    return index, scores


# ------------------------------------------------------------------------------------------ logits


def _fill_invalid_(
    logits: Tensor, attention_mask: Tensor | None, max_width: int | None = None
) -> Tensor:
    """Set invalid cells of freshly computed logits to the dtype's lowest finite value, in place.

    A finite fill keeps naive downstream arithmetic NaN-free while ``exp`` of it is exactly 0.
    Works on the full layout, or on the band layout when ``max_width`` is given.
    """
    low = torch.finfo(logits.dtype).min
    length = logits.shape[-2]
    if max_width is not None:
        if attention_mask is None:
            attention_mask = torch.ones(1, length, dtype=torch.bool, device=logits.device)
        return logits.masked_fill_(~band_mask(attention_mask, max_width), low)
    if attention_mask is None:
        lower = torch.ones(length, length, dtype=torch.bool, device=logits.device).tril_(-1)
        return logits.masked_fill_(lower, low)
    return logits.masked_fill_(~span_mask(attention_mask), low)


class SpanFactors(NamedTuple):
    """Span logits in factored form, as the fused losses consume them.

    ``s[b, c, i, j] = q[b, c, i] . k[b, c, j] + start_bias[b, c, i] + end_bias[b, c, j]`` on the
    valid cells (both tokens real, ``0 <= j - i < max_width``). ``q`` is already rotated and
    scaled by ``1 / sqrt(D)`` and ``k`` rotated, so no further scaling happens. ``q`` and ``k``
    are (B, C, L, D) for GlobalPointer, (B, 1, L, D) shared by all types for the Efficient head.
    """

    q: Tensor  # (B, C or 1, L, D)
    k: Tensor  # (B, C or 1, L, D)
    start_bias: Tensor | None = None  # (B, C, L)
    end_bias: Tensor | None = None  # (B, C, L)
    attention_mask: Tensor | None = None  # (B, L) bool; None = every token real
    max_width: int | None = None  # None = full layout

    @property
    def num_types(self) -> int:
        return self.start_bias.shape[1] if self.start_bias is not None else self.q.shape[1]

    def batch_slice(self, start: int, stop: int) -> SpanFactors:
        """Examples ``start:stop`` (e.g. the halves of an R-Drop doubled batch)."""

        def cut(x: Tensor | None) -> Tensor | None:
            return None if x is None else x[start:stop]

        return self._replace(
            q=self.q[start:stop],
            k=self.k[start:stop],
            start_bias=cut(self.start_bias),
            end_bias=cut(self.end_bias),
            attention_mask=cut(self.attention_mask),
        )

    def detach(self) -> SpanFactors:
        """The same factors cut from the graph (e.g. the clean side of a VAT divergence)."""

        def cut(x: Tensor | None) -> Tensor | None:
            return None if x is None else x.detach()

        return self._replace(
            q=self.q.detach(),
            k=self.k.detach(),
            start_bias=cut(self.start_bias),
            end_bias=cut(self.end_bias),
        )


def _split_global_pointer(base: Tensor) -> tuple[Tensor, Tensor]:
    """(B, L, C, 2, D) projection -> q, k (B, C, L, D) views."""
    return base[..., 0, :].transpose(1, 2), base[..., 1, :].transpose(1, 2)


def _split_efficient(base: Tensor) -> tuple[Tensor, Tensor]:
    """(B, L, D, 2) projection -> q, k (B, L, D) views (interleaved, as the original)."""
    return base[..., 0], base[..., 1]


def projected_factors(
    projection: Tensor,
    num_types: int,
    attention_mask: Tensor | None = None,
    *,
    start_bias: Tensor | None = None,
    end_bias: Tensor | None = None,
    use_rope: bool = True,
    max_width: int | None = None,
) -> SpanFactors:
    """Factors straight from a head's projection output, q and k split and rotated in one node.

    Same values as :func:`global_pointer_factors` / :func:`efficient_global_pointer_factors` on
    the projection's q and k views, with a cheaper backward.

    Args:
        projection: GlobalPointer: (B, L, C * 2 * D), per type ``[q (D), k (D)]``. Efficient
            GlobalPointer (``start_bias`` given): (B, L, 2 * D), q and k interleaved.
        num_types: C.
        start_bias, end_bias: (B, C, L) for the Efficient head, else None.
    """
    _check_width(max_width)
    batch, length, width = projection.shape
    am = None if attention_mask is None else attention_mask.bool()
    if start_bias is None:
        dim = width // (2 * num_types)
        base = projection.view(batch, length, num_types, 2, dim)
        q, k = _ProjectedPair.apply(base, _split_global_pointer, use_rope, dim**-0.5)
        return SpanFactors(q, k, None, None, am, max_width)
    dim = width // 2
    base = projection.view(batch, length, dim, 2)
    q, k = _ProjectedPair.apply(base, _split_efficient, use_rope, dim**-0.5)
    return SpanFactors(q[:, None], k[:, None], start_bias, end_bias, am, max_width)


def global_pointer_factors(
    q: Tensor,
    k: Tensor,
    attention_mask: Tensor | None = None,
    *,
    use_rope: bool = True,
    max_width: int | None = None,
) -> SpanFactors:
    """GlobalPointer logits in factored form (see :func:`global_pointer_logits`).

    Args:
        q, k: (B, C, L, D) start and end projections.
    """
    _check_width(max_width)
    scale = q.shape[-1] ** -0.5  # folded into q's rotation: cheaper than scaling (L, L) logits
    q, k = (rope(q, scale=scale), rope(k)) if use_rope else (q * scale, k)
    am = None if attention_mask is None else attention_mask.bool()
    return SpanFactors(q, k, None, None, am, max_width)


def efficient_global_pointer_factors(
    q: Tensor,
    k: Tensor,
    start_bias: Tensor,
    end_bias: Tensor,
    attention_mask: Tensor | None = None,
    *,
    use_rope: bool = True,
    max_width: int | None = None,
) -> SpanFactors:
    """Efficient GlobalPointer logits in factored form (see
    :func:`efficient_global_pointer_logits`).

    Args:
        q, k: (B, L, D) shared projections; start_bias, end_bias: (B, C, L).
    """
    _check_width(max_width)
    scale = q.shape[-1] ** -0.5
    q, k = (rope(q, scale=scale), rope(k)) if use_rope else (q * scale, k)
    am = None if attention_mask is None else attention_mask.bool()
    return SpanFactors(q[:, None], k[:, None], start_bias, end_bias, am, max_width)


def factors_to_logits(f: SpanFactors) -> Tensor:
    """Materialise factored logits (differentiably).

    Returns:
        (B, C, L, L), or (B, C, L, W) band logits when ``f.max_width`` is set; invalid cells hold
        ``torch.finfo(dtype).min``.
    """
    if f.max_width is None:
        logits = torch.matmul(f.q, f.k.transpose(-1, -2))  # (B, C or 1, L, L)
        if f.start_bias is not None:
            logits = logits + f.start_bias[..., :, None]
            logits += f.end_bias[..., None, :]
        return _fill_invalid_(logits, f.attention_mask)
    width = f.max_width
    logits = _BandScores.apply(width, f.q, f.k)  # (B, C or 1, L, W)
    if f.start_bias is not None:
        end = torch.nn.functional.pad(f.end_bias, (0, width - 1)).unfold(-1, width, 1)
        logits = logits + f.start_bias[..., :, None]
        logits += end  # end[b, c, i, w] = end_bias[b, c, i + w]
    elif logits.shape[1] != f.num_types:
        logits = logits.expand(-1, f.num_types, -1, -1).contiguous()
    return _fill_invalid_(logits, f.attention_mask, width)


def global_pointer_logits(
    q: Tensor,
    k: Tensor,
    attention_mask: Tensor | None = None,
    *,
    use_rope: bool = True,
    max_width: int | None = None,
) -> Tensor:
    """Standard GlobalPointer span logits ``s[b, c, i, j] = q_i . k_j / sqrt(D)``.

    Args:
        q: (B, C, L, D) start projections, one per entity type.
        k: (B, C, L, D) end projections.
        attention_mask: (B, L) bool; ``None`` means every token is real.
        use_rope: rotate q and k with :func:`rope` first.
        max_width: W: compute only spans with ``j - i < W``, in the band layout.
    Returns:
        (B, C, L, L), or (B, C, L, W) with ``max_width``; invalid cells hold
        ``torch.finfo(dtype).min``.
    """
    # Scaling the (L, D) factor is cheaper than scaling the (L, L) product.
    return factors_to_logits(
        global_pointer_factors(q, k, attention_mask, use_rope=use_rope, max_width=max_width)
    )


def efficient_global_pointer_logits(
    q: Tensor,
    k: Tensor,
    start_bias: Tensor,
    end_bias: Tensor,
    attention_mask: Tensor | None = None,
    *,
    use_rope: bool = True,
    max_width: int | None = None,
) -> Tensor:
    """Efficient GlobalPointer logits: one shared q.k score plus per-type start and end biases.

    ``s[b, c, i, j] = q_i . k_j / sqrt(D) + start_bias[b, c, i] + end_bias[b, c, j]``.

    Args:
        q: (B, L, D) shared start projection.
        k: (B, L, D) shared end projection.
        start_bias: (B, C, L).
        end_bias: (B, C, L).
        attention_mask: (B, L) bool or ``None``.
        max_width: W: band layout, see :func:`global_pointer_logits`.
    Returns:
        (B, C, L, L) or (B, C, L, W); invalid cells hold ``torch.finfo(dtype).min``.
    """
    f = efficient_global_pointer_factors(
        q, k, start_bias, end_bias, attention_mask, use_rope=use_rope, max_width=max_width
    )
    return factors_to_logits(f)


# --------------------------------------------------------------------------------------- helpers


def _reduce(per_pair: Tensor, reduction: str) -> Tensor:
    if reduction == "none":
        return per_pair
    if reduction == "mean":
        return per_pair.mean()
    if reduction == "sum":
        return per_pair.sum()
    raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def _check_reduction(reduction: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def _accumulation_dtype(x: Tensor) -> Tensor:
    """Half precision is accumulated in float32; float32 and float64 stay as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _valid_mask(mask: Tensor | None, like: Tensor, max_width: int | None = None) -> Tensor | None:
    """A bool mask broadcastable to ``like`` (B, C, L, L or W), or None for "all valid"."""
    if mask is None:
        return None
    if mask.dtype != torch.bool:
        raise TypeError(f"masks must be bool, got {mask.dtype}")
    if mask.dim() == 2:  # an attention mask (B, L)
        mask = span_mask(mask) if max_width is None else band_mask(mask, max_width)
    return mask


def _shifted_log1p(m: Tensor, shifted_sum: Tensor) -> Tensor:
    """``log(1 + sum exp(x))`` from ``m = max(0, max x)`` and ``shifted_sum = sum exp(x - m)``.

    Where ``m == 0`` the answer is ``log1p(shifted_sum)``, which keeps its precision for a
    confident model's tiny losses (``log(1 + 1e-12)`` is 0 in float32); elsewhere
    ``shifted_sum >= 1`` and the plain form is exact. Both branches are finite, so ``where``
    is safe.
    """
    return torch.where(m > 0, m + torch.log(torch.exp(-m) + shifted_sum), torch.log1p(shifted_sum))


# ------------------------------------------------------------------------- the blocked kernel
#
# Every loss and divergence on GlobalPointer logits is a sum over the valid cells of each
# (example, type) of an elementwise function of one or two logits, plus, for the cross-entropy,
# a log-sum-exp. So they can all walk the cells in blocks [b0, b1) x [r0, r1) x [c0, M): a block
# of (Bg, C, r, M - c0) cells fits in cache, is computed (by a matmul from factors, or copied
# from materialised logits) into a fresh buffer, used in place, and dropped. Backward recomputes
# the block and turns its gradient into dq/dk (factors) or writes it into the logits' gradient.
#
# Two facts of CPU kernels shape the arithmetic: masked_fill with a broadcast mask is several
# times slower than adding a broadcast 0/-inf bias or multiplying by a 0/1 mask, and exp is 4 to
# 30 times slower on -inf and on arguments that underflow. So invalid cells are excluded by a bias
# (for maxima) or a 0/1 factor (for sums and gradients), and exp arguments are clamped below at
# log(tiny) (about -86 in float32): a valid cell that far below the maximum adds at most tiny
# (1e-38) to a sum that is >= 1 instead of its even tinier true value, and excluded cells are
# multiplied by 0 after the exp, so they add, and receive, exactly 0.
#
# A _Layout says which blocks exist and which of their cells are valid; a source says how to
# produce a block's cells and where a block's gradient goes; _SpanLosses runs both passes.

_NEG_INF = -math.inf


class _Layout:
    """Blocks over cells (B, C, L, M) and the valid cells of each block.

    kinds:
        "tri": full layout with triangular validity (``i <= j``, both tokens real); blocks start
            at column ``c0 = r0`` since every cell left of the diagonal is invalid.
        "band": band layout (M = W): cell ``(i, w)`` valid when tokens ``i`` and ``i + w`` are.
        "all": every cell valid (no mask).
        "mask": validity read from a bool mask broadcastable to (B, C, L, M).
    """

    ROWS = 64  # rows per block: the q.k^T matmuls are efficient from about 64 rows

    def __init__(
        self,
        kind: str,
        shape: tuple[int, int, int, int],
        device: torch.device,
        *,
        attention_mask: Tensor | None = None,
        mask: Tensor | None = None,
        width: int | None = None,
    ):
        self.kind = kind
        self.batch, self.types, self.rows, self.cols = shape
        self.device = device
        self.width = width
        am = None if attention_mask is None else attention_mask.bool()
        if am is not None and kind == "tri" and bool(am.all()):
            am = None  # no padding: the triangle alone decides
        self.am = am
        self.invalid: Tensor | None = None
        if kind == "band":
            full = (
                am if am is not None else torch.ones(1, self.rows, dtype=torch.bool, device=device)
            )
            self.invalid = ~band_mask(full, width)  # (B or 1, 1, L, W)
        elif kind == "mask":
            self.invalid = (~mask).expand(self.batch, self.types, self.rows, self.cols)
        self.blocks = self._plan()

    def _plan(self) -> list[tuple[int, int, int, int, int]]:
        """``(b0, b1, r0, r1, c0)`` per block, about ``_BLOCK_CELLS`` cells each."""
        blocks = []
        rows = max(1, min(self.ROWS, _BLOCK_CELLS // max(1, self.types * self.cols)))
        for r0 in range(0, self.rows, rows):
            r1 = min(self.rows, r0 + rows)
            c0 = r0 if self.kind == "tri" else 0
            cols = self.cols - c0
            if self.kind == "band":  # the block's matmul is r x (r + W - 1)
                cols = r1 - r0 + self.cols - 1
            per_example = self.types * (r1 - r0) * cols
            group = max(1, min(self.batch, _BLOCK_CELLS // max(1, per_example)))
            for b0 in range(0, self.batch, group):
                blocks.append((b0, min(self.batch, b0 + group), r0, r1, c0))
        return blocks

    def invalid_block(self, b0: int, b1: int, r0: int, r1: int, c0: int) -> Tensor | None:
        """Bool (Bg or 1, C or 1, r, M - c0): True on invalid cells; None when all are valid."""
        if self.kind == "all":
            return None
        if self.kind in ("band", "mask"):
            inv = self.invalid
            if inv.shape[0] > 1:
                inv = inv[b0:b1]
            return inv[:, :, r0:r1, c0:]
        rows = torch.arange(r0, r1, device=self.device)
        cols = torch.arange(c0, self.cols, device=self.device)
        lower = cols[None, :] < rows[:, None]  # (r, M - c0)
        if self.am is None:
            return lower[None, None]
        am = self.am[b0:b1]
        return lower | ~(am[:, None, r0:r1, None] & am[:, None, None, c0:])

    def valid_at(self, b: Tensor, c: Tensor, i: Tensor, x: Tensor) -> Tensor:
        """Which cells ``(b, c, i, x)`` (cell coordinates) are valid; raises if out of range."""
        bad = (b < 0) | (b >= self.batch) | (c < 0) | (c >= self.types) | (i < 0) | (i >= self.rows)
        if self.kind in ("all", "mask"):
            bad |= (x < 0) | (x >= self.cols)
        if bool(bad.any()):
            raise ValueError("span index out of range of the logits")
        if self.kind == "all":
            return torch.ones_like(b, dtype=torch.bool)
        if self.kind == "mask":
            return ~self.invalid[b, c, i, x]
        if self.kind == "band":
            ok = (x >= 0) & (x < self.width) & (i + x < self.rows)
            xs = x.clamp(0, self.width - 1)
            return ok & ~self.invalid[b.clamp(max=self.invalid.shape[0] - 1), 0, i, xs]
        ok = (x >= i) & (x < self.cols)
        if self.am is None:
            return ok
        return ok & self.am[b, i] & self.am[b, x.clamp(max=self.cols - 1)]


class _Positives:
    """Gold cells sorted by block: flat indices into each block's cells and their groups."""

    def __init__(self, layout: _Layout, cells: Tensor):
        b, c, i, x = cells.long().reshape(-1, 4).to(layout.device).unbind(-1)
        keep = layout.valid_at(b, c, i, x)
        b, c, i, x = b[keep], c[keep], i[keep], x[keep]
        rows, cols, types = layout.rows, layout.cols, layout.types
        flat = torch.unique(((b * types + c) * rows + i) * cols + x)  # deduplicated
        x = flat % cols
        i = (flat // cols) % rows
        group = flat // (cols * rows)  # b * C + c
        b = group // types
        # Block of each cell: blocks are listed row band by row band, batch groups inside.
        blocks = torch.tensor(layout.blocks, device=layout.device).reshape(-1, 5)
        b0, b1, r0, r1, c0 = blocks.unbind(-1)
        inside = (b[:, None] >= b0) & (b[:, None] < b1) & (i[:, None] >= r0) & (i[:, None] < r1)
        block = inside.float().argmax(-1) if len(b) else b
        order = torch.argsort(block, stable=True)
        block, group, b, i, x = block[order], group[order], b[order], i[order], x[order]
        b0, r0, c0 = b0[block], r0[block], c0[block]
        r = (r1 - blocks[:, 2])[block]
        within = (((b - b0) * types + group % types) * r + (i - r0)) * (cols - c0) + (x - c0)
        sizes = torch.bincount(block, minlength=len(layout.blocks)).tolist()
        self.group = group  # (N,) in block order
        self.groups = list(group.split(sizes))  # per block
        self.flat = list(within.split(sizes))  # per block
        self.sizes = sizes


class _FactorSource:
    """Blocks of cells computed from :class:`SpanFactors` (tensors q, k, start_bias, end_bias)."""

    def __init__(self, layout: _Layout, q: Tensor, k: Tensor, sb: Tensor | None, eb: Tensor | None):
        self.layout = layout
        self.band = layout.kind == "band"
        self.width = layout.width
        self.acc = _acc(q.dtype)
        self.length = q.shape[-2]
        self.q, self.k, self.sb, self.eb = q, k, sb, eb
        self.shared = q.shape[1] == 1 and layout.types > 1
        self.grads: list[Tensor | None] | None = None
        self._last: tuple[Tensor, Tensor] | None = None

    def _cols(self, r0: int, r1: int, c0: int) -> tuple[int, int]:
        if self.band:
            return r0, r1 + self.width - 1
        return c0, self.length

    def _end_bias(self, b0: int, b1: int, a: int, z: int) -> Tensor:
        """End biases of columns ``a:z``, zero past the end of the sequence (band blocks)."""
        eb = self.eb[b0:b1, :, a : min(z, self.length)].to(self.acc)
        return torch.nn.functional.pad(eb, (0, z - a - eb.shape[-1]))

    def load(self, b0: int, b1: int, r0: int, r1: int, c0: int) -> tuple[Tensor, Tensor]:
        """The block's q rows and k columns in the accumulation dtype (kept for backward).

        Band blocks always span r + W - 1 columns; columns past the end are zero rows of k.
        """
        a, z = self._cols(r0, r1, c0)
        qb = self.q[b0:b1, :, r0:r1].to(self.acc)
        kb = self.k[b0:b1, :, a : min(z, self.length)].to(self.acc)
        if kb.shape[-2] < z - a:
            kb = torch.nn.functional.pad(kb, (0, 0, 0, z - a - kb.shape[-2]))
        self._last = (qb, kb)
        return qb, kb

    def cells(self, b0: int, b1: int, r0: int, r1: int, c0: int) -> Tensor:
        """(Bg, C, r, M - c0), fresh and contiguous, in the accumulation dtype."""
        a, z = self._cols(r0, r1, c0)
        qb, kb = self.load(b0, b1, r0, r1, c0)
        x = torch.matmul(qb, kb.transpose(-1, -2))  # (Bg, C or 1, r, n)
        if self.band:
            x = _band_view(x, self.width)  # (Bg, C or 1, r, W), a view
        if self.sb is not None:
            sb = self.sb[b0:b1, :, r0:r1, None].to(self.acc)
            out = torch.empty((*sb.shape[:-1], x.shape[-1]), dtype=self.acc, device=x.device)
            x = torch.add(x, sb, out=out)  # (Bg, C, r, M - c0), fresh and contiguous
            if self.band:
                x += self._end_bias(b0, b1, a, z).unfold(-1, self.width, 1)
            else:
                x += self.eb[b0:b1, :, None, a:z].to(self.acc)
        elif self.band:
            x = x.contiguous()
        return x

    def start_backward(self, needs: tuple[bool, ...]) -> None:
        def zeros(t: Tensor | None, need: bool) -> Tensor | None:
            return t.new_zeros(t.shape, dtype=self.acc) if (t is not None and need) else None

        self.grads = [zeros(t, n) for t, n in zip((self.q, self.k, self.sb, self.eb), needs)]

    def backward_cells(self, b0: int, b1: int, r0: int, r1: int, c0: int, g: Tensor) -> None:
        """Accumulate the gradient ``g`` (Bg, C, r, M - c0) of this block's cells."""
        dq, dk, dsb, deb = self.grads
        a, z = self._cols(r0, r1, c0)
        qb, kb = self._last  # set by cells() / load() on the same block
        if dsb is not None:
            dsb[b0:b1, :, r0:r1] = g.sum(-1)
        if self.band:
            full = g.new_zeros((*g.shape[:-1], z - a))  # (Bg, C, r, r + W - 1)
            _band_view(full, self.width).copy_(g)
            g = full
        end = min(z, self.length) - a  # band blocks: columns past the end are dropped
        if deb is not None:
            deb[b0:b1, :, a : a + end] += g.sum(-2)[..., :end]
        if dq is None and dk is None:
            return
        if self.shared:
            g = g.sum(1, keepdim=True)
        if dq is not None:
            dq[b0:b1, :, r0:r1] = torch.matmul(g, kb)
        if dk is not None:
            dk[b0:b1, :, a : a + end] += torch.matmul(g.transpose(-1, -2), qb)[..., :end, :]

    def finish_backward(self) -> list[Tensor | None]:
        dq, dk, dsb, deb = self.grads
        originals = (self.q, self.k, self.sb, self.eb)
        out = [None if g is None else g.to(t.dtype) for g, t in zip((dq, dk, dsb, deb), originals)]
        self.grads = None
        return out


class _DenseSource:
    """Blocks of cells copied from materialised logits (B, C, L, M)."""

    def __init__(self, layout: _Layout, logits: Tensor):
        self.layout = layout
        self.logits = logits
        self.acc = _acc(logits.dtype)
        self.grad: Tensor | None = None
        self._zero = torch.zeros((), dtype=self.acc, device=logits.device)

    def cells(self, b0: int, b1: int, r0: int, r1: int, c0: int) -> Tensor:
        block = self.logits[b0:b1, :, r0:r1, c0:]
        invalid = self.layout.invalid_block(b0, b1, r0, r1, c0)
        if invalid is None:
            return torch.empty(block.shape, dtype=self.acc, device=block.device).copy_(block)
        # Copy and clean in one pass: invalid cells may hold -inf (or anything) in user logits.
        return torch.where(invalid, self._zero, block.to(self.acc)).contiguous()

    def start_backward(self, needs: tuple[bool, ...]) -> None:
        logits = self.logits
        self.grad = (
            torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
            if needs[0]
            else None
        )

    def backward_cells(self, b0: int, b1: int, r0: int, r1: int, c0: int, g: Tensor) -> None:
        if self.grad is None:
            return
        self.grad[b0:b1, :, r0:r1, c0:] = g
        if c0:
            self.grad[b0:b1, :, r0:r1, :c0] = 0

    def finish_backward(self) -> list[Tensor | None]:
        grad, self.grad = self.grad, None
        return [grad]


class _Job(NamedTuple):
    """What one call of :class:`_SpanLosses` computes (everything but the tensors)."""

    layout: _Layout
    kind: str  # "factors": inputs (q, k, sb, eb) per source; "dense": one logits per source
    sources: int  # 1 or 2
    positives: _Positives | None  # gold cells, shared by every source's cross-entropy
    ce: tuple[bool, bool]  # cross-entropy of source 0 / 1
    kl: bool  # the GlobalPointer divergence between sources 0 and 1


def _make_sources(job: _Job, tensors: tuple) -> list:
    if job.kind == "dense":
        return [_DenseSource(job.layout, t) for t in tensors[: job.sources]]
    return [_FactorSource(job.layout, *tensors[4 * s : 4 * s + 4]) for s in range(job.sources)]


def _positive_term(x_pos: Tensor, group: Tensor, groups: int) -> Tensor:
    """``log(1 + sum_pos exp(-s))`` per group (B * C,) from the gold logits ``x_pos`` (N,)."""
    x = -x_pos
    m = x.new_zeros(groups).scatter_reduce(0, group, x, reduce="amax", include_self=True)
    shifted = x.new_zeros(groups).index_add_(0, group, torch.exp(x - m[group]))
    return _shifted_log1p(m, shifted)


def _exp_floor(dtype: torch.dtype) -> float:
    """The smallest exp argument with a normal result: lower clamp for fast, exact-enough exp."""
    return math.log(torch.finfo(dtype).tiny) + 1.0


class _BlockMasks(NamedTuple):
    keep: Tensor | None  # 0/1 float, broadcastable to the block: multiplies sums and gradients
    bias: Tensor | None  # 0 on valid cells, ``fill`` on invalid ones: added before a maximum


def _block_masks(invalid: Tensor | None, dtype: torch.dtype, fill: float) -> _BlockMasks:
    """``fill`` is -inf for the compiled kernels (which test for it) and the dtype's lowest
    finite value for the eager code: ``x + finfo.min`` is exactly ``finfo.min`` for any logit of
    sane size (|x| far below the spacing of floats near finfo.min), so after the bias two
    sources agree exactly on every invalid cell and their divergence there is exactly
    ``(0 - 0) * 0 = 0`` with no mask, where -inf would give ``0 * nan``."""
    if invalid is None:
        return _BlockMasks(None, None)
    keep = (~invalid).to(dtype)
    bias = torch.zeros(invalid.shape, dtype=dtype, device=invalid.device)
    return _BlockMasks(keep, bias.masked_fill_(invalid, fill))


def _mask_fill(kernels: bool, dtype: torch.dtype) -> float:
    return _NEG_INF if kernels else torch.finfo(dtype).min


def _uniform_positive(w: Tensor) -> float | None:
    """The value of a gradient that is one positive number everywhere (mean/sum), else None."""
    lo, hi = torch.aminmax(w)
    lo, hi = float(lo), float(hi)
    return lo if lo == hi and lo > 0 else None


# ------------------------------------------------------------------- optional compiled kernels
#
# The eager block code above costs about 15-30 elementwise passes per block; the same arithmetic
# written as pure functions lets torch.compile fuse it into a few loops (measured 3-5x faster on
# the elementwise part, which is most of the work for the Efficient head). Opt-in, because the
# first call compiles for 10-30 s (plus a few seconds for new size patterns) and needs a C++
# compiler; the eager code stays the default and the fallback. Data-dependent work (the gold
# cells) stays eager: before the forward kernel they are set to -inf (so the kernels exclude them
# like invalid cells), and after the backward kernel their exact gradients are written in.

_KERNEL_MODE = "eager"  # "eager" | "compiled" | "python" (the kernels uncompiled: for tests)
_KERNELS: dict[str, dict] = {}  # per mode, built on first use


def use_compiled_kernels(enabled: bool = True) -> bool:
    """Opt in (or out) of ``torch.compile``-fused block kernels for every blocked loss.

    Results equal the eager code's up to rounding. Compilation is lazy: the first loss call
    afterwards compiles (about 10-30 s on a CPU; new size patterns add a few seconds), later calls
    reuse it, also after switching off and on again. If compilation fails (e.g. no C++
    compiler), a warning is issued and the uncompiled kernels are used. Returns the previous
    setting.
    """
    global _KERNEL_MODE
    previous = _KERNEL_MODE == "compiled"
    _KERNEL_MODE = "compiled" if enabled else "eager"
    return previous


def _fwd_kernel(x0: Tensor, x1: Tensor | None, bias: Tensor | None, floor: float, ce: bool):
    """Forward sums of one block. Excluded cells (invalid or gold) are -inf in ``x + bias``.

    Returns ``(kl, m0, s0, m1, s1)``: the divergence summed over the block (None without
    ``x1``), and per source the maximum of the cells and the sum of ``exp(x - max)``
    (``s1``/``m1`` None without ``x1``); all (Bg, C).
    """
    y0 = x0 if bias is None else x0 + bias
    out = [None]
    ys = [y0]
    if x1 is not None:
        y1 = x1 if bias is None else x1 + bias
        ys.append(y1)
        excluded = y0 == _NEG_INF
        cell = (torch.sigmoid(y0) - torch.sigmoid(y1)) * (y0 - y1)
        out[0] = torch.where(excluded, 0.0, cell).sum(dim=(-2, -1))
    for y in ys if ce else []:
        m = y.amax(dim=(-2, -1), keepdim=True)
        shift = torch.where(m == _NEG_INF, 0.0, m)
        e = torch.exp(torch.clamp(y - shift, min=floor))
        e = torch.where(y == _NEG_INF, 0.0, e)
        out += [m.squeeze(-1).squeeze(-1), e.sum(dim=(-2, -1))]
    out += [None] * (5 - len(out))
    return tuple(out)


def _bwd_kernel(
    x0: Tensor,
    x1: Tensor | None,
    bias: Tensor | None,
    neg0: Tensor | None,
    neg1: Tensor | None,
    w0: Tensor | None,
    w1: Tensor | None,
    w_kl: Tensor | None,
    want0: bool,
    want1: bool,
    floor: float,
):
    """Gradients of one block's cells: cross-entropy negatives (weights ``w0``/``w1`` (Bg, C,
    1, 1), log-normalisers ``neg0``/``neg1``) plus the divergence (``w_kl``); 0 on invalid cells
    (-inf in ``bias``). Gold cells come out wrong and are overwritten by the caller."""
    grads = []
    if w_kl is not None:
        a, b = torch.sigmoid(x0), torch.sigmoid(x1)
        diff, d = a - b, x0 - x1
    sides = ((want0, x0, neg0, w0, 1.0, 0), (want1, x1, neg1, w1, -1.0, 1))
    for want, x, neg, w, sign, side in sides:
        if not want:
            grads.append(None)
            continue
        g = torch.zeros_like(x)
        if w_kl is not None:
            p = a if side == 0 else b
            g = (diff + p * (1.0 - p) * d) * (sign * w_kl)
        if w is not None:
            g = g + torch.exp(torch.clamp(x - neg, min=floor, max=0.0)) * w
        if bias is not None:
            g = torch.where(bias == _NEG_INF, 0.0, g)
        grads.append(g)
    return tuple(grads)


def _kernels() -> dict | None:
    """The kernels for the current mode, compiling them on first use; None = eager code."""
    if _KERNEL_MODE == "eager":
        return None
    if _KERNEL_MODE not in _KERNELS:
        if _KERNEL_MODE == "python":
            _KERNELS["python"] = {"fwd": _fwd_kernel, "bwd": _bwd_kernel}
        else:
            _KERNELS["compiled"] = {
                "fwd": torch.compile(_fwd_kernel, dynamic=True),
                "bwd": torch.compile(_bwd_kernel, dynamic=True),
            }
    return _KERNELS[_KERNEL_MODE]


def _run_kernel(name: str, *args):
    """Call a kernel; a compilation failure falls back to the uncompiled kernels, with a warning."""
    global _KERNEL_MODE
    try:
        return _kernels()[name](*args)
    except Exception as error:  # torch.compile backends raise many types
        if _KERNEL_MODE != "compiled":
            raise
        import warnings

        warnings.warn(f"compiled kernels failed ({error!r}); using uncompiled ones", stacklevel=3)
        _KERNEL_MODE = "python"
        return _kernels()[name](*args)


def _kl_cells(x0: Tensor, x1: Tensor) -> Tensor:
    """The divergence of individual cells (N,) (the gold cells, kept out of the kernels)."""
    return (torch.sigmoid(x0) - torch.sigmoid(x1)) * (x0 - x1)


def _kl_cell_grads(x0: Tensor, x1: Tensor) -> tuple[Tensor, Tensor]:
    a, b = torch.sigmoid(x0), torch.sigmoid(x1)
    diff, d = a - b, x0 - x1
    return diff + a * (1 - a) * d, -(diff + b * (1 - b) * d)


class _SpanLosses(torch.autograd.Function):
    """Cross-entropies (per source) and the GlobalPointer divergence, block by block.

    Outputs ``(ce0, ce1, kl)``, each (B, C) in the accumulation dtype (zeros where not asked for).
    Saves only its inputs and (B, C) / (N,) statistics; backward recomputes each block.
    """

    @staticmethod
    def forward(ctx, job: _Job, *tensors):
        ctx.set_materialize_grads(False)
        ctx.job = job
        ctx.save_for_backward(*tensors)
        layout = job.layout
        sources = _make_sources(job, tensors)
        acc = sources[0].acc
        floor = _exp_floor(acc)
        batch, types = layout.batch, layout.types
        device = layout.device
        kernels = _kernels() is not None
        fill = _mask_fill(kernels, acc)
        kl = torch.zeros(batch, types, dtype=acc, device=device)
        passes = [p for p in range(job.sources) if job.ce[p]]
        # Online log-sum-exp of the negatives per (b, c): shift m >= 0 and sum of exp(x - m).
        shift = {p: torch.zeros(batch, types, dtype=acc, device=device) for p in passes}
        total = {p: torch.zeros(batch, types, dtype=acc, device=device) for p in passes}
        gold: dict[int, list[Tensor]] = {p: [] for p in passes}
        for index, (b0, b1, r0, r1, c0) in enumerate(layout.blocks):
            xs = [src.cells(b0, b1, r0, r1, c0) for src in sources]
            masks = _block_masks(layout.invalid_block(b0, b1, r0, r1, c0), acc, fill)
            flat = job.positives.flat[index] if job.positives is not None else None
            for p in passes:
                gold[p].append(xs[p].view(-1)[flat])
            if kernels:
                stats = _forward_block_kernel(job, xs, masks, flat, floor)
                if job.kl and passes:  # gold cells were left out of the kernel's divergence
                    extra = _kl_cells(gold[0][-1], gold[1][-1])
                    group = job.positives.groups[index] - b0 * types
                    stats[0].view(-1).index_add_(0, group, extra)
            else:
                stats = _forward_block_eager(job, xs, masks, flat, floor)
            if job.kl:
                kl[b0:b1] += stats[0]
            for p in passes:
                m, s = stats[1 + 2 * p], stats[2 + 2 * p]
                old_m, old_s = shift[p][b0:b1], total[p][b0:b1]
                new_m = torch.maximum(old_m, m)
                total[p][b0:b1] = old_s * torch.exp(old_m - new_m) + s * torch.exp(m - new_m)
                shift[p][b0:b1] = new_m
        outputs, saved = [], {}
        for p in range(2):
            if p not in passes:
                outputs.append(torch.zeros(batch, types, dtype=acc, device=device))
                continue
            neg = _shifted_log1p(shift[p], total[p])  # log(1 + sum_neg e^s), (B, C)
            x_pos = torch.cat(gold[p])
            pos = _positive_term(x_pos, job.positives.group, batch * types)
            saved[p] = (neg, x_pos, pos)
            outputs.append(neg + pos.view(batch, types))
        ctx.stats = saved
        outputs.append(kl)
        return tuple(outputs)

    @staticmethod
    def backward(ctx, g_ce0, g_ce1, g_kl):
        job: _Job = ctx.job
        layout = job.layout
        tensors = ctx.saved_tensors
        sources = _make_sources(job, tensors)
        acc = sources[0].acc
        per = 1 if job.kind == "dense" else 4
        needs = ctx.needs_input_grad[1:]
        source_needs = [tuple(needs[per * s : per * s + per]) for s in range(job.sources)]
        wants = [any(n) for n in source_needs]
        g_ce = [g_ce0, g_ce1]
        ce_passes = [
            p for p in range(job.sources) if job.ce[p] and g_ce[p] is not None and wants[p]
        ]
        do_kl = job.kl and g_kl is not None and any(wants)
        for s, src in enumerate(sources):
            src.start_backward(source_needs[s])
        plan = _BackwardPlan(job, ctx.stats, acc, wants, ce_passes, g_ce, g_kl if do_kl else None)
        computed = set(ce_passes) | ({0, 1} if do_kl else set())
        kernels = _kernels() is not None
        fill = _mask_fill(kernels, acc)
        for index, (b0, b1, r0, r1, c0) in enumerate(layout.blocks):
            xs = [
                src.cells(b0, b1, r0, r1, c0) if s in computed else None
                for s, src in enumerate(sources)
            ]
            masks = _block_masks(layout.invalid_block(b0, b1, r0, r1, c0), acc, fill)
            block = (index, b0, b1)
            if kernels:
                grads = _backward_block_kernel(plan, xs, masks, block)
            else:
                grads = _backward_block_eager(plan, xs, masks, block)
            for s, src in enumerate(sources):
                if grads[s] is not None:
                    src.backward_cells(b0, b1, r0, r1, c0, grads[s])
        out: list[Tensor | None] = [None]
        for s, src in enumerate(sources):
            contributes = (s in ce_passes) or do_kl
            out.extend(src.finish_backward() if wants[s] and contributes else [None] * per)
        return tuple(out)


def _forward_block_eager(job: _Job, xs: list[Tensor], masks: _BlockMasks, flat, floor: float):
    """``(kl, m0, s0, m1, s1)`` of one block (None where not asked for), using ``xs`` in place.

    ``masks.bias`` holds finfo.min (not -inf) on invalid cells: see :func:`_block_masks`.
    """
    stats: list[Tensor | None] = [None] * 5
    passes = [p for p in range(job.sources) if job.ce[p]]
    biased = masks.bias is not None and len(passes) == job.sources
    if biased:  # both sources need the bias for their maxima: add it first, the divergence
        for x in xs:  # then needs no mask (invalid cells agree exactly, see _block_masks)
            x.add_(masks.bias)
    if job.kl:
        x0, x1 = xs
        diff = torch.sigmoid(x0).sub_(torch.sigmoid(x1))
        if masks.keep is not None and not biased:
            diff.mul_(masks.keep)
        stats[0] = torch.einsum("bcij,bcij->bc", diff, x0 - x1)
    for p in passes:
        x = xs[p]  # used in place from here on
        if masks.bias is not None and not biased:
            x.add_(masks.bias)
        x.view(-1).index_fill_(0, flat, _NEG_INF)
        # (Bg, C): -inf or finfo.min where the block has no negatives (nan_to_num keeps the
        # latter: x - m is then 0 on invalid cells, which the mask below zeroes anyway).
        m = x.amax(dim=(-2, -1))
        x.sub_(m.nan_to_num(neginf=0.0)[..., None, None]).clamp_min_(floor).exp_()
        # The clamp gave excluded cells tiny values; the mask makes them exactly 0.
        if masks.keep is not None:
            x.mul_(masks.keep)
        x.view(-1).index_fill_(0, flat, 0.0)
        stats[1 + 2 * p], stats[2 + 2 * p] = m, x.sum(dim=(-2, -1))
    return stats


def _forward_block_kernel(job: _Job, xs: list[Tensor], masks: _BlockMasks, flat, floor: float):
    if flat is not None and flat.numel():
        for x in xs:  # gold cells: excluded like invalid ones (their values were gathered)
            x.view(-1).index_fill_(0, flat, _NEG_INF)
    x1 = xs[1] if job.sources > 1 else None
    kl, m0, s0, m1, s1 = _run_kernel("fwd", xs[0], x1, masks.bias, floor, any(job.ce))
    return [kl, m0, s0, m1, s1]


class _BackwardPlan:
    """Everything the backward blocks share: weights, log-normalisers, gold-cell gradients."""

    def __init__(self, job: _Job, stats: dict, acc, wants, ce_passes, g_ce, g_kl):
        self.job, self.wants, self.ce_passes = job, wants, ce_passes
        self.floor = _exp_floor(acc)
        self.neg = {p: stats[p][0] for p in ce_passes}
        self.gold_values = {p: list(stats[p][1].split(job.positives.sizes)) for p in stats}
        # Per pass: the incoming weight (also as a python float when uniform, as after "mean" or
        # "sum") and the gradient at each gold cell: -w e^(-s - log(1 + sum e^-s)).
        self.ce_w, self.ce_w_scalar, self.gold_grad = {}, {}, {}
        for p in ce_passes:
            _, x_pos, pos = stats[p]
            self.ce_w[p] = g_ce[p].to(acc)
            self.ce_w_scalar[p] = _uniform_positive(self.ce_w[p])
            group = job.positives.group
            wg = self.ce_w[p].reshape(-1)[group]
            gold = -wg * torch.exp(-x_pos - pos[group])
            self.gold_grad[p] = list(gold.split(job.positives.sizes))
        self.w_kl = None if g_kl is None else g_kl.to(acc)
        self.w_kl_scalar = None if g_kl is None else _uniform_positive(self.w_kl)


def _backward_block_eager(plan: _BackwardPlan, xs, masks: _BlockMasks, block) -> list:
    index, b0, b1 = block
    job, wants = plan.job, plan.wants
    grads: list[Tensor | None] = [None, None]
    kl_raw: list[Tensor | None] = [None, None]  # dD/dx0 and -dD/dx1, unweighted and unmasked
    merged = [False, False]  # the divergence's gradient is folded into the cross-entropy's
    if plan.w_kl is not None:
        # dD/ds = (sig(s) - sig(t)) + sig'(s) (s - t)
        # dD/dt = -(sig(s) - sig(t)) - sig'(t) (s - t)
        x0, x1 = xs
        a, b = torch.sigmoid(x0), torch.sigmoid(x1)
        diff = a - b
        d = x0 - x1
        for s, sig in ((0, a), (1, b)):
            if wants[s]:
                sig.addcmul_(sig, sig, value=-1.0)  # sig' = sig (1 - sig), in place
                kl_raw[s] = torch.addcmul(diff, sig, d, out=sig)
                # With uniform weights (as after "mean"/"sum") the divergence term is added to
                # the cross-entropy's before the shared weight-and-mask pass: fewer passes.
                merged[s] = (
                    s in plan.ce_passes
                    and plan.w_kl_scalar is not None
                    and plan.ce_w_scalar[s] is not None
                )
        if plan.w_kl_scalar is not None:
            w = plan.w_kl_scalar
            scales = [masks.keep * w if masks.keep is not None else w]
        else:
            scales = [plan.w_kl[b0:b1, :, None, None]]
            if masks.keep is not None:
                scales.append(masks.keep)
        for s in (0, 1):
            if kl_raw[s] is None or merged[s]:
                continue
            g = kl_raw[s]
            for scale in scales:
                g.mul_(scale)
            grads[s] = g if s == 0 else g.neg_()
    for p in plan.ce_passes:
        x = xs[p]  # used in place: the softmax weights of the negatives
        flat = job.positives.flat[index]
        gold = plan.gold_grad[p][index]
        # x - L <= 0 on every valid negative (L = log(1 + sum e^x)); clamping above at 0 keeps
        # invalid cells finite, so the 0 of the mask makes them exactly 0.
        x.sub_(plan.neg[p][b0:b1, :, None, None]).clamp_(plan.floor, 0.0).exp_()
        w = plan.ce_w_scalar[p]
        if merged[p]:
            sign = 1.0 if p == 0 else -1.0
            w_kl = sign * plan.w_kl_scalar
            gold = gold + w_kl * kl_raw[p].view(-1)[flat]
            x.add_(kl_raw[p], alpha=w_kl / w)
        if w is not None:
            x.mul_(w if masks.keep is None else masks.keep * w)
        else:
            x.mul_(plan.ce_w[p][b0:b1, :, None, None])
            if masks.keep is not None:
                x.mul_(masks.keep)
        x.view(-1).index_copy_(0, flat, gold)
        grads[p] = x if grads[p] is None else grads[p].add_(x)
    return grads


def _backward_block_kernel(plan: _BackwardPlan, xs, masks: _BlockMasks, block) -> list:
    index, b0, b1 = block
    job, wants = plan.job, plan.wants

    def weight(w: Tensor | None) -> Tensor | None:
        return None if w is None else w[b0:b1, :, None, None]

    xs = list(xs) + [None] * (2 - len(xs))
    wants = list(wants) + [False] * (2 - len(wants))
    ce = [p in plan.ce_passes for p in range(2)]
    w_kl = weight(plan.w_kl)
    want = [wants[s] and xs[s] is not None and (ce[s] or w_kl is not None) for s in range(2)]
    grads = list(
        _run_kernel(
            "bwd",
            xs[0],
            xs[1],
            masks.bias,
            weight(plan.neg.get(0)),
            weight(plan.neg.get(1)),
            weight(plan.ce_w.get(0)),
            weight(plan.ce_w.get(1)),
            w_kl,
            want[0],
            want[1],
            plan.floor,
        )
    )
    if job.positives is None or not job.positives.flat[index].numel():
        return grads
    # Gold cells: the exact gradient (their cross-entropy term plus the divergence).
    flat = job.positives.flat[index]
    group = job.positives.groups[index]
    kl_grads = None
    if w_kl is not None:
        g0p, g1p = plan.gold_values[0][index], plan.gold_values[1][index]
        kl_grads = _kl_cell_grads(g0p, g1p)
        w = plan.w_kl.reshape(-1)[group]
    for s, g in enumerate(grads):
        if g is None:
            continue
        value = torch.zeros(flat.shape, dtype=g.dtype, device=g.device)
        if ce[s]:
            value += plan.gold_grad[s][index]
        if kl_grads is not None:
            value += w * kl_grads[s]
        g.view(-1).index_copy_(0, flat, value)
    return grads


def _dense_layout(
    logits: Tensor, mask: Tensor | None, max_width: int | None, types: int | None = None
) -> _Layout:
    """The layout of materialised logits (B, C, L, L or W) under a loss's ``mask`` argument."""
    _check_width(max_width)
    batch, num_types, rows, cols = logits.shape
    shape = (batch, num_types, rows, cols)
    if max_width is not None and cols != max_width:
        raise ValueError(f"band logits must be (B, C, L, {max_width}), got {tuple(logits.shape)}")
    if mask is None:
        return _Layout("all", shape, logits.device)
    if mask.dtype != torch.bool:
        raise TypeError(f"masks must be bool, got {mask.dtype}")
    if mask.dim() == 2:  # an attention mask (B, L)
        if max_width is not None:
            return _Layout("band", shape, logits.device, attention_mask=mask, width=max_width)
        if rows != cols:
            raise ValueError("a (B, L) mask needs (B, C, L, L) logits or max_width")
        return _Layout("tri", shape, logits.device, attention_mask=mask)
    return _Layout("mask", shape, logits.device, mask=mask)


def _gold_cells(spans: Tensor, max_width: int | None) -> Tensor:
    """Gold spans ``[b, c, i, j]`` in cell coordinates of the layout."""
    spans = spans.long().reshape(-1, 4)
    return spans if max_width is None else spans_to_band(spans, max_width)


# ----------------------------------------------------------------------------------------- losses


def multilabel_categorical_crossentropy(
    logits: Tensor,
    targets: Tensor,
    mask: Tensor | None = None,
    reduction: str = "mean",
    *,
    max_width: int | None = None,
) -> Tensor:
    """Multi-label categorical cross-entropy with dense 0/1 targets.

    Per (example, type): ``log(1 + sum_neg e^s) + log(1 + sum_pos e^-s)`` over valid cells.
    Computed as the sparse loss on ``targets.nonzero()``.

    Args:
        logits: (B, C, L, L), or band (B, C, L, W) with ``max_width``.
        targets: 0/1 or bool, the same layout and shape as ``logits``.
        mask: bool, (B, L) attention mask or broadcastable to ``logits``; None = all valid.
        reduction: "none" -> (B, C), "mean", "sum".
        max_width: W when ``logits`` (and ``targets``) are in the band layout.
    """
    _check_reduction(reduction)
    layout = _dense_layout(logits, mask, max_width)
    cells = targets.bool().expand(logits.shape).nonzero()
    job = _Job(layout, "dense", 1, _Positives(layout, cells), (True, False), False)
    return _reduce(_SpanLosses.apply(job, logits)[0], reduction)


def sparse_multilabel_categorical_crossentropy(
    logits: Tensor,
    spans: Tensor,
    mask: Tensor | None = None,
    reduction: str = "mean",
    *,
    max_width: int | None = None,
) -> Tensor:
    """Multi-label categorical cross-entropy with sparse gold spans.

    Same value and gradient as :func:`multilabel_categorical_crossentropy` with the equivalent
    dense targets, but no (B, C, L, L) target tensor, masked copy or intermediate is built: the
    logits are read in cache-sized row blocks, positives are excluded from the negative term by
    ``-inf`` in the block (subtracting their mass instead would cancel catastrophically once the
    model is confident), and backward recomputes the block. Saves only ``logits``.

    Args:
        logits: (B, C, L, L), or band (B, C, L, W) with ``max_width``.
        spans: (N, 4) integer rows ``[b, c, i, j]``; duplicates count once; spans on invalid
            cells (or not shorter than ``max_width``) are ignored, as the dense loss ignores them.
        mask: bool, (B, L) or broadcastable to ``logits``; None = all valid.
        reduction: "none" -> (B, C), "mean", "sum".
        max_width: W when ``logits`` are in the band layout.
    """
    _check_reduction(reduction)
    layout = _dense_layout(logits, mask, max_width)
    positives = _Positives(layout, _gold_cells(spans, max_width))
    job = _Job(layout, "dense", 1, positives, (True, False), False)
    return _reduce(_SpanLosses.apply(job, logits)[0], reduction)


# ------------------------------------------------------------------------------------ divergences


def global_pointer_kl(
    s: Tensor,
    t: Tensor,
    mask: Tensor | None = None,
    reduction: str = "mean",
    *,
    max_width: int | None = None,
) -> Tensor:
    """The GlobalPointer divergence ``D(s, t) = sum_valid (sigmoid(s) - sigmoid(t)) (s - t)``.

    Equal to the sum over cells of the symmetric KL of the binary distributions
    ``[sigmoid(x), 1 - sigmoid(x)]``; symmetric, non-negative, zero iff ``s == t`` on valid cells.
    Blocked like the cross-entropy: saves only ``s`` and ``t``, recomputes in backward.

    Args:
        s, t: (B, C, L, L) logits, or band (B, C, L, W) with ``max_width``.
        mask: bool, (B, L) or broadcastable to ``s``; None = all valid (the finite fill of
            :func:`global_pointer_logits` then contributes exactly 0; ``-inf`` cells need a mask).
        reduction: "none" -> (B, C), "mean", "sum".
        max_width: W when ``s`` and ``t`` are in the band layout.
    """
    _check_reduction(reduction)
    if s.shape != t.shape:
        raise ValueError(f"s and t differ in shape: {tuple(s.shape)} vs {tuple(t.shape)}")
    layout = _dense_layout(s, mask, max_width)
    job = _Job(layout, "dense", 2, None, (False, False), True)
    return _reduce(_SpanLosses.apply(job, s, t)[2], reduction)


def softmax_kl(
    s: Tensor,
    t: Tensor,
    mask: Tensor | None = None,
    reduction: str = "mean",
    *,
    max_width: int | None = None,
) -> Tensor:
    """Symmetric softmax KL over the valid cells of each (example, type): the baseline.

    ``KL(p || q) + KL(q || p)`` with ``p = softmax(s)``, ``q = softmax(t)`` taken over the valid
    cells of each (example, type), computed as ``<p - q, s - t>``, to which it is identical.
    An (example, type) without valid cells contributes 0.

    Args:
        s, t: (B, C, L, L) logits, or band (B, C, L, W) with ``max_width``.
        mask: bool, (B, L) or broadcastable to (B, C, L, L); None = all valid.
        reduction: "none" -> (B, C), "mean", "sum".
    """
    s, t = _accumulation_dtype(s), _accumulation_dtype(t)
    valid = _valid_mask(mask, s, max_width)
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


# ----------------------------------------------------------------------------- fused from factors


def _factors_layout(f: SpanFactors) -> _Layout:
    batch, _, length, _ = f.q.shape
    shape = (batch, f.num_types, length, length if f.max_width is None else f.max_width)
    if f.max_width is None:
        return _Layout("tri", shape, f.q.device, attention_mask=f.attention_mask)
    return _Layout("band", shape, f.q.device, attention_mask=f.attention_mask, width=f.max_width)


def _factor_tensors(f: SpanFactors) -> tuple:
    return (f.q, f.k, f.start_bias, f.end_bias)


def _check_pair(f: SpanFactors, g: SpanFactors) -> None:
    if f.q.shape[0] != g.q.shape[0] or f.q.shape[2] != g.q.shape[2]:
        raise ValueError("the two factor sets differ in batch size or length")
    if f.num_types != g.num_types or f.max_width != g.max_width:
        raise ValueError("the two factor sets differ in types or max_width")


def fused_crossentropy(f: SpanFactors, spans: Tensor, reduction: str = "mean") -> Tensor:
    """:func:`sparse_multilabel_categorical_crossentropy` of ``factors_to_logits(f)``, fused.

    The logits are computed block by block over the valid triangle (or band) only and recomputed
    in backward; memory is O(B * C * L * D) plus one cache-sized block.

    Args:
        f: the factors of a head (:meth:`GlobalPointer.factors`).
        spans: (N, 4) rows ``[b, c, i, j]`` (span coordinates, also with ``max_width``).
        reduction: "none" -> (B, C), "mean", "sum".
    """
    _check_reduction(reduction)
    layout = _factors_layout(f)
    positives = _Positives(layout, _gold_cells(spans, f.max_width))
    job = _Job(layout, "factors", 1, positives, (True, False), False)
    return _reduce(_SpanLosses.apply(job, *_factor_tensors(f))[0], reduction)


def fused_global_pointer_kl(f: SpanFactors, g: SpanFactors, reduction: str = "mean") -> Tensor:
    """:func:`global_pointer_kl` of two factored logits over ``f``'s valid cells, fused.

    For VAT pass ``f.detach()`` as the clean side: no gradient work is done for it.
    """
    _check_reduction(reduction)
    _check_pair(f, g)
    job = _Job(_factors_layout(f), "factors", 2, None, (False, False), True)
    return _reduce(_SpanLosses.apply(job, *_factor_tensors(f), *_factor_tensors(g))[2], reduction)


def fused_rdrop_losses(
    f: SpanFactors, g: SpanFactors, spans: Tensor, reduction: str = "mean"
) -> tuple[Tensor, Tensor, Tensor]:
    """Both cross-entropies and the divergence of an R-Drop pair in one blocked sweep.

    Returns ``(ce_f, ce_g, kl)``, each reduced as asked, equal to
    ``fused_crossentropy(f, spans)``, ``fused_crossentropy(g, spans)`` and
    ``fused_global_pointer_kl(f, g)`` at the cost of computing each block once. The R-Drop loss
    is ``(ce_f + ce_g) / 2 + alpha * kl``.
    """
    _check_reduction(reduction)
    _check_pair(f, g)
    layout = _factors_layout(f)
    positives = _Positives(layout, _gold_cells(spans, f.max_width))
    job = _Job(layout, "factors", 2, positives, (True, True), True)
    ce_f, ce_g, kl = _SpanLosses.apply(job, *_factor_tensors(f), *_factor_tensors(g))
    return _reduce(ce_f, reduction), _reduce(ce_g, reduction), _reduce(kl, reduction)


class _BandScores(torch.autograd.Function):
    """``out[b, c, i, w] = q[b, c, i] . k[b, c, i + w]`` (zero past the end): (B, C, L, W)."""

    @staticmethod
    def forward(ctx, width: int, q: Tensor, k: Tensor):  # noqa: D401 - autograd signature
        ctx.width = width
        ctx.save_for_backward(q, k)
        batch, types, length, _ = q.shape
        layout = _Layout("band", (batch, types, length, width), q.device, width=width)
        src = _FactorSource(layout, q, k, None, None)
        out = torch.empty(batch, types, length, width, dtype=src.acc, device=q.device)
        for b0, b1, r0, r1, c0 in layout.blocks:
            out[b0:b1, :, r0:r1] = src.cells(b0, b1, r0, r1, c0)
        return out.to(q.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):
        q, k = ctx.saved_tensors
        batch, types, length, _ = q.shape
        width = ctx.width
        layout = _Layout("band", (batch, types, length, width), q.device, width=width)
        src = _FactorSource(layout, q, k, None, None)
        src.start_backward((ctx.needs_input_grad[1], ctx.needs_input_grad[2], False, False))
        for b0, b1, r0, r1, c0 in layout.blocks:
            src.load(b0, b1, r0, r1, c0)
            src.backward_cells(b0, b1, r0, r1, c0, grad[b0:b1, :, r0:r1].to(src.acc))
        dq, dk, _, _ = src.finish_backward()
        return None, dq, dk
