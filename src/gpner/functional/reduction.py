"""The one ``reduction`` vocabulary of every loss and divergence, and the accumulation dtype.

The per-cell terms are summed over the (L, L) (or band) cells of each (example, type) pair,
giving a (B, C) tensor. ``reduction="none"`` returns that tensor, ``"mean"`` its mean and
``"sum"`` its sum. Half-precision inputs are accumulated, and returned, in float32.
"""

from __future__ import annotations

import torch
from torch import Tensor

REDUCTIONS = ("none", "mean", "sum")


def check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def check_pair(reduction: str, s: Tensor, t: Tensor) -> None:
    """The argument checks of a term comparing two logit tensors: the reduction, equal shapes."""
    check_reduction(reduction)
    if s.shape != t.shape:
        raise ValueError(f"s and t differ in shape: {tuple(s.shape)} vs {tuple(t.shape)}")


def reduce(per_pair: Tensor, reduction: str) -> Tensor:
    """(B, C) per-(example, type) values -> reduced as asked."""
    check_reduction(reduction)
    if reduction == "none":
        return per_pair
    return per_pair.mean() if reduction == "mean" else per_pair.sum()


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """Half precision is accumulated in float32; float32 and float64 stay as they are."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def to_accumulation(x: Tensor) -> Tensor:
    return x.to(accumulation_dtype(x.dtype))
