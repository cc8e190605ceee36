"""Dense, obviously correct definitions of the losses and divergences: the tests' oracle.

Each function builds every (B, C, L, L) intermediate, follows the textbook formula line by line
and lets autograd differentiate it: slow and memory-hungry, but easy to check by eye, and exact
in float64. The engine in :mod:`gpner.functional.losses` must agree with these in value and
gradient; nothing in training calls them.

Arguments follow :mod:`gpner.functional.losses`: logits in the full (B, C, L, L) or band
(B, C, L, W) layout, ``mask`` a bool (B, L) attention mask or a bool mask broadcastable to the
logits (None = every cell valid), ``reduction`` one of "none" -> (B, C), "mean", "sum".
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from .layout import gold_cells, valid_mask
from .reduction import reduce, to_accumulation

__all__ = [
    "dense_targets",
    "squared_error",
    "distillation_term",
    "multilabel_categorical_crossentropy",
    "global_pointer_kl",
    "softmax_kl",
    "softmax_kl_all",
    "bilstm_layer_packed",
]


def _valid(mask: Tensor | None, like: Tensor, max_width: int | None) -> Tensor:
    """(B, C, L, L or W) bool: the valid cells."""
    valid = valid_mask(mask, max_width)
    if valid is None:
        return torch.ones(like.shape, dtype=torch.bool, device=like.device)
    return valid.expand(like.shape)


def dense_targets(spans: Tensor, like: Tensor, max_width: int | None = None) -> Tensor:
    """Gold spans (N, 4) rows ``[b, c, i, j]`` -> bool targets shaped like ``like``.

    With ``max_width`` the targets are in the band layout; spans not shorter than it are dropped.
    """
    cells = gold_cells(spans, max_width)
    targets = torch.zeros(like.shape, dtype=torch.bool, device=like.device)
    targets[tuple(cells.t())] = True
    return targets


def _log1p_sum_exp(x: Tensor, keep: Tensor) -> Tensor:
    """``log(1 + sum_{keep} e^x)`` over the last two dims, (B, C): a 0 logit appended."""
    x = torch.where(keep, x, -torch.inf).flatten(-2)
    zero = x.new_zeros(*x.shape[:-1], 1)
    return torch.logsumexp(torch.cat([x, zero], -1), -1)


def multilabel_categorical_crossentropy(
    logits: Tensor,
    targets: Tensor,
    mask: Tensor | None = None,
    reduction: str = "mean",
    *,
    max_width: int | None = None,
) -> Tensor:
    """``log(1 + sum_neg e^s) + log(1 + sum_pos e^-s)`` per (example, type), over valid cells.

    Args:
        targets: bool or 0/1, shaped like ``logits`` (see :func:`dense_targets`).
    """
    s = to_accumulation(logits)
    valid = _valid(mask, s, max_width)
    positive = targets.bool().expand(s.shape) & valid
    negative = valid & ~positive
    return reduce(_log1p_sum_exp(s, negative) + _log1p_sum_exp(-s, positive), reduction)


def global_pointer_kl(
    s: Tensor,
    t: Tensor,
    mask: Tensor | None = None,
    reduction: str = "mean",
    *,
    max_width: int | None = None,
) -> Tensor:
    """The sum over valid cells of the symmetric KL of ``[sigmoid(s), 1 - sigmoid(s)]`` and
    ``[sigmoid(t), 1 - sigmoid(t)]``, written as the two KLs (the engine's closed form
    ``(sigmoid(s) - sigmoid(t)) (s - t)`` is what the tests check against this)."""
    s, t = to_accumulation(s), to_accumulation(t)
    valid = _valid(mask, s, max_width)
    s, t = torch.where(valid, s, 0.0), torch.where(valid, t, 0.0)  # invalid cells: 0 vs 0
    log_p, log_not_p = torch.nn.functional.logsigmoid(s), torch.nn.functional.logsigmoid(-s)
    log_q, log_not_q = torch.nn.functional.logsigmoid(t), torch.nn.functional.logsigmoid(-t)
    p, q = log_p.exp(), log_q.exp()
    kl_pq = p * (log_p - log_q) + (1 - p) * (log_not_p - log_not_q)
    kl_qp = q * (log_q - log_p) + (1 - q) * (log_not_q - log_not_p)
    return reduce((kl_pq + kl_qp).sum((-2, -1)), reduction)


def softmax_kl(
    s: Tensor,
    t: Tensor,
    mask: Tensor | None = None,
    reduction: str = "mean",
    *,
    max_width: int | None = None,
) -> Tensor:
    """``KL(p || q) + KL(q || p)`` with ``p``, ``q`` the softmax of ``s``, ``t`` over the valid
    cells of each (example, type), written as the two KLs; 0 where there are no valid cells."""
    return reduce(_symmetric_softmax_kl(s, t, mask, max_width, start_dim=-2), reduction)


def softmax_kl_all(
    s: Tensor,
    t: Tensor,
    mask: Tensor | None = None,
    reduction: str = "mean",
    *,
    max_width: int | None = None,
) -> Tensor:
    """``KL(p || q) + KL(q || p)`` with ``p``, ``q`` the softmax of ``s``, ``t`` over the valid
    cells of all types of each example, written as the two KLs; (B,) with "none"."""
    return reduce(_symmetric_softmax_kl(s, t, mask, max_width, start_dim=1), reduction)


def squared_error(
    s: Tensor,
    t: Tensor,
    mask: Tensor | None = None,
    reduction: str = "mean",
    *,
    max_width: int | None = None,
) -> Tensor:
    """``sum_valid (s - t)^2`` per (example, type), cell by cell in a plain loop."""
    s, t = to_accumulation(s), to_accumulation(t)
    valid = _valid(mask, s, max_width)
    out = s.new_zeros(s.shape[:2])
    for b in range(s.shape[0]):
        for c in range(s.shape[1]):
            for i in range(s.shape[2]):
                for j in range(s.shape[3]):
                    if valid[b, c, i, j]:
                        out[b, c] = out[b, c] + (s[b, c, i, j] - t[b, c, i, j]) ** 2
    return reduce(out, reduction)


def distillation_term(
    term,
    student: Tensor,
    teacher: Tensor,
    temperature: float = 1.0,
    mask: Tensor | None = None,
    reduction: str = "mean",
    *,
    max_width: int | None = None,
    floor: float | None = None,
) -> Tensor:
    """``T^2 * term(s' / T, t' / T)``: the teacher clipped at ``floor`` (``t' = max(t, floor)``)
    and, on the cells where the teacher is at or below it, the student too
    (``s' = max(s, floor)``); ``term`` one of this module's definitions."""
    s, t = to_accumulation(student), to_accumulation(teacher.detach())
    if floor is not None:
        at_floor = t <= floor
        s = torch.where(at_floor, torch.maximum(s, s.new_tensor(floor)), s)
        t = torch.maximum(t, t.new_tensor(floor))
    return temperature**2 * term(
        s / temperature, t / temperature, mask, reduction, max_width=max_width
    )


def _symmetric_softmax_kl(s, t, mask, max_width, start_dim: int) -> Tensor:
    """The two KLs of the softmaxes over the valid cells of dims ``start_dim:``, summed there."""
    s, t = to_accumulation(s), to_accumulation(t)
    valid = _valid(mask, s, max_width)
    low = torch.finfo(s.dtype).min  # exp(low - anything real) == 0: no probability, no NaN
    log_p = torch.log_softmax(torch.where(valid, s, low).flatten(start_dim), -1)
    log_q = torch.log_softmax(torch.where(valid, t, low).flatten(start_dim), -1)
    p, q = log_p.exp(), log_q.exp()
    cells = p * (log_p - log_q) + q * (log_q - log_p)
    return torch.where(valid.flatten(start_dim), cells, 0.0).sum(-1)


def bilstm_layer_packed(x: Tensor, lengths: Tensor, weights: list[Tensor]) -> Tensor:
    """One bidirectional LSTM layer, each row run by itself: (B, L, I) -> (B, L, 2 U).

    The definition :func:`gpner.functional.recurrent.bilstm_layer` must equal: rows packed to
    their ``lengths`` (B,), so the reverse direction starts at each row's own last token and
    padding reaches no state; zeros on padding. ``weights`` as for ``nn.LSTM``'s one layer,
    forward direction then reverse. A row of length 0 is run as length 1 (packing refuses empty
    rows) and its output zeroed.
    """
    B, L, _ = x.shape
    units = weights[1].shape[1]
    if L == 0 or B == 0:
        return x.new_zeros(B, L, 2 * units)
    packed = pack_padded_sequence(
        x, lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False
    )
    state = x.new_zeros(2, B, units)
    # packed torch.lstm: (data, batch_sizes, hx, params, has_biases, layers, dropout, train,
    # bidirectional); zero states need no reordering by sorted_indices
    out, _, _ = torch.lstm(
        packed.data, packed.batch_sizes, (state, state), weights, True, 1, 0.0, False, True
    )
    out, _ = pad_packed_sequence(
        PackedSequence(out, packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices),
        batch_first=True,
        total_length=L,
    )
    mask = torch.arange(L, device=x.device) < lengths.to(x.device)[:, None]  # (B, L)
    return out * mask[..., None]
