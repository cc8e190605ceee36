"""Paired comparisons for the accuracy reports: per-seed differences, their 95 % t-interval, a
two-sided and a one-sided paired t-test with one-sided confidence bounds, Holm's step-down
correction, and the verdict labels computed from them.

Pure Python (no SciPy): the Student t distribution through the regularised incomplete beta
function, evaluated by its continued fraction (Lentz's method).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

LEVEL = 0.05  # family-wise error rate of the Holm correction; 95 % intervals

HOLDS, REFUTED, UNRESOLVED = "holds", "refuted", "unresolved"


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, eps = 1e-300, 3e-16
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b), for a, b > 0 and 0 <= x <= 1."""
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"betainc: x must be in [0, 1], got {x}")
    if x in (0.0, 1.0):
        return x
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    front = math.exp(log_front)
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_two_sided_p(t: float, df: int) -> float:
    """P(|T| >= |t|) for Student's t with ``df`` degrees of freedom."""
    if df < 1:
        raise ValueError(f"t_two_sided_p: df must be >= 1, got {df}")
    if math.isinf(t):
        return 0.0
    return betainc(df / 2.0, 0.5, df / (df + t * t))


def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile (0.5 < p < 1) of Student's t, by bisection on :func:`t_two_sided_p`."""
    if not 0.5 < p < 1.0:
        raise ValueError(f"t_quantile: p must be in (0.5, 1), got {p}")
    target = 2.0 * (1.0 - p)
    lo, hi = 0.0, 1.0
    while t_two_sided_p(hi, df) > target:
        hi *= 2.0
    for _ in range(200):
        mid = (lo + hi) / 2.0
        if t_two_sided_p(mid, df) > target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2.0


@dataclass(frozen=True)
class PairedTest:
    """Per-seed differences a - b, their mean, 95 % t-interval and two-sided t-test p-value
    (interval and p are None with fewer than 2 pairs)."""

    seeds: tuple[int, ...]
    diffs: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.diffs)

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.diffs) if self.diffs else None

    @property
    def sd(self) -> float | None:
        return statistics.stdev(self.diffs) if self.n >= 2 else None

    @property
    def interval(self) -> tuple[float, float] | None:
        if self.n < 2:
            return None
        half = t_quantile(1 - LEVEL / 2, self.n - 1) * self.sd / math.sqrt(self.n)
        return self.mean - half, self.mean + half

    @property
    def p(self) -> float | None:
        if self.n < 2:
            return None
        if self.sd == 0.0:  # every seed moved by the same amount
            return 1.0 if self.mean == 0.0 else 0.0
        return t_two_sided_p(self.mean / (self.sd / math.sqrt(self.n)), self.n - 1)

    @property
    def t(self) -> float | None:
        """The paired t statistic (+-inf when every seed moved by the same non-zero amount)."""
        if self.n < 2:
            return None
        if self.sd == 0.0:
            return 0.0 if self.mean == 0.0 else math.copysign(math.inf, self.mean)
        return self.mean / (self.sd / math.sqrt(self.n))

    @property
    def p_greater(self) -> float | None:
        """One-sided p-value of "a - b > 0": P(T >= t) under a zero mean difference."""
        t = self.t
        if t is None:
            return None
        if math.isinf(t):
            return 0.0 if t > 0 else 1.0
        tail = t_two_sided_p(t, self.n - 1) / 2.0
        return tail if t > 0 else 1.0 - tail

    def bound(self, side: str, level: float = LEVEL) -> float | None:
        """One-sided ``1 - level`` confidence bound of the mean difference: "lower" (the mean is
        above it) or "upper" (the mean is below it); None with fewer than 2 pairs."""
        if self.n < 2:
            return None
        half = t_quantile(1 - level, self.n - 1) * self.sd / math.sqrt(self.n)
        return self.mean - half if side == "lower" else self.mean + half

    @property
    def wins(self) -> int:
        return sum(d > 0 for d in self.diffs)

    @property
    def losses(self) -> int:
        return sum(d < 0 for d in self.diffs)


def paired(a: dict[int, float], b: dict[int, float]) -> PairedTest:
    """:class:`PairedTest` of ``a - b`` over the seeds both have."""
    seeds = tuple(sorted(set(a) & set(b)))
    return PairedTest(seeds, tuple(a[s] - b[s] for s in seeds))


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjusted p-values (None stays None and is not counted in the family)."""
    indexed = sorted((p, k) for k, p in enumerate(pvalues) if p is not None)
    m = len(indexed)
    out: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, (p, k) in enumerate(indexed):
        running = max(running, min(1.0, (m - rank) * p))
        out[k] = running
    return out


def verdict(test: PairedTest, adjusted_p: float | None) -> str:
    """ "holds" (a - b > 0, Holm-adjusted p < 0.05), "refuted" (a - b < 0, adjusted p < 0.05),
    else "unresolved" (also with fewer than 2 paired seeds)."""
    if adjusted_p is None or test.mean is None or adjusted_p >= LEVEL:
        return UNRESOLVED
    return HOLDS if test.mean > 0 else REFUTED
