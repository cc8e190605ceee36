"""GlobalPointer span logits, and the factored form (:class:`SpanFactors`) training consumes.

GlobalPointer: ``s[b, c, i, j] = q[b, c, i] . k[b, c, j] / sqrt(D)`` with RoPE-rotated q and k.
Efficient GlobalPointer: one shared ``q . k`` plus per-type start and end biases. Invalid cells
hold ``torch.finfo(dtype).min`` (see :mod:`gpner.functional.layout` for validity and layouts).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ._blocked.sources import BandScores
from .layout import check_width, fill_invalid_
from .rope import ProjectedPair, rope

__all__ = [
    "SpanFactors",
    "global_pointer_factors",
    "efficient_global_pointer_factors",
    "projected_factors",
    "factors_to_logits",
    "global_pointer_logits",
    "efficient_global_pointer_logits",
]


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

    @property
    def tensors(self) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        """``(q, k, start_bias, end_bias)``: what the blocked engine reads."""
        return (self.q, self.k, self.start_bias, self.end_bias)

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
    check_width(max_width)
    batch, length, width = projection.shape
    am = None if attention_mask is None else attention_mask.bool()
    if start_bias is None:
        dim = width // (2 * num_types)
        base = projection.view(batch, length, num_types, 2, dim)
        q, k = ProjectedPair.apply(base, _split_global_pointer, use_rope, dim**-0.5)
        return SpanFactors(q, k, None, None, am, max_width)
    dim = width // 2
    base = projection.view(batch, length, dim, 2)
    q, k = ProjectedPair.apply(base, _split_efficient, use_rope, dim**-0.5)
    return SpanFactors(q[:, None], k[:, None], start_bias, end_bias, am, max_width)


def _rotated(q: Tensor, k: Tensor, use_rope: bool) -> tuple[Tensor, Tensor]:
    # 1/sqrt(D) folded into q's rotation: cheaper than scaling the (L, L) logits.
    scale = q.shape[-1] ** -0.5
    return (rope(q, scale=scale), rope(k)) if use_rope else (q * scale, k)


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
    check_width(max_width)
    q, k = _rotated(q, k, use_rope)
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
    check_width(max_width)
    q, k = _rotated(q, k, use_rope)
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
        return fill_invalid_(logits, f.attention_mask)
    width = f.max_width
    logits = BandScores.apply(width, f.q, f.k)  # (B, C or 1, L, W)
    if f.start_bias is not None:
        end = torch.nn.functional.pad(f.end_bias, (0, width - 1)).unfold(-1, width, 1)
        logits = logits + f.start_bias[..., :, None]
        logits += end  # end[b, c, i, w] = end_bias[b, c, i + w]
    elif logits.shape[1] != f.num_types:
        logits = logits.expand(-1, f.num_types, -1, -1).contiguous()
    return fill_invalid_(logits, f.attention_mask, width)


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
