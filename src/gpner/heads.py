"""Module shells around :mod:`gpner.functional`: they hold parameters and configuration only."""

from __future__ import annotations

from torch import Tensor, nn

from gpner import functional as F

__all__ = [
    "GlobalPointer",
    "EfficientGlobalPointer",
    "MultilabelCrossEntropy",
    "GlobalPointerKL",
    "SoftmaxKL",
    "build_head",
]


class GlobalPointer(nn.Module):
    """Per-type start/end projections scored pairwise: hidden (B, L, H) -> logits (B, C, L, L)."""

    def __init__(
        self, hidden_size: int, num_types: int, head_size: int = 64, use_rope: bool = True
    ):
        super().__init__()
        self.num_types = num_types
        self.head_size = head_size
        self.use_rope = use_rope
        self.proj = nn.Linear(hidden_size, num_types * head_size * 2)

    def forward(self, hidden: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        batch, length, _ = hidden.shape
        qk = self.proj(hidden).view(batch, length, self.num_types, 2, self.head_size)
        qk = qk.permute(3, 0, 2, 1, 4)  # (2, B, C, L, D)
        return F.global_pointer_logits(qk[0], qk[1], attention_mask, use_rope=self.use_rope)


class EfficientGlobalPointer(nn.Module):
    """One shared start/end projection plus per-type start and end biases.

    The biases are read from the shared projection (2D features), as in the original Efficient
    GlobalPointer, so the per-type cost is O(L) instead of O(L * D).
    """

    def __init__(
        self, hidden_size: int, num_types: int, head_size: int = 64, use_rope: bool = True
    ):
        super().__init__()
        self.num_types = num_types
        self.head_size = head_size
        self.use_rope = use_rope
        self.proj = nn.Linear(hidden_size, head_size * 2)
        self.bias = nn.Linear(head_size * 2, num_types * 2)

    def forward(self, hidden: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        shared = self.proj(hidden)  # (B, L, 2D)
        q, k = shared[..., 0::2], shared[..., 1::2]
        # Halved so that start + end bias has the scale of one projection.
        bias = self.bias(shared).transpose(1, 2) / 2  # (B, 2C, L)
        return F.efficient_global_pointer_logits(
            q, k, bias[:, 0::2], bias[:, 1::2], attention_mask, use_rope=self.use_rope
        )


def build_head(kind: str, hidden_size: int, num_types: int, head_size: int = 64) -> nn.Module:
    """``kind`` is "global_pointer" or "efficient_global_pointer"."""
    heads = {"global_pointer": GlobalPointer, "efficient_global_pointer": EfficientGlobalPointer}
    if kind not in heads:
        raise ValueError(f"unknown head {kind!r}; choose one of {sorted(heads)}")
    return heads[kind](hidden_size, num_types, head_size)


class MultilabelCrossEntropy(nn.Module):
    """Multi-label categorical cross-entropy; sparse span targets when ``spans`` is given."""

    def __init__(self, reduction: str = "mean"):
        super().__init__()
        self.reduction = reduction

    def forward(
        self,
        logits: Tensor,
        targets: Tensor | None = None,
        mask: Tensor | None = None,
        *,
        spans: Tensor | None = None,
    ) -> Tensor:
        if (targets is None) == (spans is None):
            raise ValueError("give exactly one of dense `targets` or sparse `spans`")
        if spans is not None:
            return F.sparse_multilabel_categorical_crossentropy(logits, spans, mask, self.reduction)
        return F.multilabel_categorical_crossentropy(logits, targets, mask, self.reduction)


class GlobalPointerKL(nn.Module):
    """``D(s, t) = sum_valid (sigmoid(s) - sigmoid(t)) (s - t)``."""

    def __init__(self, reduction: str = "mean"):
        super().__init__()
        self.reduction = reduction

    def forward(self, s: Tensor, t: Tensor, mask: Tensor | None = None) -> Tensor:
        return F.global_pointer_kl(s, t, mask, self.reduction)


class SoftmaxKL(nn.Module):
    """Symmetric softmax KL over each (example, type)'s valid cells (the baseline divergence)."""

    def __init__(self, reduction: str = "mean"):
        super().__init__()
        self.reduction = reduction

    def forward(self, s: Tensor, t: Tensor, mask: Tensor | None = None) -> Tensor:
        return F.softmax_kl(s, t, mask, self.reduction)
