"""Where a block's cells come from and where its gradient goes: factors or materialised logits.

A source produces the cells of one block ``(b0, b1, r0, r1, c0)`` of a :class:`BlockLayout` as a
fresh, contiguous tensor in the accumulation dtype (the engine uses it in place), and in
backward turns the gradient of those cells into gradients of its inputs.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..layout import band_view
from ..reduction import accumulation_dtype
from .layout import BlockLayout


class FactorSource:
    """Blocks of cells computed from span factors (tensors q, k, start_bias, end_bias)."""

    def __init__(
        self, layout: BlockLayout, q: Tensor, k: Tensor, sb: Tensor | None, eb: Tensor | None
    ):
        self.layout = layout
        self.band = layout.kind == "band"
        self.width = layout.width
        self.acc = accumulation_dtype(q.dtype)
        self.length = q.shape[-2]
        self.q, self.k, self.sb, self.eb = q, k, sb, eb
        self.shared = q.shape[1] == 1 and layout.types > 1
        self.grads: list[Tensor | None] | None = None
        self._last: tuple[Tensor, Tensor] | None = None

    def _cols(self, r0: int, r1: int, c0: int) -> tuple[int, int]:
        if self.band:
            return r0, r1 + self.width - 1
        return c0, self.length

    def _end_bias(self, b0: int, b1: int, a: int, z: int) -> Tensor:
        """End biases of columns ``a:z``, zero past the end of the sequence (band blocks)."""
        eb = self.eb[b0:b1, :, a : min(z, self.length)].to(self.acc)
        return torch.nn.functional.pad(eb, (0, z - a - eb.shape[-1]))

    def load(self, b0: int, b1: int, r0: int, r1: int, c0: int) -> tuple[Tensor, Tensor]:
        """The block's q rows and k columns in the accumulation dtype (kept for backward).

        Band blocks always span r + W - 1 columns; columns past the end are zero rows of k.
        """
        a, z = self._cols(r0, r1, c0)
        qb = self.q[b0:b1, :, r0:r1].to(self.acc)
        kb = self.k[b0:b1, :, a : min(z, self.length)].to(self.acc)
        if kb.shape[-2] < z - a:
            kb = torch.nn.functional.pad(kb, (0, 0, 0, z - a - kb.shape[-2]))
        self._last = (qb, kb)
        return qb, kb

    def cells(self, b0: int, b1: int, r0: int, r1: int, c0: int) -> Tensor:
        """(Bg, C, r, M - c0), fresh and contiguous, in the accumulation dtype."""
        a, z = self._cols(r0, r1, c0)
        qb, kb = self.load(b0, b1, r0, r1, c0)
        x = torch.matmul(qb, kb.transpose(-1, -2))  # (Bg, C or 1, r, n)
        if self.band:
            x = band_view(x, self.width)  # (Bg, C or 1, r, W), a view
        if self.sb is not None:
            sb = self.sb[b0:b1, :, r0:r1, None].to(self.acc)
            out = torch.empty((*sb.shape[:-1], x.shape[-1]), dtype=self.acc, device=x.device)
            x = torch.add(x, sb, out=out)  # (Bg, C, r, M - c0), fresh and contiguous
            if self.band:
                x += self._end_bias(b0, b1, a, z).unfold(-1, self.width, 1)
            else:
                x += self.eb[b0:b1, :, None, a:z].to(self.acc)
        elif self.band:
            x = x.contiguous()
        return x

    def start_backward(self, needs: tuple[bool, ...]) -> None:
        # dq and dsb are assigned block by block, each row once; so are dk and deb in the first
        # row band of the full layout, which covers every column (later bands add to them).
        # Band blocks overlap in columns from the first band on: their dk and deb start at 0.
        def buffer(t: Tensor | None, need: bool, assigned: bool) -> Tensor | None:
            if t is None or not need:
                return None
            make = torch.empty if assigned else torch.zeros
            return make(t.shape, dtype=self.acc, device=t.device)

        assigned = (True, not self.band, True, not self.band)
        tensors = (self.q, self.k, self.sb, self.eb)
        self.grads = [buffer(t, n, a) for t, n, a in zip(tensors, needs, assigned)]

    def backward_cells(self, b0: int, b1: int, r0: int, r1: int, c0: int, g: Tensor) -> None:
        """Accumulate the gradient ``g`` (Bg, C, r, M - c0) of this block's cells."""
        dq, dk, dsb, deb = self.grads
        a, z = self._cols(r0, r1, c0)
        qb, kb = self._last  # set by cells() / load() on the same block
        if dsb is not None:
            dsb[b0:b1, :, r0:r1] = g.sum(-1)
        if self.band:
            full = g.new_zeros((*g.shape[:-1], z - a))  # (Bg, C, r, r + W - 1)
            band_view(full, self.width).copy_(g)
            g = full
        end = min(z, self.length) - a  # band blocks: columns past the end are dropped
        first = r0 == 0 and not self.band  # see start_backward
        if deb is not None:
            if first:
                torch.sum(g, -2, out=deb[b0:b1])
            else:
                deb[b0:b1, :, a : a + end] += g.sum(-2)[..., :end]
        if dq is None and dk is None:
            return
        if self.shared:
            g = g.sum(1, keepdim=True)
        if dq is not None:
            _matmul_into(g, kb, dq[b0:b1, :, r0:r1])
        if dk is not None:
            if first:
                torch.matmul(g.transpose(-1, -2), qb, out=dk[b0:b1])
            else:
                dk[b0:b1, :, a : a + end] += torch.matmul(g.transpose(-1, -2), qb)[..., :end, :]

    def finish_backward(self) -> list[Tensor | None]:
        dq, dk, dsb, deb = self.grads
        originals = (self.q, self.k, self.sb, self.eb)
        out = [None if g is None else g.to(t.dtype) for g, t in zip((dq, dk, dsb, deb), originals)]
        self.grads = None
        return out


