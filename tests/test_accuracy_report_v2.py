"""The v2 accuracy report (benchmarks/accuracy/report_v2.py) and its statistics (paired.py):
t distribution and Holm correction against known values, verdicts computed from the numbers,
bracketing of the alpha searches, the regulariser-strength table and the plot, from fake result
JSONs. Seconds, no training."""

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

ACCURACY = Path(__file__).resolve().parents[1] / "benchmarks" / "accuracy"


def _load(name, filename):
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ACCURACY / filename)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


R2 = _load("gpner_accuracy_report_v2", "report_v2.py")
P, G, V2 = R2.P, R2.G, R2.V2


# ------------------------------------------------------------------------------ statistics

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


# ------------------------------------------------------------------------------ the report


def _fake(entry, val, test=None, epochs=6, alpha=None, probe=None):
    cell = entry.cell
    curve = [val * (k + 1) / epochs for k in range(epochs)]
    history = [
        {
            "epoch": k + 1,
            "train_loss": 1.0,
            "train_ce": 0.9,
            "train_reg": 0.1 / (alpha or 1.0) if alpha else 0.0,
            "dev": {"micro": {"f1": f1}},
        }
        for k, f1 in enumerate(curve)
    ]
    return {
        "cell": cell.id,
        "stage": cell.stage,
        "variant": cell.variant,
        "seed": cell.seed,
        "regularizer": {"kind": cell.kind, "alpha": entry.alpha, "epsilon": entry.epsilon},
        "config": G.config_to_dict(entry.config),
        "validation": {"f1": val, "best_epoch": epochs},
        "test": None if test is None else {"f1": test},
        "epochs": epochs,
        "history": history,
        "timing": {"train_seconds": 100.0 * epochs, "train_seconds_per_epoch": 100.0},
        "probe": probe,
        "finished_at": "2026-01-02T03:04:05+00:00",
    }


def _write(results, entry, *args, **kwargs):
    G.atomic_write_json(G.result_path(results, entry.cell), _fake(entry, *args, **kwargs))


def _fill_char_grid(results, finals):
    """Search: gp_kl best at the smallest alpha but below alpha 0; softmax_kl interior at 1/16.
    Then finals: ``finals[variant]`` = test F1 per seed 1..5."""
    blocks = V2.blocks()[:1]
    entries = {e.cell.id: e for e in G.plan(blocks, results)}
    curves = {
        "rdrop-gp_kl": [0.61, 0.60, 0.58, 0.55, 0.50, 0.40],
        "rdrop-softmax_kl": [0.58, 0.59, 0.60, 0.62, 0.61, 0.57],
    }
    for e in entries.values():
        if e.cell.stage != "search" or e.status == "unavailable":
            continue
        if e.cell.variant in curves:
            k = list(V2.CHAR_ALPHAS).index(e.cell.alpha)
            _write(results, e, curves[e.cell.variant][k] + (e.cell.seed - 101) * 0.002)
        elif e.cell.variant == "rdrop-none":
            _write(results, e, 0.615)
        elif e.cell.variant == "baseline":
            _write(results, e, 0.57)
    entries = {e.cell.id: e for e in G.plan(blocks, results)}
    for variant, f1s in finals.items():
        for seed, f1 in enumerate(f1s, start=1):
            e = entries[f"cluener-char-v2/final/{variant}/s{seed}"]
            assert e.status == "pending", (e.cell.id, e.status)
            probe = None
            if variant in ("rdrop-gp_kl", "rdrop-softmax_kl"):
                probe = {"median_share": 0.02, "median_grad_ratio": 0.1, "median_grad_cosine": 0.3}
            _write(results, e, f1 - 0.01, f1, alpha=e.alpha, probe=probe)
    return blocks


