"""Which cache-sized blocks of cells exist, which of their cells are valid, and where the gold
cells fall."""

from __future__ import annotations

import torch
from torch import Tensor

from ..layout import band_mask, check_width, invalid_cells


class BlockLayout:
    """Blocks over cells (B, C, L, M) and the valid cells of each block.

    kinds:
        "tri": full layout with triangular validity (``i <= j``, both tokens real); blocks start
            at column ``c0 = r0`` since every cell left of the diagonal is invalid.
        "band": band layout (M = W): cell ``(i, w)`` valid when tokens ``i`` and ``i + w`` are.
        "all": every cell valid (no mask).
        "mask": validity read from a bool mask broadcastable to (B, C, L, M).
    """

    # Cells per block: 2**20 float32 cells are 4 MiB, so a block and its few temporaries stay
    # in the L2/L3 caches. Tests lower both to exercise many blocks.
    CELLS = 1 << 20
    ROWS = 64  # rows per block: the q.k^T matmuls are efficient from about 64 rows
    # A whole (B, C, L, L) problem of at most SINGLE x CELLS cells is one block (the lower
    # triangle included): at short lengths the per-block calls, the small row-band matmuls and
    # their bookkeeping cost more than the cells the triangle would skip (the engine's speed is
    # measured by benchmarks/speed/bench_head.py, results in benchmarks/speed/RESULTS.md). Not
    # for the band layout.
    SINGLE = 4

    def __init__(
        self,
        kind: str,
        shape: tuple[int, int, int, int],
        device: torch.device,
        *,
        attention_mask: Tensor | None = None,
        mask: Tensor | None = None,
        width: int | None = None,
    ):
        self.kind = kind
        self.batch, self.types, self.rows, self.cols = shape
        self.device = device
        self.width = width
        am = None if attention_mask is None else attention_mask.bool()
        if am is not None and kind == "tri" and bool(am.all()):
            am = None  # no padding: the triangle alone decides
        self.am = am
        self.invalid: Tensor | None = None
        if kind == "band":
            full = (
                am if am is not None else torch.ones(1, self.rows, dtype=torch.bool, device=device)
            )
            self.invalid = ~band_mask(full, width)  # (B or 1, 1, L, W)
        elif kind == "mask":
            self.invalid = (~mask).expand(self.batch, self.types, self.rows, self.cols)
        self.blocks = self._plan()

    @classmethod
    def for_logits(cls, logits: Tensor, mask: Tensor | None, max_width: int | None) -> BlockLayout:
        """The layout of materialised logits (B, C, L, L or W) under a loss's ``mask`` argument."""
        check_width(max_width)
        shape = tuple(logits.shape)
        rows, cols = shape[2], shape[3]
        if max_width is not None and cols != max_width:
            raise ValueError(f"band logits must be (B, C, L, {max_width}), got {shape}")
        if mask is None:
            return cls("all", shape, logits.device)
        if mask.dtype != torch.bool:
            raise TypeError(f"masks must be bool, got {mask.dtype}")
        if mask.dim() == 2:  # an attention mask (B, L)
            if max_width is not None:
                return cls("band", shape, logits.device, attention_mask=mask, width=max_width)
            if rows != cols:
                raise ValueError("a (B, L) mask needs (B, C, L, L) logits or max_width")
            return cls("tri", shape, logits.device, attention_mask=mask)
        return cls("mask", shape, logits.device, mask=mask)

    @classmethod
    def for_factors(cls, f) -> BlockLayout:
        """The layout of :class:`~gpner.functional.SpanFactors`: their triangle or band."""
        batch, _, length, _ = f.q.shape
        width = f.max_width
        shape = (batch, f.num_types, length, length if width is None else width)
        if width is None:
            return cls("tri", shape, f.q.device, attention_mask=f.attention_mask)
        return cls("band", shape, f.q.device, attention_mask=f.attention_mask, width=width)

    def _plan(self) -> list[tuple[int, int, int, int, int]]:
        """``(b0, b1, r0, r1, c0)`` per block, about ``CELLS`` cells each."""
        if self.kind != "band" and self.batch * self.types * self.rows * self.cols <= (
            self.SINGLE * self.CELLS
        ):
            return [(0, self.batch, 0, self.rows, 0)]
        blocks = []
        rows = max(1, min(self.ROWS, self.CELLS // max(1, self.types * self.cols)))
        for r0 in range(0, self.rows, rows):
            r1 = min(self.rows, r0 + rows)
            c0 = r0 if self.kind == "tri" else 0
            cols = self.cols - c0
            if self.kind == "band":  # the block's matmul is r x (r + W - 1)
                cols = r1 - r0 + self.cols - 1
            per_example = self.types * (r1 - r0) * cols
            group = max(1, min(self.batch, self.CELLS // max(1, per_example)))
            for b0 in range(0, self.batch, group):
                blocks.append((b0, min(self.batch, b0 + group), r0, r1, c0))
        return blocks

    def invalid_block(self, b0: int, b1: int, r0: int, r1: int, c0: int) -> Tensor | None:
        """Bool (Bg or 1, C or 1, r, M - c0): True on invalid cells; None when all are valid."""
        if self.kind == "all":
            return None
        if self.kind in ("band", "mask"):
            inv = self.invalid
            if inv.shape[0] > 1:
                inv = inv[b0:b1]
            return inv[:, :, r0:r1, c0:]
        am = None if self.am is None else self.am[b0:b1]
        return invalid_cells(am, (r0, r1), (c0, self.cols), self.device)

    def valid_at(self, b: Tensor, c: Tensor, i: Tensor, x: Tensor) -> Tensor:
        """Which cells ``(b, c, i, x)`` (cell coordinates) are valid; raises if out of range.

        The same rules as :meth:`invalid_block` (``invalid_cells``, ``band_mask``), read at a
        list of cells instead of over a block (tests hold the two together).
        """
        bad = (b < 0) | (b >= self.batch) | (c < 0) | (c >= self.types) | (i < 0) | (i >= self.rows)
        if self.kind in ("all", "mask"):
            bad |= (x < 0) | (x >= self.cols)
        if bool(bad.any()):
            raise ValueError("span index out of range of the logits")
        if self.kind == "all":
            return torch.ones_like(b, dtype=torch.bool)
        if self.kind == "mask":
            return ~self.invalid[b, c, i, x]
        if self.kind == "band":
            ok = (x >= 0) & (x < self.width) & (i + x < self.rows)
            xs = x.clamp(0, self.width - 1)
            return ok & ~self.invalid[b.clamp(max=self.invalid.shape[0] - 1), 0, i, xs]
        ok = (x >= i) & (x < self.cols)
        if self.am is None:
            return ok
        return ok & self.am[b, i] & self.am[b, x.clamp(max=self.cols - 1)]


class GoldCells:
    """Gold cells sorted by block: flat indices into each block's cells and their groups."""

    def __init__(self, layout: BlockLayout, cells: Tensor):
        b, c, i, x = cells.long().reshape(-1, 4).to(layout.device).unbind(-1)
        keep = layout.valid_at(b, c, i, x)
        b, c, i, x = b[keep], c[keep], i[keep], x[keep]
        rows, cols, types = layout.rows, layout.cols, layout.types
        flat = torch.unique(((b * types + c) * rows + i) * cols + x)  # deduplicated
        if len(layout.blocks) == 1:  # the block is every cell: flat indices are the block's
            self.group = flat // (cols * rows)  # b * C + c
            self.groups, self.flat, self.sizes = [self.group], [flat], [len(flat)]
            return
        x = flat % cols
        i = (flat // cols) % rows
        group = flat // (cols * rows)  # b * C + c
        b = group // types
        # Block of each cell: blocks are listed row band by row band, batch groups inside.
        blocks = torch.tensor(layout.blocks, device=layout.device).reshape(-1, 5)
        b0, b1, r0, r1, c0 = blocks.unbind(-1)
        inside = (b[:, None] >= b0) & (b[:, None] < b1) & (i[:, None] >= r0) & (i[:, None] < r1)
        block = inside.float().argmax(-1) if len(b) else b
        order = torch.argsort(block, stable=True)
        block, group, b, i, x = block[order], group[order], b[order], i[order], x[order]
        b0, r0, c0 = b0[block], r0[block], c0[block]
        r = (r1 - blocks[:, 2])[block]
        within = (((b - b0) * types + group % types) * r + (i - r0)) * (cols - c0) + (x - c0)
        sizes = torch.bincount(block, minlength=len(layout.blocks)).tolist()
        self.group = group  # (N,) in block order
        self.groups = list(group.split(sizes))  # per block
        self.flat = list(within.split(sizes))  # per block
        self.sizes = sizes
