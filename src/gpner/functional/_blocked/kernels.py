"""Optional torch.compile-fused block kernels, and the scoped switch that selects them.

The eager block code costs about 15-30 elementwise passes per block; the same arithmetic written
as pure functions lets torch.compile fuse it into a few loops, which pays off where the
elementwise part dominates (the Efficient head, long texts). Opt-in, because the first call
compiles (seconds to tens of seconds, plus a little for new size patterns) and needs a C++
compiler; the eager code stays the default. Data-dependent work (the gold cells) stays eager:
before the forward kernel they are set to -inf (so the kernels exclude them like invalid cells),
and after the backward kernel their exact gradients are written in.

The switch is a :class:`contextvars.ContextVar`, set only by :func:`kernel_mode` for the extent
of a ``with`` block (public form: :func:`gpner.backends.compiled_kernels`). A compilation failure
is reported with a warning and the uncompiled kernels (same arithmetic) serve the rest of that
``with`` block only; the next block tries to compile again.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from torch import Tensor

from ..cells import gp_kl_cell, gp_kl_cell_grad

NEG_INF = float("-inf")
MODES = ("eager", "compiled", "python")  # "python": the kernels uncompiled (tests, fallback)


def forward_kernel(x0: Tensor, x1: Tensor | None, bias: Tensor | None, floor: float, ce: bool):
    """Forward sums of one block. Excluded cells (invalid or gold) are -inf in ``x + bias``.

    Returns ``(kl, m0, s0, m1, s1)``: the divergence summed over the block (None without
    ``x1``), and per source the maximum of the cells and the sum of ``exp(x - max)``
    (``s1``/``m1`` None without ``x1``); all (Bg, C).
    """
    y0 = x0 if bias is None else x0 + bias
    out = [None]
    ys = [y0]
    if x1 is not None:
        y1 = x1 if bias is None else x1 + bias
        ys.append(y1)
        # -inf - -inf is NaN on excluded cells: replaced, never summed.
        out[0] = torch.where(y0 == NEG_INF, 0.0, gp_kl_cell(y0, y1)).sum(dim=(-2, -1))
    for y in ys if ce else []:
        m = y.amax(dim=(-2, -1), keepdim=True)
        shift = torch.where(m == NEG_INF, 0.0, m)
        e = torch.exp(torch.clamp(y - shift, min=floor))
        e = torch.where(y == NEG_INF, 0.0, e)
        out += [m.squeeze(-1).squeeze(-1), e.sum(dim=(-2, -1))]
    out += [None] * (5 - len(out))
    return tuple(out)


def backward_kernel(
    x0: Tensor,
    x1: Tensor | None,
    bias: Tensor | None,
    neg0: Tensor | None,
    neg1: Tensor | None,
    w0: Tensor | None,
    w1: Tensor | None,
    w_kl: Tensor | None,
    want0: bool,
    want1: bool,
    floor: float,
):
    """Gradients of one block's cells: cross-entropy negatives (weights ``w0``/``w1`` (Bg, C,
    1, 1), log-normalisers ``neg0``/``neg1``) plus the divergence (``w_kl``); 0 on invalid cells
    (-inf in ``bias``). Gold cells come out wrong and are overwritten by the caller."""
    kl = (None, None) if w_kl is None else gp_kl_cell_grad(x0, x1, (want0, want1))
    grads = []
    for want, x, neg, w, g_kl in ((want0, x0, neg0, w0, kl[0]), (want1, x1, neg1, w1, kl[1])):
        if not want:
            grads.append(None)
            continue
        g = torch.zeros_like(x) if g_kl is None else g_kl * w_kl
        if w is not None:
            g = g + torch.exp(torch.clamp(x - neg, min=floor, max=0.0)) * w
        if bias is not None:
            g = torch.where(bias == NEG_INF, 0.0, g)
        grads.append(g)
    return tuple(grads)


KERNELS: dict[str, Callable] = {"fwd": forward_kernel, "bwd": backward_kernel}
_compiled: dict[str, Callable] = {}  # torch.compile wrappers, made once per process


class Session:
    """The kernel choice of one :func:`kernel_mode` block; falls back inside it only."""

    def __init__(self, mode: str):
        self.mode = mode


_session: ContextVar[Session | None] = ContextVar("gpner_kernel_session", default=None)


@contextmanager
def kernel_mode(mode: str) -> Iterator[None]:
    """Blocked losses computed inside the ``with`` block use ``mode``'s kernels.

    ``"eager"``: the in-place eager block code (the default outside any block); ``"compiled"``:
    torch.compile-fused kernels; ``"python"``: the same kernels uncompiled.
    """
    if mode not in MODES:
        raise ValueError(f"kernel mode must be one of {MODES}, got {mode!r}")
    token = _session.set(None if mode == "eager" else Session(mode))
    try:
        yield
    finally:
        _session.reset(token)


def current() -> Session | None:
    """The active kernel session, or None for the eager code."""
    return _session.get()


def run(session: Session, name: str, *args):
    """Call kernel ``name`` of ``session``; a compilation failure is warned about and served by
    the uncompiled kernel for the rest of the session."""
    if session.mode == "compiled":
        if name not in _compiled:
            _compiled[name] = torch.compile(KERNELS[name], dynamic=True)
        try:
            return _compiled[name](*args)
        except Exception as error:  # torch.compile backends raise many types
            warnings.warn(
                f"compiled loss kernels failed ({error!r}); using the uncompiled kernels until "
                "this compiled_kernels() block ends",
                RuntimeWarning,
                stacklevel=2,
            )
            session.mode = "python"
    return KERNELS[name](*args)
