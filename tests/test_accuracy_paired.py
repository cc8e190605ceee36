"""The accuracy reports' statistics (benchmarks/accuracy/paired.py): the t distribution and
Holm's correction against known values, paired tests and verdicts computed from the numbers.
(One-sided tests and bounds: tests/test_accuracy_v3.py.)"""

import math

import pytest

from benchmarks.accuracy import paired as P

# Two-sided 95 % quantiles of Student's t (printed tables), df = 1..5, 10, 30.
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 10: 2.228, 30: 2.042}


@pytest.mark.parametrize("df", sorted(T975))
def test_t_distribution_matches_printed_tables(df):
    assert P.t_quantile(0.975, df) == pytest.approx(T975[df], abs=1e-3)
    assert P.t_two_sided_p(T975[df], df) == pytest.approx(0.05, abs=2e-4)


def test_t_distribution_closed_forms_and_properties():
    # df = 1 is the Cauchy distribution: P(|T| >= t) = 1 - 2 atan(t) / pi; df = 2 has
    # P(|T| >= t) = 1 - t / sqrt(2 + t^2).
    for t in (0.0, 0.3, 1.0, 4.0, 50.0):
        assert P.t_two_sided_p(t, 1) == pytest.approx(1 - 2 * math.atan(t) / math.pi, abs=1e-12)
        assert P.t_two_sided_p(t, 2) == pytest.approx(1 - t / math.sqrt(2 + t * t), abs=1e-12)
    # Decreasing in |t|, symmetric, and tending to the normal tail for large df.
    ps = [P.t_two_sided_p(t, 4) for t in (0, 0.5, 1, 2, 4, 8)]
    assert ps[0] == 1.0 and all(a > b for a, b in zip(ps, ps[1:]))
    assert P.t_two_sided_p(-2.0, 4) == P.t_two_sided_p(2.0, 4)
    assert P.t_two_sided_p(1.96, 10_000) == pytest.approx(0.05, abs=1e-3)
    assert P.betainc(2.0, 3.0, 0.4) == pytest.approx(0.5248, abs=1e-4)  # 1 - sum of binomials
    with pytest.raises(ValueError):
        P.betainc(1.0, 1.0, 1.5)


def test_holm_step_down():
    # Sorted 0.005, 0.01, 0.03, 0.04 of m = 4: x4, x3, x2, x1, kept monotone; None is not counted.
    out = P.holm([0.01, 0.04, None, 0.03, 0.005])
    assert out[2] is None
    assert [out[k] for k in (0, 1, 3, 4)] == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert P.holm([0.9, 0.8]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert P.holm([]) == []


def test_paired_test_and_verdicts():
    t = P.paired({1: 0.70, 2: 0.71, 3: 0.72, 9: 0.5}, {1: 0.68, 2: 0.70, 3: 0.69})
    assert t.seeds == (1, 2, 3) and t.diffs == pytest.approx((0.02, 0.01, 0.03))
    assert t.mean == pytest.approx(0.02) and t.sd == pytest.approx(0.01)
    lo, hi = t.interval
    assert (lo + hi) / 2 == pytest.approx(0.02)
    assert hi - lo == pytest.approx(2 * 4.303 * 0.01 / math.sqrt(3), rel=1e-3)
    assert t.p == pytest.approx(P.t_two_sided_p(0.02 / (0.01 / math.sqrt(3)), 2))
    assert (t.wins, t.losses) == (3, 0)
    assert P.verdict(t, 0.01) == "holds" and P.verdict(t, 0.2) == "unresolved"
    worse = P.paired({1: 0.6, 2: 0.6}, {1: 0.7, 2: 0.71})
    assert P.verdict(worse, 0.04) == "refuted"
    one = P.paired({1: 0.9}, {1: 0.1})
    assert one.p is None and one.interval is None and P.verdict(one, None) == "unresolved"
    same = P.paired({1: 0.5, 2: 0.6}, {1: 0.4, 2: 0.5})  # every seed +0.1
    assert same.p == 0.0
