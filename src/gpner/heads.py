"""Module shells around :mod:`gpner.functional`: they hold parameters and configuration only."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from gpner import functional as F
from gpner.registry import Registry

__all__ = [
    "HEADS",
    "GlobalPointer",
    "EfficientGlobalPointer",
    "MultilabelCrossEntropy",
    "GlobalPointerKL",
    "SoftmaxKL",
    "SoftmaxKLAll",
    "build_head",
]

HEADS: Registry[type[nn.Module]] = Registry("head")


@HEADS.register("global_pointer", help="per-type q/k projections")
class GlobalPointer(nn.Module):
    """Per-type start/end projections scored pairwise: hidden (B, L, H) -> logits (B, C, L, L).

    With ``max_width=W`` only spans with ``j - i < W`` are scored and the logits are returned in
    the band layout (B, C, L, W), ``logits[b, c, i, w]`` scoring span ``(i, i + w)``; memory and
    time are then O(B * C * L * W).

    :meth:`forward` materialises the logits (for prediction and the drop-in losses);
    :meth:`factors` returns them in factored form for the fused losses of
    :mod:`gpner.functional` (the fast training path: no (B, C, L, L) tensor at all).
    """

    def __init__(
        self,
        hidden_size: int,
        num_types: int,
        head_size: int = 64,
        use_rope: bool = True,
        max_width: int | None = None,
    ):
        super().__init__()
        if max_width is not None and max_width < 1:
            raise ValueError(f"max_width must be positive or None, got {max_width}")
        self.num_types = num_types
        self.head_size = head_size
        self.use_rope = use_rope
        self.max_width = max_width
        self.proj = nn.Linear(hidden_size, num_types * head_size * 2)

    def factors(self, hidden: Tensor, attention_mask: Tensor | None = None) -> F.SpanFactors:
        """hidden (B, L, H) -> :class:`~gpner.functional.SpanFactors` of the logits."""
        return F.projected_factors(
            self.proj(hidden),  # (B, L, C * 2 * D)
            self.num_types,
            attention_mask,
            use_rope=self.use_rope,
            max_width=self.max_width,
        )

    def forward(self, hidden: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """-> (B, C, L, L) logits, or (B, C, L, W) with ``max_width``; invalid cells hold the
        dtype's lowest finite value."""
        return F.factors_to_logits(self.factors(hidden, attention_mask))


@HEADS.register("efficient_global_pointer", help="shared q/k plus per-type biases")
class EfficientGlobalPointer(nn.Module):
    """One shared start/end projection plus per-type start and end biases.

    The biases are read from the shared projection (2D features), as in the original Efficient
    GlobalPointer, so the per-type cost is O(L) instead of O(L * D). ``max_width``,
    :meth:`factors` and :meth:`forward` as in :class:`GlobalPointer`.
    """

    def __init__(
        self,
        hidden_size: int,
        num_types: int,
        head_size: int = 64,
        use_rope: bool = True,
        max_width: int | None = None,
    ):
        super().__init__()
        if max_width is not None and max_width < 1:
            raise ValueError(f"max_width must be positive or None, got {max_width}")
        self.num_types = num_types
        self.head_size = head_size
        self.use_rope = use_rope
        self.max_width = max_width
        self.proj = nn.Linear(hidden_size, head_size * 2)
        self.bias = nn.Linear(head_size * 2, num_types * 2)

    def factors(self, hidden: Tensor, attention_mask: Tensor | None = None) -> F.SpanFactors:
        """hidden (B, L, H) -> :class:`~gpner.functional.SpanFactors` of the logits."""
        shared = self.proj(hidden)  # (B, L, 2D): q and k interleaved
        # Halved so that start + end bias has the scale of one projection.
        bias = self.bias(shared).transpose(1, 2) / 2  # (B, 2C, L)
        return F.projected_factors(
            shared,
            self.num_types,
            attention_mask,
            start_bias=bias[:, 0::2],
            end_bias=bias[:, 1::2],
            use_rope=self.use_rope,
            max_width=self.max_width,
        )

    def forward(self, hidden: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """-> (B, C, L, L) logits, or (B, C, L, W) with ``max_width``."""
        return F.factors_to_logits(self.factors(hidden, attention_mask))


def build_head(
    kind: str,
    hidden_size: int,
    num_types: int,
    head_size: int = 64,
    max_width: int | None = None,
) -> nn.Module:
    """The head registered in :data:`HEADS` as ``kind``; ``max_width`` as in
    :class:`GlobalPointer`."""
    return HEADS[kind](hidden_size, num_types, head_size, max_width=max_width)


class _LossShell(nn.Module):
    """Holds a loss's ``reduction`` and ``max_width`` (the band layout of a head built with the
    same ``max_width``)."""

    def __init__(self, reduction: str = "mean", max_width: int | None = None):
        super().__init__()
        self.reduction = reduction
        self.max_width = max_width


class MultilabelCrossEntropy(_LossShell):
    """Multi-label categorical cross-entropy; sparse span targets when ``spans`` is given.

    ``max_width``: the logits are in the band layout (B, C, L, W) of a head built with the same
    ``max_width``; ``spans`` stay ``[b, c, i, j]``, dense ``targets`` share the logits' layout.
    """

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
            return F.sparse_multilabel_categorical_crossentropy(
                logits, spans, mask, self.reduction, max_width=self.max_width
            )
        return F.multilabel_categorical_crossentropy(
            logits, targets, mask, self.reduction, max_width=self.max_width
        )


class _DivergenceShell(_LossShell):
    """``forward(s, t, mask)``: the divergence :attr:`function` of two logits tensors."""

    function: Callable[..., Tensor]  # a divergence of gpner.functional, set by each subclass

    def forward(self, s: Tensor, t: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.function(s, t, mask, self.reduction, max_width=self.max_width)


class GlobalPointerKL(_DivergenceShell):
    """``D(s, t) = sum_valid (sigmoid(s) - sigmoid(t)) (s - t)``."""

    function = staticmethod(F.global_pointer_kl)


class SoftmaxKL(_DivergenceShell):
    """Symmetric softmax KL over each (example, type)'s valid cells (the baseline divergence)."""

    function = staticmethod(F.softmax_kl)


class SoftmaxKLAll(_DivergenceShell):
    """Symmetric softmax KL with one distribution per example over all types' valid cells."""

    function = staticmethod(F.softmax_kl_all)
