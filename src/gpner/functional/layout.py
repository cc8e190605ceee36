"""Which (start, end) cells are valid, and the two layouts that store them.

The *full* layout stores span ``(i, j)`` at ``x[b, c, i, j]``: (B, C, L, L). With a maximum span
width ``W`` the *band* layout stores only ``0 <= j - i < W``: ``x[b, c, i, w]`` is span
``(i, i + w)``, (B, C, L, W); cells with ``i + w >= L`` are invalid. A cell is *valid* when both
of its tokens are real and ``i <= j`` (and ``j - i < W``). Gold spans are always rows
``[b, c, i, j]``.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "invalid_cells",
    "span_mask",
    "band_mask",
    "dense_to_band",
    "band_to_dense",
    "spans_to_band",
    "band_to_spans",
    "select_cells",
]


def check_width(max_width: int | None) -> None:
    if max_width is not None and (not isinstance(max_width, int) or max_width < 1):
        raise ValueError(f"max_width must be a positive int or None, got {max_width!r}")


def invalid_cells(
    attention_mask: Tensor | None,
    rows: tuple[int, int],
    cols: tuple[int, int],
    device: torch.device | None = None,
) -> Tensor:
    """The invalid cells of the full layout in rows ``r0:r1`` and columns ``c0:c1``: ``j < i``,
    or a padding token. The one definition behind :func:`span_mask`, :func:`fill_invalid_` and
    the blocked engine's triangular blocks.

    Args:
        attention_mask: (B, L), bool or 0/1; None = every token real.
        rows, cols: ``(r0, r1)`` and ``(c0, c1)``, half-open.
        device: where to build the result when ``attention_mask`` is None.
    Returns:
        (B or 1, 1, r1 - r0, c1 - c0) bool, True on invalid cells.
    """
    (r0, r1), (c0, c1) = rows, cols
    if attention_mask is not None:
        device = attention_mask.device
    i = torch.arange(r0, r1, device=device)
    j = torch.arange(c0, c1, device=device)
    lower = j[None, :] < i[:, None]  # (r, c)
    if attention_mask is None:
        return lower[None, None]
    am = attention_mask.bool()
    return lower | ~(am[:, None, r0:r1, None] & am[:, None, None, c0:c1])


def span_mask(attention_mask: Tensor, max_width: int | None = None) -> Tensor:
    """Valid (start, end) cells of the full layout: both tokens real, ``i <= j`` (``< i + W``).

    Args:
        attention_mask: (B, L), bool or 0/1.
        max_width: also require ``j - i < max_width``; None = any width.
    Returns:
        (B, 1, L, L) bool.
    """
    check_width(max_width)
    length = attention_mask.shape[-1]
    valid = ~invalid_cells(attention_mask, (0, length), (0, length))
    if max_width is not None:
        near = torch.ones(length, length, dtype=torch.bool, device=valid.device)
        valid &= near.tril_(max_width - 1)
    return valid


def band_mask(attention_mask: Tensor, max_width: int) -> Tensor:
    """Valid cells of the band layout: ``(i, w)`` with tokens ``i`` and ``i + w < L`` real.

    Args:
        attention_mask: (B, L), bool or 0/1.
        max_width: W.
    Returns:
        (B, 1, L, W) bool.
    """
    check_width(max_width)
    am = attention_mask.bool()
    padded = torch.nn.functional.pad(am, (0, max_width - 1))  # (B, L + W - 1), False beyond L
    ends = padded.unfold(-1, max_width, 1)  # (B, L, W): ends[b, i, w] = am[b, i + w]
    return (am[..., None] & ends)[:, None]


def valid_mask(mask: Tensor | None, max_width: int | None = None) -> Tensor | None:
    """A loss's ``mask`` argument as a bool mask of cells, or None for "all valid".

    ``mask`` is a (B, L) attention mask (expanded to :func:`span_mask` or :func:`band_mask`) or
    already a bool mask broadcastable to the logits.
    """
    if mask is None:
        return None
    if mask.dtype != torch.bool:
        raise TypeError(f"masks must be bool, got {mask.dtype}")
    if mask.dim() == 2:  # an attention mask (B, L)
        mask = span_mask(mask) if max_width is None else band_mask(mask, max_width)
    return mask


def band_view(x: Tensor, width: int) -> Tensor:
    """The band of a contiguous (..., r, r + W - 1) block: ``view[..., i, w] = x[..., i, i+w]``."""
    rows, cols = x.shape[-2], x.shape[-1]
    lead = x.shape[:-2]
    strides = list(x.stride()[:-2]) + [cols + 1, 1]
    return x.as_strided((*lead, rows, width), strides, x.storage_offset())


def _lowest(x: Tensor, fill: float | None) -> float:
    if fill is not None:
        return fill
    return False if x.dtype == torch.bool else torch.finfo(x.dtype).min


def dense_to_band(x: Tensor, max_width: int, fill: float | None = None) -> Tensor:
    """Full layout (..., L, L) -> band layout (..., L, W); cells past the end get ``fill``.

    ``fill`` defaults to ``torch.finfo(x.dtype).min`` (0 for bool).
    """
    check_width(max_width)
    length = x.shape[-1]
    padded = x.new_full((*x.shape[:-1], length + max_width - 1), _lowest(x, fill))
    padded[..., :length] = x
    return band_view(padded, max_width).clone()


def band_to_dense(x: Tensor, fill: float | None = None) -> Tensor:
    """Band layout (..., L, W) -> full layout (..., L, L); cells outside the band get ``fill``.

    ``fill`` defaults to ``torch.finfo(x.dtype).min`` (False for bool). Costs O(L^2) memory: for
    decoding long texts prefer :func:`select_cells`, which reads the band directly.
    """
    length, width = x.shape[-2], x.shape[-1]
    padded = x.new_full((*x.shape[:-1], length + width - 1), _lowest(x, fill))
    band_view(padded, width).copy_(x)
    return padded[..., :length].contiguous()


def spans_to_band(spans: Tensor, max_width: int) -> Tensor:
    """Rows ``[b, c, i, j]`` -> band rows ``[b, c, i, j - i]``; spans not shorter than W dropped.

    Args:
        spans: (N, 4) integer.
    Returns:
        (N', 4) long, N' <= N: only the spans with ``0 <= j - i < max_width``.
    """
    check_width(max_width)
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


def gold_cells(spans: Tensor, max_width: int | None) -> Tensor:
    """Gold spans ``[b, c, i, j]`` in cell coordinates of the layout (band rows with a width)."""
    spans = spans.long().reshape(-1, 4)
    return spans if max_width is None else spans_to_band(spans, max_width)


def fill_invalid_(
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
    invalid = invalid_cells(attention_mask, (0, length), (0, length), logits.device)
    return logits.masked_fill_(invalid, low)


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
    check_width(max_width)
    logits = logits.detach()
    batch, _, length, cols = logits.shape
    am = attention_mask if attention_mask is not None else logits.new_ones(batch, length)
    if max_width is None:
        if cols != length:
            raise ValueError(f"full-layout logits must be (B, C, L, L), got {tuple(logits.shape)}")
        valid = span_mask(am.bool())
    else:
        if cols != max_width:
            raise ValueError(f"band logits must be (B, C, L, {max_width}), got {logits.shape}")
        valid = band_mask(am.bool(), max_width)
    keep = (logits > threshold) & valid  # (B, C, L, L or W)
    keep = keep.permute(0, 2, 3, 1)  # (B, L, L or W, C): nonzero order is (b, i, j, c)
    rows = torch.nonzero(keep)  # (K, 4) [b, i, j or w, c]
    scores = logits.permute(0, 2, 3, 1)[keep].float()
    index = rows[:, [0, 3, 1, 2]]
    if max_width is not None:
        index[:, 3] += index[:, 2]
    return index, scores
