"""A bidirectional LSTM layer over right-padded rows, without packing.

Shape letters: B batch, L tokens, I input width, U units per direction.

The definition (:func:`gpner.functional.reference.bilstm_layer_packed`) runs every row by itself:
the forward direction from its first token, the backward direction from its own last token, so
padding never reaches a real token's state. Packing says exactly that, but on CPU torch runs a
packed LSTM one time step at a time in small ops, and its backward zero-fills a gradient buffer
per step; that, not the matrix products, is most of a packed layer's time.

:func:`bilstm_layer` computes the same function with two plain, unpacked ``torch.lstm`` calls,
which torch hands to its fused recurrent kernels (oneDNN on CPU, cuDNN on GPU):

* forward direction: rows are right-padded, so a real token only ever follows real tokens;
  the padded steps run after them and are zeroed on output;
* backward direction: each row's real tokens are reversed in place (padding stays where it is,
  at the end), run forward, and the outputs reversed back. Reversing ``t -> n - 1 - t`` within
  the first ``n`` positions is its own inverse, so one index serves both ways.
"""

from __future__ import annotations

from contextvars import ContextVar

import torch
from torch import Tensor

from .reference import bilstm_layer_packed

__all__ = ["bilstm_layer", "reverse_within", "PACKED"]

#: Set by :func:`gpner.backends.packed_recurrence`: run the packed definition instead (for
#: measuring one against the other, and for checking a result).
PACKED: ContextVar[bool] = ContextVar("gpner_packed_recurrence", default=False)


def _within_index(lengths: Tensor, length: int) -> tuple[Tensor, Tensor]:
    """The in-place reversal index (B, L) and the bool mask of real tokens (B, L)."""
    t = torch.arange(length, device=lengths.device)  # (L,)
    mask = t < lengths[:, None]  # (B, L)
    index = torch.where(mask, lengths[:, None] - 1 - t, t)  # (B, L)
    return index, mask


def reverse_within(x: Tensor, lengths: Tensor) -> Tensor:
    """Reverses the first ``lengths[b]`` positions of every row of ``x`` (B, L, ...); the rest of
    each row stays in place. Its own inverse."""
    index, _ = _within_index(lengths, x.shape[1])
    index = index.reshape(*index.shape, *([1] * (x.dim() - 2))).expand_as(x)
    return x.gather(1, index)


def _lstm(x: Tensor, weights: list[Tensor]) -> Tensor:
    """One direction, one layer, zero initial state: (L, B, I) -> (L, B, U)."""
    units = weights[1].shape[1]  # weight_hh: (4 U, U)
    zeros = x.new_zeros(1, x.shape[1], units)
    # torch.lstm(input, hx, params, has_biases, num_layers, dropout, train, bidirectional,
    # batch_first); ``train`` only lets the fused kernel keep what its backward needs
    out, _, _ = torch.lstm(
        x, (zeros, zeros), weights, True, 1, 0.0, torch.is_grad_enabled(), False, False
    )
    return out


def bilstm_layer(x: Tensor, lengths: Tensor, weights: list[Tensor]) -> Tensor:
    """One bidirectional LSTM layer over right-padded rows: (B, L, I) -> (B, L, 2 U).

    ``lengths`` (B,) holds each row's number of real tokens (0 is allowed); ``weights`` are one
    layer of ``nn.LSTM``: ``weight_ih, weight_hh, bias_ih, bias_hh`` of the forward direction,
    then of the reverse one. Outputs on padding are zero. Equal in value and gradient to
    :func:`gpner.functional.reference.bilstm_layer_packed`.
    """
    if len(weights) != 8:
        raise ValueError(f"bilstm_layer takes 8 weights (two directions of 4), got {len(weights)}")
    if PACKED.get():
        return bilstm_layer_packed(x, lengths, weights)
    B, L, _ = x.shape
    units = weights[1].shape[1]
    if L == 0 or B == 0:
        return x.new_zeros(B, L, 2 * units)
    lengths = lengths.to(device=x.device, dtype=torch.long)
    index, mask = _within_index(lengths, L)  # (B, L) each
    # time-major (L, B, .): what the fused kernels take without a transposing copy of their own
    xt = x.transpose(0, 1)  # (L, B, I)
    it = index.t()  # (L, B)
    forward = _lstm(xt.contiguous(), weights[:4])  # (L, B, U)
    reversed_in = xt.gather(0, it[..., None].expand_as(xt))  # (L, B, I)
    backward = _lstm(reversed_in, weights[4:])  # (L, B, U), row order reversed
    backward = backward.gather(0, it[..., None].expand_as(backward))
    out = torch.cat([forward, backward], dim=-1).transpose(0, 1)  # (B, L, 2 U)
    return out * mask[..., None]