def _matmul_into(a: Tensor, b: Tensor, out: Tensor) -> None:
    """``out[...] = a @ b``. Into a strided view (the rows of one row band) torch's batched
    matmul falls back to one small product per matrix, several times slower than computing
    the block's product and copying it."""
    if out.is_contiguous():
        torch.matmul(a, b, out=out)
    else:
        out.copy_(torch.matmul(a, b))


class DenseSource:
    """Blocks of cells copied from materialised logits (B, C, L, M)."""

    def __init__(self, layout: BlockLayout, logits: Tensor):
        self.layout = layout
        self.logits = logits
        self.acc = accumulation_dtype(logits.dtype)
        self.grad: Tensor | None = None
        self._zero = torch.zeros((), dtype=self.acc, device=logits.device)

    def cells(self, b0: int, b1: int, r0: int, r1: int, c0: int) -> Tensor:
        block = self.logits[b0:b1, :, r0:r1, c0:]
        invalid = self.layout.invalid_block(b0, b1, r0, r1, c0)
        if invalid is None:
            return torch.empty(block.shape, dtype=self.acc, device=block.device).copy_(block)
        # Copy and clean in one pass: invalid cells may hold -inf (or anything) in user logits.
        return torch.where(invalid, self._zero, block.to(self.acc)).contiguous()

    def load(self, b0: int, b1: int, r0: int, r1: int, c0: int) -> None:
        """Nothing to load: a block's gradient is written into the logits' gradient as it is."""

    def start_backward(self, needs: tuple[bool, ...]) -> None:
        logits = self.logits
        self.grad = (
            torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
            if needs[0]
            else None
        )

    def backward_cells(self, b0: int, b1: int, r0: int, r1: int, c0: int, g: Tensor) -> None:
        if self.grad is None:
            return
        self.grad[b0:b1, :, r0:r1, c0:] = g
        if c0:
            self.grad[b0:b1, :, r0:r1, :c0] = 0

    def finish_backward(self) -> list[Tensor | None]:
        grad, self.grad = self.grad, None
        return [grad]


class BandScores(torch.autograd.Function):
    """``out[b, c, i, w] = q[b, c, i] . k[b, c, i + w]`` (zero past the end): (B, C, L, W).

    The band of ``q k^T`` without the (L, L) product, block by block like the losses.
    """

    @staticmethod
    def forward(ctx, width: int, q: Tensor, k: Tensor):
        ctx.width = width
        ctx.save_for_backward(q, k)
        batch, types, length, _ = q.shape
        layout = BlockLayout("band", (batch, types, length, width), q.device, width=width)
        src = FactorSource(layout, q, k, None, None)
        out = torch.empty(batch, types, length, width, dtype=src.acc, device=q.device)
        for b0, b1, r0, r1, c0 in layout.blocks:
            out[b0:b1, :, r0:r1] = src.cells(b0, b1, r0, r1, c0)
        return out.to(q.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):
        q, k = ctx.saved_tensors
        batch, types, length, _ = q.shape
        width = ctx.width
        layout = BlockLayout("band", (batch, types, length, width), q.device, width=width)
        src = FactorSource(layout, q, k, None, None)
        src.start_backward((ctx.needs_input_grad[1], ctx.needs_input_grad[2], False, False))
        for b0, b1, r0, r1, c0 in layout.blocks:
            src.load(b0, b1, r0, r1, c0)
            src.backward_cells(b0, b1, r0, r1, c0, grad[b0:b1, :, r0:r1].to(src.acc))
        dq, dk, _, _ = src.finish_backward()
        return None, dq, dk
