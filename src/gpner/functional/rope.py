"""Rotary position embedding (RoPE), and the rotated q/k pair cut from one projection."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["rope"]


def rope_tables(
    x: Tensor, positions: Tensor | None, base: float, scale: float = 1.0
) -> tuple[Tensor, Tensor]:
    """``(cos, sin)`` of the rotation angles, (..., L, D/2) in ``x``'s dtype, times ``scale``."""
    length, dim = x.shape[-2], x.shape[-1]
    if dim % 2:
        raise ValueError(f"rope needs an even last dimension, got {dim}")
    # float64 stays float64 (exact parity tests); everything else computes angles in float32.
    angle_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    if positions is None:
        positions = torch.arange(length, device=x.device)
    inv_freq = base ** (-torch.arange(0, dim, 2, device=x.device, dtype=angle_dtype) / dim)
    angles = positions.to(angle_dtype).unsqueeze(-1) * inv_freq  # (..., L, D/2)
    return (angles.cos() * scale).to(x.dtype), (angles.sin() * scale).to(x.dtype)


_COMPLEX = {torch.float32: torch.complex64, torch.float64: torch.complex128}


def _pairs_as_complex(x: Tensor) -> Tensor | None:
    """``x`` (..., D) as a complex (..., D/2) view of its pairs, or None where no view exists."""
    if x.stride(-1) != 1 or x.storage_offset() % 2 or any(s % 2 for s in x.stride()[:-1]):
        return None
    return torch.view_as_complex(x.unflatten(-1, (-1, 2)))


def rotate(x: Tensor, cos: Tensor, sin: Tensor, out: Tensor | None = None) -> Tensor:
    """Pairs ``(e, o)`` of ``x`` -> ``(e cos - o sin, o cos + e sin)``.

    In float32/64 as one complex product ``(e + io)(cos + i sin)`` (:func:`rotate_complex`).
    Half precision: 4 half-size passes.
    """
    if x.dtype in _COMPLEX and cos.dtype == x.dtype:
        return rotate_complex(x, torch.complex(cos, sin), out)
    if out is None:
        shape = torch.broadcast_shapes(x.shape, (*cos.shape[:-1], x.shape[-1]))
        out = torch.empty(shape, dtype=x.dtype, device=x.device)
    pairs, out_pairs = x.unflatten(-1, (-1, 2)), out.unflatten(-1, (-1, 2))
    even, odd = pairs[..., 0], pairs[..., 1]
    out_even, out_odd = out_pairs[..., 0], out_pairs[..., 1]
    torch.mul(even, cos, out=out_even)
    out_even.addcmul_(odd, sin, value=-1.0)
    torch.mul(odd, cos, out=out_odd)
    out_odd.addcmul_(even, sin)
    return out


def rotate_complex(x: Tensor, table: Tensor, out: Tensor | None = None) -> Tensor:
    """:func:`rotate` by the complex table ``cos + i sin`` (float32/64 ``x``): one vectorised
    pass, also over strided views such as the per-type q of a projection, whose pairs are
    adjacent in memory (otherwise ``x`` is copied, or the result written through, once)."""
    if out is None:
        shape = torch.broadcast_shapes(x.shape, (*table.shape[:-1], x.shape[-1]))
        out = torch.empty(shape, dtype=x.dtype, device=x.device)
    xc = _pairs_as_complex(x)
    if xc is None:  # standard strides are even multiples of D
        xc = _pairs_as_complex(x.clone(memory_format=torch.contiguous_format))
    outc = _pairs_as_complex(out)
    target = out
    if outc is None:
        target = torch.empty(out.shape, dtype=out.dtype, device=out.device)
        outc = _pairs_as_complex(target)
    torch.mul(xc, table, out=outc)
    if target is not out:
        out.copy_(target)
    return out


class _Rope(torch.autograd.Function):
    """The rotation of :func:`rope` with given tables; backward rotates by the opposite angle."""

    @staticmethod
    def forward(ctx, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        ctx.save_for_backward(cos, sin)
        ctx.shape = x.shape
        return rotate(x, cos, sin)

    @staticmethod
    def backward(ctx, grad: Tensor):
        cos, sin = ctx.saved_tensors
        dx = rotate(grad, cos, -sin)
        if dx.shape != ctx.shape:  # x was broadcast against batched positions
            dx = dx.sum_to_size(ctx.shape)
        return dx, None, None


class ProjectedPair(torch.autograd.Function):
    """``q`` and ``k`` cut from one projection output, rotated (``q`` also scaled), in one node.

    ``split(base)`` returns the two (..., L, D) views. Backward writes both gradients straight
    into one buffer shaped like ``base`` (the views partition it), instead of autograd's
    zero-filled, base-sized buffer per view.
    """

    @staticmethod
    def forward(ctx, base: Tensor, split, use_rope: bool, scale: float):
        qv, kv = split(base)
        ctx.split, ctx.use_rope, ctx.scale = split, use_rope, scale
        ctx.base_shape = base.shape
        if not use_rope:
            return (qv * scale).contiguous(), kv.contiguous()
        cos, sin = rope_tables(qv, None, 10000.0)
        if qv.dtype in _COMPLEX:  # one complex table (L, D/2) serves all four rotations
            table = torch.complex(cos, sin)
            ctx.save_for_backward(table)
            return rotate_complex(qv, table * scale), rotate_complex(kv, table)
        ctx.save_for_backward(cos, sin)
        return rotate(qv, cos * scale, sin * scale), rotate(kv, cos, sin)

    @staticmethod
    def backward(ctx, gq: Tensor | None, gk: Tensor | None):
        ref = gq if gq is not None else gk
        grad = torch.empty(ctx.base_shape, dtype=ref.dtype, device=ref.device)
        gqv, gkv = ctx.split(grad)
        scale = ctx.scale
        tables = ctx.saved_tensors if ctx.use_rope else ()
        inverse = tables[0].conj().resolve_conj() if len(tables) == 1 else None
        for g, view, factor in ((gq, gqv, scale), (gk, gkv, 1.0)):
            if g is None:
                view.zero_()
            elif inverse is not None:  # the opposite rotation, times the forward's factor
                rotate_complex(g, inverse * factor if factor != 1.0 else inverse, out=view)
            elif ctx.use_rope:
                cos, sin = tables
                rotate(g, cos * factor, sin * -factor, out=view)
            else:
                torch.mul(g, factor, out=view)
        return grad, None, None, None


def rope(
    x: Tensor, positions: Tensor | None = None, base: float = 10000.0, *, scale: float = 1.0
) -> Tensor:
    """Rotary position embedding with interleaved pairs (0, 1), (2, 3), ...

    Pair ``k`` of the vector at position ``p`` is rotated by the angle ``p * base^(-2k / D)``, so
    that for rotated ``q_i`` and ``k_j`` the score ``q_i . k_j`` depends on positions only
    through ``j - i``. Angles are computed on the fly, so any length works.

    Args:
        x: (..., L, D) with D even.
        positions: integer or float positions broadcastable to ``x.shape[:-1]``; default
            ``arange(L)``.
        base: the frequency base.
        scale: multiplies the result (folded into the rotation tables, so it costs nothing).
    Returns:
        (..., L, D), same dtype as ``x``.
    """
    cos, sin = rope_tables(x, positions, base, scale)
    return _Rope.apply(x, cos, sin)
