"""The cache-blocked engine behind every loss and divergence on GlobalPointer logits.

Every loss and divergence here is a sum over the valid cells of each (example, type) of an
elementwise function of one or two logits, plus, for the cross-entropy, a log-sum-exp. So they
can all walk the cells in blocks ``[b0, b1) x [r0, r1) x [c0, M)``: a block of
(Bg, C, r, M - c0) cells fits in cache, is computed (by a matmul from factors, or copied from
materialised logits) into a fresh buffer, used in place, and dropped. Backward recomputes the
block and turns its gradient into dq/dk (factors) or writes it into the logits' gradient. Small
problems (up to ``engine.KEEP_CELLS`` kept cells, e.g. a batch of short sentences) instead keep
the parts of each block's gradient from forward, so backward only weights them; up to
``BlockLayout.SINGLE`` blocks' worth of cells they are one block (one matmul per source, no
per-block bookkeeping).

Two facts of CPU kernels shape the arithmetic: masked_fill with a broadcast mask is several
times slower than adding a broadcast 0/-inf bias or multiplying by a 0/1 mask, and exp is much
slower on -inf and on arguments that underflow. So invalid cells are excluded by a bias (for
maxima) or a 0/1 factor (for sums and gradients), and exp arguments are clamped below at
log(tiny) (about -86 in float32): a valid cell that far below the maximum adds at most tiny
(1e-38) to a sum that is >= 1 instead of its even tinier true value, and excluded cells are
multiplied by 0 after the exp, so they add, and receive, exactly 0.

Modules: ``layout`` (which blocks exist, which cells are valid, where gold cells fall),
``sources`` (how a block's cells are produced and where its gradient goes), ``engine`` (the
autograd function running both passes), ``kernels`` (the optional torch.compile kernels and
their scoped switch). The readable definitions these compute are in
:mod:`gpner.functional.reference`; the tests hold the two together.
"""

from .engine import Inputs, Job, SpanLosses
from .layout import BlockLayout, GoldCells
from .sources import BandScores

__all__ = ["BandScores", "BlockLayout", "GoldCells", "Inputs", "Job", "SpanLosses"]
