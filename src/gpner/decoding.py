"""GlobalPointer logits -> entity spans. Pure functions; nothing here knows about training.

Shape letters: B batch, C entity types, L tokens.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from gpner.data.alignment import token_span_to_chars
from gpner.data.spans import Span
from gpner.functional import select_cells

if TYPE_CHECKING:
    from gpner.data.batching import Feature

__all__ = ["decode", "greedy_flat_chars", "spans_from_features"]

TokenSpan = tuple[int, int, int, float]  # (c, i, j, score)


def decode(
    logits: Tensor,
    threshold: float = 0.0,
    flat: bool = False,
    attention_mask: Tensor | None = None,
    *,
    max_width: int | None = None,
) -> list[list[TokenSpan]]:
    """The predicted ``(c, i, j, score)`` of each batch item: every cell with ``score > threshold``.

    ``logits``: (B, C, L, L), ``logits[b, c, i, j]`` scores tokens ``i..j`` (inclusive) as type
    ``c``; or, with ``max_width=W``, the band layout (B, C, L, W) of a head with a maximum span
    width, ``logits[b, c, i, w]`` scoring tokens ``i..i+w``. Only cells with ``i <= j`` (and
    ``j < L``) count, and with ``attention_mask`` (B, L) only cells whose tokens are both real
    (True). NaN never passes the threshold. Selection is one vectorised ``torch.nonzero``; Python
    only touches the selected cells.

    Nested (default): every selected cell, sorted by ``(i, j, c)``. ``flat=True``: greedy by
    descending score (ties by position), a cell is kept when it shares no token with a kept one,
    so at most one type per token span and no overlaps; sorted by ``(i, j, c)``.
    """
    if logits.dim() != 4:
        raise ValueError(f"logits must be (B, C, L, L) or (B, C, L, W), got {tuple(logits.shape)}")
    B, _, L, _ = logits.shape
    if attention_mask is not None and tuple(attention_mask.shape) != (B, L):
        raise ValueError(
            f"attention_mask must be (B, L) = {(B, L)}, got {tuple(attention_mask.shape)}"
        )
    if attention_mask is not None:
        attention_mask = attention_mask.to(device=logits.device, dtype=torch.bool)
    # index: (K, 4) rows [b, c, i, j] in span coordinates, ordered by (b, i, j, c); scores (K,)
    index, scores = select_cells(logits, threshold, attention_mask, max_width=max_width)
    counts = torch.bincount(index[:, 0], minlength=B).tolist() if len(index) else [0] * B
    rows = index[:, 1:].tolist()
    values = scores.tolist()
    out: list[list[TokenSpan]] = []
    pos = 0
    for b in range(B):
        n = counts[b]
        spans = [(c, i, j, s) for (c, i, j), s in zip(rows[pos : pos + n], values[pos : pos + n])]
        pos += n
        out.append(_greedy_flat(spans, L) if flat else spans)
    return out


def _greedy_flat(spans: list[TokenSpan], length: int) -> list[TokenSpan]:
    """Highest-scoring non-overlapping token spans, sorted by ``(i, j, c)``."""
    taken = [False] * length
    kept = []
    for span in sorted(spans, key=lambda t: (-t[3], t[1], t[2], t[0])):
        _, i, j, _ = span
        if not any(taken[i : j + 1]):
            taken[i : j + 1] = [True] * (j - i + 1)
            kept.append(span)
    kept.sort(key=lambda t: (t[1], t[2], t[0]))
    return kept


def spans_from_features(
    features: Sequence[Feature],
    decoded: Sequence[Sequence[TokenSpan]],
    id2label: Mapping[int, str] | Sequence[str],
    flat: bool = False,
) -> dict[int, list[tuple[Span, float]]]:
    """Map decoded token spans back to character spans of the original texts.

    ``decoded[k]`` holds the ``(c, i, j, score)`` of ``features[k]``, in input-id coordinates
    (as :func:`decode` returns them). Spans are mapped with the feature's offsets to exact char
    offsets; cells touching a special token or padding are ignored. Windows of one example are
    stitched: a char span found by several windows appears once, with its highest score.
    ``flat=True`` then keeps the highest-scoring non-overlapping char spans (windows decoded
    flat separately can still overlap each other).

    Returns ``{example_index: [(Span, score), ...]}`` sorted by span, with an entry (possibly
    empty) for every example that has a feature.
    """
    if len(features) != len(decoded):
        raise ValueError(f"{len(features)} features but {len(decoded)} decoded items")
    best: dict[int, dict[Span, float]] = {}
    for feature, items in zip(features, decoded):
        found = best.setdefault(feature.example_index, {})
        offsets = feature.offsets
        for c, i, j, score in items:
            try:
                start, end = token_span_to_chars(i, j, offsets)
            except ValueError:  # a special token or padding: not text
                continue
            if end <= start:
                continue
            span = Span(start, end, id2label[c])
            if span not in found or score > found[span]:
                found[span] = score
    result: dict[int, list[tuple[Span, float]]] = {}
    for index, found in best.items():
        spans = sorted(found.items())
        if flat:
            spans = greedy_flat_chars(spans)
        result[index] = spans
    return result


def greedy_flat_chars(spans: list[tuple[Span, float]]) -> list[tuple[Span, float]]:
    """The highest-scoring character spans that share no character, greedily; sorted by span."""
    kept: list[tuple[Span, float]] = []
    for span, score in sorted(spans, key=lambda t: (-t[1], t[0])):
        if not any(span.overlaps(k) for k, _ in kept):
            kept.append((span, score))
    kept.sort()
    return kept
