"""The floor of a head step: the time its necessary FLOPs take at the machine's matmul rate.

Rate: one ``torch.nn.functional.linear`` forward + backward (input and weight gradients, no
bias) of the GlobalPointer projection's shape, x (B * L, H) times W (C * 2 * D, H), timed side by
side with the implementations (it is one more entry in the interleaved rounds, so it sees the
same load). It does ``6 * B * L * H * C * 2 * D`` FLOPs; the rate is that over its median time.
The same GEMM serves both heads' rows: it is what the machine can do at this (L, H).

Necessary FLOPs of one step (FLOP = one multiply or add, an exp or sigmoid counted as one), with
``n_b`` the real tokens of example b, ``T = sum_b n_b`` and the valid cells
``V = C * sum_b n_b (n_b + 1) / 2`` (``i <= j``, both real; with a maximum width W only
``j - i < W``), per pass (``headloss`` one pass, ``rdrop``/``rdrop_nokl`` two):

* projection, forward and both gradients (6 FLOPs per multiply-add of the forward GEMM), over the
  real tokens only: GlobalPointer ``6 * T * H * (2 * C * D)``; Efficient GlobalPointer
  ``6 * T * (H * 2 * D + 2 * D * 2 * C)`` (shared projection and the bias projection);
* scores of the valid cells, forward ``2 D`` and backward (dq and dk) ``4 D`` per cell:
  GlobalPointer ``6 * D * V``; Efficient GlobalPointer ``6 * D * V / C`` (one shared q.k per
  (start, end)) ``+ 4 * V`` (start and end biases, forward and backward);
* cross-entropy: ``7 * V`` (forward max, subtract, exp, sum; backward subtract, exp, scale);

and once per ``rdrop`` step the divergence ``16 * V`` (forward two sigmoids, two differences, a
product, a sum; backward per side sigma', a product, a sum, the weight). Not counted (each
below 1 % of the total for these shapes): RoPE, dropout, the gold cells' terms, reductions over
(B, C). Recomputing cells in backward is not necessary work, so it is not counted either.
"""

from __future__ import annotations

import torch
from torch import Tensor


def valid_cells_per_type(attention_mask: Tensor, max_width: int | None = None) -> int:
    """``sum_b`` of the valid (start, end) cells of example b (one type)."""
    n = attention_mask.bool().sum(-1).long()
    if max_width is None:
        return int((n * (n + 1) // 2).sum())
    w = torch.clamp(n, max=max_width)
    # Starts i with n - i >= W have W cells; the last w starts have w, w - 1, ..., 1.
    return int(((n - w) * max_width + w * (w + 1) // 2).sum())


def step_flops(
    head: str,
    mode: str,
    hidden: int,
    types: int,
    head_size: int,
    attention_mask: Tensor,
    max_width: int | None = None,
) -> dict[str, float]:
    """Necessary FLOPs of one step, by part (see the module docstring for the formula)."""
    passes = 1 if mode == "headloss" else 2
    tokens = int(attention_mask.bool().sum())
    per_type = valid_cells_per_type(attention_mask, max_width)
    cells = types * per_type
    d = head_size
    if head == "global_pointer":
        projection = 6 * tokens * hidden * 2 * types * d
        scores = 6 * d * cells
    else:
        projection = 6 * tokens * (hidden * 2 * d + 2 * d * 2 * types)
        scores = 6 * d * per_type + 4 * cells
    loss = 7 * cells
    divergence = 16 * cells if mode == "rdrop" else 0
    parts = {
        "projection": passes * projection,
        "scores": passes * scores,
        "loss": passes * loss,
        "divergence": divergence,
    }
    parts["total"] = sum(parts.values())
    parts["valid_cells"] = cells
    return parts


def gemm_flops(batch: int, length: int, hidden: int, types: int, head_size: int) -> int:
    """FLOPs of the rate-measuring GEMM: linear forward + backward of the GP projection."""
    return 6 * batch * length * hidden * 2 * types * head_size


def gemm_step(batch: int, length: int, hidden: int, types: int, head_size: int, seed: int = 0):
    """A zero-argument callable: one projection-shaped linear forward + backward."""
    g = torch.Generator().manual_seed(seed)
    out = 2 * types * head_size
    x = torch.randn(batch * length, hidden, generator=g).requires_grad_()
    w = (torch.randn(out, hidden, generator=g) * hidden**-0.5).requires_grad_()
    grad = torch.randn(batch * length, out, generator=g)

    def step() -> float:
        x.grad = w.grad = None
        y = torch.nn.functional.linear(x, w)
        y.backward(grad)
        return 0.0

    return step
