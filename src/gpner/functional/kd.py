"""Knowledge-distillation terms: a student's span logits against a teacher's.

Shape letters: B batch, C entity types, L tokens, W maximum span width.

A KD term compares the student's logits ``s`` with the teacher's ``t`` (a constant) on the cells
both models score, in the same layout: the GlobalPointer divergence ``D`` and the symmetric
softmax KL of :mod:`.losses` (the same functions R-Drop and VAT use, not copies), or the squared
error :func:`squared_error`. :func:`distillation_term` applies a temperature ``T`` to both logit
sets and scales by ``T^2``:

    T^2 * KD(s / T, t / T)

Why ``T^2``: the gradient of ``KD(s / T, t / T)`` with respect to ``s`` is ``1 / T`` times KD's
gradient at the tempered logits, and a high temperature puts those in the linear regime where
that gradient is itself ``O((s - t) / T)``: ``O(1 / T^2)`` in all, which ``T^2`` cancels, so the
term keeps its scale against the cross-entropy as ``T`` changes (Hinton et al.'s argument for
the softmax KL). For ``D``, ``sigmoid(x / T) ~ 1/2 + x / (4T)`` gives
``T^2 * D(s / T, t / T) -> sum (s - t)^2 / 4`` as ``T -> inf``: a quarter of the squared error,
the logit matching Hinton et al. reach from the softmax KL in the same limit. For the squared
error ``T^2 * SE(s / T, t / T) = SE(s, t)``: the temperature changes nothing.

The teacher floor: a teacher cache that keeps only cells above ``floor`` knows of every other
cell only that ``t <= floor``. Such a cell compares ``max(s, floor)`` with ``floor``: a student
at or below the floor agrees with the teacher there (zero term, zero gradient), one above it is
pulled down to it. Teacher values are clipped to ``max(t, floor)``, so a teacher run live and
its cache give the same term.

Masked cells add exactly zero with zero gradient, whatever they hold (``-inf`` and NaN
included), as in every loss of :mod:`gpner.functional`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .layout import valid_mask
from .reduction import check_pair, check_reduction, reduce, to_accumulation

__all__ = ["squared_error", "distillation_term", "apply_floor"]

KDTerm = Callable[..., Tensor]
"""``term(s, t, mask, reduction, *, max_width)`` -> (B, C) with ``reduction="none"``: the
signature of :func:`~gpner.functional.global_pointer_kl`, :func:`~gpner.functional.softmax_kl`
and :func:`squared_error`."""


def squared_error(
    s: Tensor,
    t: Tensor,
    mask: Tensor | None = None,
    reduction: str = "mean",
    *,
    max_width: int | None = None,
) -> Tensor:
    """``sum_valid (s - t)^2`` per (example, type): TextBrewer's MSE on span logits, summed over
    the cells like ``D`` (so "mean" averages over (B, C), not over cells).

    Args:
        s, t: (B, C, L, L) logits, or band (B, C, L, W) with ``max_width``.
        mask: bool, (B, L) or broadcastable to ``s``; None = all valid.
        reduction: "none" -> (B, C), "mean", "sum".
    """
    check_pair(reduction, s, t)
    s, t = to_accumulation(s), to_accumulation(t)
    valid = valid_mask(mask, max_width)
    diff = s - t
    if valid is not None:
        diff = torch.where(valid, diff, 0.0)  # no arithmetic on a masked cell's value survives
    return reduce(diff.square().sum((-2, -1)), reduction)


def apply_floor(s: Tensor, t: Tensor, floor: float | None) -> tuple[Tensor, Tensor]:
    """``(s', t')``: ``t' = max(t, floor)``, and ``s' = max(s, floor)`` where ``t <= floor``
    (``s`` elsewhere); ``(s, t)`` unchanged when ``floor`` is None."""
    if floor is None:
        return s, t
    at_floor = t <= floor
    return torch.where(at_floor, s.clamp_min(floor), s), t.clamp_min(floor)


def distillation_term(
    term: KDTerm,
    student: Tensor,
    teacher: Tensor,
    temperature: float = 1.0,
    mask: Tensor | None = None,
    reduction: str = "mean",
    *,
    max_width: int | None = None,
    floor: float | None = None,
) -> Tensor:
    """``T^2 * term(s' / T, t' / T)`` with ``(s', t') = apply_floor(student, teacher, floor)``.

    The teacher is a constant (detached here); the gradient flows into ``student`` only.

    Args:
        term: a KD term (:data:`KDTerm`), e.g. :func:`~gpner.functional.global_pointer_kl`.
        student, teacher: (B, C, L, L) logits, or band (B, C, L, W) with ``max_width``;
            ``teacher`` may be half precision (it is cast to the student's dtype).
        temperature: ``T > 0``.
        mask: bool, (B, L) or broadcastable to the logits (e.g. (B, 1, L, L): the cells with a
            teacher counterpart); None = all valid.
        reduction: "none" -> (B, C) (or what ``term`` returns), "mean", "sum".
        floor: teacher cells at or below it are known only as "<= floor" (see the module).
    """
    check_reduction(reduction)
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    s = student
    t = teacher.detach().to(s.dtype)
    s, t = apply_floor(s, t, floor)
    if temperature != 1.0:
        s, t = s / temperature, t / temperature
    value = term(s, t, mask, reduction, max_width=max_width)
    return value * (temperature * temperature) if temperature != 1.0 else value