def test_report_v2_verdicts_brackets_and_strength(tmp_path):
    results = tmp_path / "results"
    base = [0.600, 0.605, 0.610, 0.602, 0.608]
    blocks = _fill_char_grid(
        results,
        {
            "baseline": base,
            # +2 points on every seed, within +-0.1: survives Holm over the family.
            "rdrop-gp_kl": [b + d for b, d in zip(base, (0.020, 0.021, 0.019, 0.020, 0.020))],
            # softmax_kl: 3 points better than gp_kl on every seed, so (c) is refuted.
            "rdrop-softmax_kl": [b + d for b, d in zip(base, (0.050, 0.051, 0.049, 0.05, 0.05))],
            # rdrop-none: noisy around gp_kl, so (b) for gp_kl is unresolved.
            "rdrop-none": [b + d for b, d in zip(base, (0.03, 0.00, 0.04, 0.01, 0.02))],
        },
    )
    out = R2.build_report(blocks, results, tmp_path / "REPORT-v2.md", png_name="r.png")
    text = out.read_text()
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![learning curves, alpha searches and test F1](r.png)" in text
    # Alpha choices by the mean of the two search seeds; brackets say where the best is.
    assert "| 1/1024 | **61.10 (61.00, 61.20)** |" in text
    assert "alpha -> 0 is best: rdrop-none (61.50) ≥ the smallest alpha (61.10)" in text
    assert "R-Drop + softmax_kl: interior optimum (bracketed)." in text
    assert "| 0 (rdrop-none) | 61.50 (61.50, 61.50) |" in text
    # Verdicts from the numbers, Holm over the comparisons that have >= 2 seeds (4 here).
    assert "Holm's correction across all 4 comparisons" in text
    assert "| (a) | R-Drop + gp_kl beats baseline | 5 | +2.00 [" in text
    row = next(
        line for line in text.splitlines() if "| (a) | R-Drop + gp_kl beats baseline |" in line
    )
    assert row.endswith("| **holds** |")
    row = next(line for line in text.splitlines() if "beats R-Drop + softmax_kl |" in line)
    assert row.endswith("| **refuted** |") and "| 0/5 |" in row
    row = next(
        line for line in text.splitlines() if "| (b) | R-Drop + gp_kl beats R-Drop, no" in line
    )
    assert row.endswith("| **unresolved** |")
    assert "**holds** +2.00 (n=5)" in text  # the overview matrix
    # The conclusion is generated from the verdicts.
    assert (
        "Of 4 comparisons with at least two paired seeds, after the Holm correction: 2 hold, "
        "1 refuted, 1 unresolved"
    ) in text
    assert "the data do not show that the divergence, rather than the second dropout pass" in text
    assert "Nowhere is gp_kl shown to be better than a softmax KL" in text
    # Strength at the chosen alpha: training share alpha*reg/loss = 0.1, probe numbers.
    assert "| R-Drop + gp_kl | 1/1024 | 5 | 10.00 % | 2.00 % | 0.100 | +0.30 |" in text
    # Convergence columns: 6 epochs of 20 allowed, best at the last epoch in every fake cell.
    assert "| 6.0 / 20 | 0, 5 |" in text
    assert "## Limitations" in text and "smaller than BERT-base" in text
    assert "Block 1 (CLUENER, char Transformer: baseline and R-Drop): " in text
    assert "h of cell time left (measured epoch times, dry-run estimate)" in text
    # One command, same JSONs: the same file.
    again = R2.build_report(blocks, results, tmp_path / "again.md", png_name="r.png").read_text()
    assert again.replace("again.md", "REPORT-v2.md") == text


def test_report_v2_without_results_says_nothing_can_be_concluded(tmp_path):
    text = R2.build_report(V2.blocks(), tmp_path, tmp_path / "R.md").read_text()
    assert "nothing can be concluded" in text and "No finished cells yet, so no plot." in text
    assert "unresolved (no seeds)" in text
    assert "Compute left in all: about " in text


def test_report_v2_cli_writes_its_own_files(tmp_path):
    assert R2.main(["--results", str(tmp_path), "--out", str(tmp_path / "R.md")]) == 0
    assert (tmp_path / "R.md").is_file()
    json.dumps(R2.QUESTIONS)  # the three questions are plain data
