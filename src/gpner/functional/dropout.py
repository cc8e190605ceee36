"""Dropout from a uniform draw: the same distribution as ``torch.nn.functional.dropout``.

On CPU, torch's dropout draws its mask with ``bernoulli_``, which fills one element at a time; a
uniform draw (``rand_like``) is vectorised, and comparing it with ``p`` gives a Bernoulli mask
with the same keep probability. The from-scratch encoders drop out several (B, L, H) tensors per
step, where the difference is a noticeable share of a training step
(``benchmarks/speed/bench_step.py``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["dropout", "Dropout"]


def dropout(x: Tensor, p: float, training: bool = True) -> Tensor:
    """Zeroes each element of ``x`` with probability ``p`` and scales the rest by
    ``1 / (1 - p)`` while ``training``; the identity otherwise. Same shape as ``x``."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability must be in [0, 1], got {p}")
    if not training or p == 0.0:
        return x
    if p == 1.0:
        return x * 0.0
    keep = torch.rand_like(x) >= p  # P(keep) = 1 - p
    return x * keep.to(x.dtype).mul_(1.0 / (1.0 - p))


class Dropout(nn.Dropout):
    """``nn.Dropout`` (same ``p``, ``repr`` and empty state) drawing its mask by :func:`dropout`."""

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training)
