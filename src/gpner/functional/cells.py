"""The GlobalPointer divergence of one cell: its value and its gradient, written once.

Every computation of ``D(s, t)`` in gpner (the blocked engine's eager passes, its compiled
kernels, the gold cells kept out of those kernels) calls these two functions.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["gp_kl_cell", "gp_kl_cell_grad", "gp_kl_cell_parts"]


def gp_kl_cell(s: Tensor, t: Tensor) -> Tensor:
    """``(sigmoid(s) - sigmoid(t)) * (s - t)``: the term of one cell of ``D(s, t)``.

    Derivation (why this is the divergence that fits GlobalPointer logits). A cell's logit ``s``
    decides "entity" by ``s > 0``; read as a probability it is the binary distribution
    ``P = [p, 1 - p]`` with ``p = sigmoid(s)``, i.e. ``P = softmax([s, 0])``. For two softmax
    distributions ``P = softmax(u)``, ``Q = softmax(v)`` the symmetric KL is

        KL(P || Q) + KL(Q || P) = sum_k (P_k - Q_k) (log P_k - log Q_k)
                                = sum_k (P_k - Q_k) (u_k - v_k)

    because ``log P_k - log Q_k = (u_k - v_k) - (logsumexp u - logsumexp v)`` and the constant
    multiplies ``sum_k (P_k - Q_k) = 0``. With ``u = [s, 0]``, ``v = [t, 0]`` only ``k = 0``
    survives: the symmetric binary KL of one cell is ``(sigmoid(s) - sigmoid(t)) (s - t)``, and
    ``D(s, t) = sum_valid gp_kl_cell(s, t)`` is the sum over cells of the symmetric KLs.
    Hence ``D`` is symmetric, non-negative (sigmoid is increasing, so both factors share a sign)
    and zero exactly where ``s == t``.

    Args:
        s, t: logits of the same shape (any), finite.
    Returns:
        the per-cell terms, same shape.
    """
    return (torch.sigmoid(s) - torch.sigmoid(t)) * (s - t)


def gp_kl_cell_grad(
    s: Tensor, t: Tensor, wants: tuple[bool, bool] = (True, True)
) -> tuple[Tensor | None, Tensor | None]:
    """``(d/ds, d/dt)`` of :func:`gp_kl_cell`; None for a side not in ``wants``.

    With ``sigmoid' = sigmoid (1 - sigmoid)``:

        d/ds = (sigmoid(s) - sigmoid(t)) + sigmoid'(s) (s - t)
        d/dt = -(sigmoid(s) - sigmoid(t)) - sigmoid'(t) (s - t)

    Computed in place on fresh temporaries (the engine calls this on every cache-sized block,
    outside autograd), so not itself differentiable.
    """
    return gp_kl_cell_parts(s, t, wants)[2:]


def gp_kl_cell_parts(
    s: Tensor, t: Tensor, wants: tuple[bool, bool] = (True, True)
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """``(diff, d, d/ds, d/dt)``: the two factors of :func:`gp_kl_cell`
    (``diff = sigmoid(s) - sigmoid(t)``, ``d = s - t``, the cell's term is ``diff * d``) and its
    derivatives as in :func:`gp_kl_cell_grad`, from one evaluation of the sigmoids (for the
    engine, which needs the value and the gradient of the same block)."""
    a, b = torch.sigmoid(s), torch.sigmoid(t)
    diff, d = a - b, s - t
    ds = dt = None
    if wants[0]:
        a.addcmul_(a, a, value=-1.0)  # sigmoid'(s), in place
        ds = torch.addcmul(diff, a, d, out=a)
    if wants[1]:
        b.addcmul_(b, b, value=-1.0)  # sigmoid'(t), in place
        dt = torch.addcmul(diff, b, d, out=b).neg_()
    return diff, d, ds, dt
