"""Switches of how gpner computes, scoped to a ``with`` block (never process-wide flags)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from gpner.functional import recurrent
from gpner.functional._blocked import kernels

__all__ = ["compiled_kernels", "compiled_kernels_enabled", "packed_recurrence"]


@contextmanager
def compiled_kernels(enabled: bool = True) -> Iterator[None]:
    """Inside the block, the blocked losses use ``torch.compile``-fused kernels.

    Results equal the eager code's up to rounding. Compilation is lazy: the first loss call
    compiles (seconds to tens of seconds on a CPU; new size patterns add a few), later calls and
    later blocks reuse it. If compilation fails (e.g. no C++ compiler) a ``RuntimeWarning`` says
    so and the same kernels run uncompiled until the block ends; the next block tries again.
    ``enabled=False`` selects the eager code (the default outside any block). Nested blocks
    override outer ones; the setting is per thread / async context and is restored on exit.
    The kernels chosen at a loss's forward also run its backward.
    """
    with kernels.kernel_mode("compiled" if enabled else "eager"):
        yield


def compiled_kernels_enabled() -> bool:
    """Whether the current context runs the compiled (or fallback) kernels."""
    return kernels.current() is not None


@contextmanager
def packed_recurrence(enabled: bool = True) -> Iterator[None]:
    """Inside the block, BiLSTM layers run packed (``torch.nn.utils.rnn``), step by step.

    The same function as the default unpacked run (every row from its own first and last token),
    equal up to rounding; the default is faster, so this exists to measure one against the other
    and to check a result. Per thread / async context, restored on exit.
    """
    token = recurrent.PACKED.set(enabled)
    try:
        yield
    finally:
        recurrent.PACKED.reset(token)
