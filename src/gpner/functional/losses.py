"""The public losses and divergences, on logits (drop-in) or on factors (fused).

Multi-label categorical cross-entropy, per (example, type) over the valid cells:

    log(1 + sum_neg e^s) + log(1 + sum_pos e^-s)

The GlobalPointer divergence ``D(s, t) = sum_valid (sigmoid(s) - sigmoid(t)) (s - t)``: see
:func:`gpner.functional.cells.gp_kl_cell` for its per-cell value and gradient and the
derivation. Softmax KL over each (example, type)'s flattened cells is the baseline.

All but :func:`softmax_kl` run on the blocked engine (:mod:`gpner.functional._blocked`): they
never build a masked copy of the logits, save only their inputs and recompute in backward. The
fused forms take :class:`~gpner.functional.SpanFactors` and never build a (B, C, L, L) tensor.
Their readable definitions, used by the tests as the oracle, are in
:mod:`gpner.functional.reference`. Every function takes ``reduction`` as in
:mod:`gpner.functional.reduction`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._blocked import BlockLayout, GoldCells, Inputs, Job, SpanLosses
from .layout import gold_cells, valid_mask
from .logits import SpanFactors
from .reduction import check_pair, check_reduction, reduce, to_accumulation

__all__ = [
    "multilabel_categorical_crossentropy",
    "sparse_multilabel_categorical_crossentropy",
    "global_pointer_kl",
    "softmax_kl",
    "fused_crossentropy",
    "fused_global_pointer_kl",
    "fused_rdrop_losses",
]


# ----------------------------------------------------------------------------- on logits


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
    check_reduction(reduction)
    layout = BlockLayout.for_logits(logits, mask, max_width)
    cells = targets.bool().expand(logits.shape).nonzero()
    job = Job.cross_entropy(layout, Inputs.DENSE, GoldCells(layout, cells))
    return reduce(SpanLosses.apply(job, logits)[0], reduction)


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
    check_reduction(reduction)
    layout = BlockLayout.for_logits(logits, mask, max_width)
    positives = GoldCells(layout, gold_cells(spans, max_width))
    job = Job.cross_entropy(layout, Inputs.DENSE, positives)
    return reduce(SpanLosses.apply(job, logits)[0], reduction)


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
    ``[sigmoid(x), 1 - sigmoid(x)]`` (derivation: :func:`~gpner.functional.gp_kl_cell`);
    symmetric, non-negative, zero iff ``s == t`` on valid cells. Blocked like the
    cross-entropy: saves only ``s`` and ``t``, recomputes in backward.

    Args:
        s, t: (B, C, L, L) logits, or band (B, C, L, W) with ``max_width``.
        mask: bool, (B, L) or broadcastable to ``s``; None = all valid (the finite fill of
            :func:`global_pointer_logits` then contributes exactly 0; ``-inf`` cells need a mask).
        reduction: "none" -> (B, C), "mean", "sum".
        max_width: W when ``s`` and ``t`` are in the band layout.
    """
    check_pair(reduction, s, t)
    layout = BlockLayout.for_logits(s, mask, max_width)
    job = Job.divergence(layout, Inputs.DENSE)
    return reduce(SpanLosses.apply(job, s, t)[2], reduction)


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
    check_reduction(reduction)
    return reduce(_symmetric_softmax_kl(s, t, mask, max_width, start_dim=-2), reduction)


def softmax_kl_all(
    s: Tensor,
    t: Tensor,
    mask: Tensor | None = None,
    reduction: str = "mean",
    *,
    max_width: int | None = None,
) -> Tensor:
    """Symmetric softmax KL with one distribution per example over the valid cells of all types.

    The second reading of "a softmax directly on GlobalPointer's logits": where
    :func:`softmax_kl` normalises each (example, type) separately, here ``p = softmax(s)`` and
    ``q = softmax(t)`` run over every valid (c, i, j) cell of an example at once, so the types
    compete for probability mass. ``KL(p || q) + KL(q || p)`` is computed as ``<p - q, s - t>``,
    to which it is identical. An example without valid cells contributes 0.

    Args:
        s, t: (B, C, L, L) logits, or band (B, C, L, W) with ``max_width``.
        mask: bool, (B, L) or broadcastable to (B, C, L, L); None = all valid.
        reduction: "none" -> (B,) (one value per example: there is no per-type term), "mean"
            (over examples), "sum".
    """
    check_reduction(reduction)
    return reduce(_symmetric_softmax_kl(s, t, mask, max_width, start_dim=1), reduction)


def _symmetric_softmax_kl(s, t, mask, max_width, start_dim: int) -> Tensor:
    """``<p - q, s - t>`` with ``p``, ``q`` the softmaxes over the valid cells of dims
    ``start_dim:`` (-2: per (example, type), (B, C); 1: per example, (B,))."""
    s, t = to_accumulation(s), to_accumulation(t)
    valid = valid_mask(mask, max_width)
    if valid is not None:
        # The lowest finite value gets probability exactly 0 next to any real logit, and
        # min - min = 0, so masked cells add nothing and no NaN can arise.
        low = torch.finfo(s.dtype).min
        s = s.masked_fill(~valid, low)
        t = t.masked_fill(~valid, low)
    p = torch.softmax(s.flatten(start_dim), dim=-1)
    q = torch.softmax(t.flatten(start_dim), dim=-1)
    return ((p - q) * (s - t).flatten(start_dim)).sum(-1)


# ----------------------------------------------------------------------------- fused from factors


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
    check_reduction(reduction)
    layout = BlockLayout.for_factors(f)
    positives = GoldCells(layout, gold_cells(spans, f.max_width))
    job = Job.cross_entropy(layout, Inputs.FACTORS, positives)
    return reduce(SpanLosses.apply(job, *f.tensors)[0], reduction)


def fused_global_pointer_kl(f: SpanFactors, g: SpanFactors, reduction: str = "mean") -> Tensor:
    """:func:`global_pointer_kl` of two factored logits over ``f``'s valid cells, fused.

    For VAT pass ``f.detach()`` as the clean side: no gradient work is done for it.
    """
    check_reduction(reduction)
    _check_pair(f, g)
    job = Job.divergence(BlockLayout.for_factors(f), Inputs.FACTORS)
    return reduce(SpanLosses.apply(job, *f.tensors, *g.tensors)[2], reduction)


def fused_rdrop_losses(
    f: SpanFactors, g: SpanFactors, spans: Tensor, reduction: str = "mean"
) -> tuple[Tensor, Tensor, Tensor]:
    """Both cross-entropies and the divergence of an R-Drop pair in one blocked sweep.

    Returns ``(ce_f, ce_g, kl)``, each reduced as asked, equal to
    ``fused_crossentropy(f, spans)``, ``fused_crossentropy(g, spans)`` and
    ``fused_global_pointer_kl(f, g)`` at the cost of computing each block once. The R-Drop loss
    is ``(ce_f + ce_g) / 2 + alpha * kl``.
    """
    check_reduction(reduction)
    _check_pair(f, g)
    layout = BlockLayout.for_factors(f)
    positives = GoldCells(layout, gold_cells(spans, f.max_width))
    job = Job.rdrop(layout, Inputs.FACTORS, positives)
    ce_f, ce_g, kl = SpanLosses.apply(job, *f.tensors, *g.tensors)
    return reduce(ce_f, reduction), reduce(ce_g, reduction), reduce(kl, reduction)
