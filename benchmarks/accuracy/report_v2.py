#!/usr/bin/env python3
"""Write ``REPORT-v2.md`` and ``report-v2.png`` from the result JSONs of design v2 (issue 16).

    python3 benchmarks/accuracy/report_v2.py [--results DIR] [--out REPORT-v2.md]

Every number, verdict and sentence is computed from the JSONs: three questions per grid, each
answered by paired per-seed differences of test F1 with 95 % t-intervals, a paired t-test and a
Holm correction across every comparison in the report; the alpha searches with whether their
optimum is bracketed; how strongly each regulariser acts at its chosen alpha; learning curves;
and, for unfinished blocks, the compute they still need (the dry run's estimate).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import accuracy_grid as G  # noqa: E402
import grid_v2 as V2  # noqa: E402
import paired as P  # noqa: E402
from report import _as_of, _flat, _rel, pts, table  # noqa: E402

NAMES = {
    "baseline": "baseline",
    "baseline-2x": "baseline, compute-matched (2x epochs)",
    "rdrop-none": "R-Drop, no divergence (alpha 0)",
    "rdrop-gp_kl": "R-Drop + gp_kl",
    "rdrop-softmax_kl": "R-Drop + softmax_kl",
    "rdrop-softmax_kl_all": "R-Drop + softmax_kl_all",
    "vat-gp_kl": "VAT + gp_kl",
    "vat-softmax_kl": "VAT + softmax_kl",
}
ORDER = list(NAMES)
QUESTIONS = {
    "a": "Does R-Drop beat the baseline?",
    "b": "Does the divergence add anything beyond the second pass?",
    "c": "Is gp_kl better than softmax_kl and softmax_kl_all?",
}
# (question, better-claimed variant, other variant): the claim is "a beats b" on test F1.
COMPARISONS = (
    ("a", "rdrop-gp_kl", "baseline"),
    ("a", "rdrop-gp_kl", "baseline-2x"),
    ("b", "rdrop-gp_kl", "rdrop-none"),
    ("b", "rdrop-softmax_kl", "rdrop-none"),
    ("b", "rdrop-softmax_kl_all", "rdrop-none"),
    ("c", "rdrop-gp_kl", "rdrop-softmax_kl"),
    ("c", "rdrop-gp_kl", "rdrop-softmax_kl_all"),
    ("a", "vat-gp_kl", "baseline"),
    ("c", "vat-gp_kl", "vat-softmax_kl"),
)
LIMITATIONS = (
    "The encoders are smaller than BERT-base (m3e-small, all-MiniLM-L6-v2, a 2-layer char "
    "Transformer trained from scratch); the article's setting may behave differently.",
    "CPU-only budgets: few seeds (5 on the char grid, 3 on the pretrained grids), maximum epoch "
    "counts chosen for a shared 2-core machine, and epoch times that depend on what else ran.",
    "CMeEE-V2's test labels are not public: its grid trains on CMeEE-V2_dev.json[:4000] and tests "
    "on [4000:] (1000 examples); CLUENER's test set is its dev file for the same reason.",
    "The learning rate decays linearly over the maximum epoch count, so early stopping mostly "
    "ends cells near that maximum; a cell whose best epoch is its last may be undertrained (the "
    "results tables count them).",
    "Alpha is chosen on two search seeds; with more, a neighbouring value could win.",
    "Verdicts concern test micro F1 only, with a paired t-test per comparison; with 3 seeds a "
    "difference must be very consistent to survive the Holm correction.",
)


# ------------------------------------------------------------------------------ collecting


@dataclass
class GridData:
    grid: G.Grid
    blocks: list[G.Block]
    variants: list[str]
    entries: list[G.PlanEntry] = field(default_factory=list)

    def finals(self, variant: str) -> dict[int, dict[str, Any]]:
        return {
            e.cell.seed: e.result
            for e in self.entries
            if e.cell.stage == "final" and e.cell.variant == variant and e.status == "done"
        }

    def test_f1(self, variant: str) -> dict[int, float]:
        return {s: r["test"]["f1"] for s, r in self.finals(variant).items() if r.get("test")}

    def search(self, variant: str) -> list[G.PlanEntry]:
        return [e for e in self.entries if e.cell.stage == "search" and e.cell.variant == variant]

    def chosen(self, variant: str) -> tuple[float | None, float | None] | None:
        for e in self.entries:
            if e.cell.stage == "final" and e.cell.variant == variant and e.config is not None:
                return e.alpha, e.epsilon
        return None


def collect(blocks: Sequence[G.Block], results_dir: Path) -> tuple[list[GridData], list]:
    entries = G.plan(blocks, results_dir)
    grids: dict[str, GridData] = {}
    for block in blocks:
        data = grids.setdefault(block.grid.name, GridData(block.grid, [], []))
        data.blocks.append(block)
        data.variants = [v for v in ORDER if v in set(data.variants) | set(block.variants)]
    for entry in entries:
        grids[entry.cell.grid.name].entries.append(entry)
    return list(grids.values()), entries


def title(grid: G.Grid) -> str:
    return f"{grid.dataset} / {grid.encoder}"


# ------------------------------------------------------------------------------ verdicts


@dataclass
class Comparison:
    grid: GridData
    question: str
    a: str
    b: str
    test: P.PairedTest
    adjusted_p: float | None = None

    @property
    def verdict(self) -> str:
        return P.verdict(self.test, self.adjusted_p)

    @property
    def claim(self) -> str:
        return f"{NAMES[self.a]} beats {NAMES[self.b]}"


def comparisons(grids: Sequence[GridData]) -> list[Comparison]:
    """Every comparison whose two variants are in a grid, Holm-adjusted over all of them."""
    out = [
        Comparison(data, q, a, b, P.paired(data.test_f1(a), data.test_f1(b)))
        for data in grids
        for q, a, b in COMPARISONS
        if a in data.variants and b in data.variants
    ]
    for c, p in zip(out, P.holm([c.test.p for c in out])):
        c.adjusted_p = p
    return out


def _p(p: float | None) -> str:
    if p is None:
        return "–"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _interval(t: P.PairedTest) -> str:
    if t.mean is None:
        return "no paired seeds"
    if t.interval is None:
        return f"{pts(t.mean, True)} (1 seed)"
    lo, hi = t.interval
    return f"{pts(t.mean, True)} [{pts(lo, True)}, {pts(hi, True)}]"


def verdict_rows(found: Sequence[Comparison]) -> list[list[str]]:
    return [
        [
            f"({c.question})",
            c.claim,
            str(c.test.n),
            _interval(c.test),
            f"{c.test.wins}/{c.test.losses}",
            _p(c.test.p),
            _p(c.adjusted_p),
            f"**{c.verdict}**",
        ]
        for c in found
    ]


VERDICT_HEADER = [
    "q",
    "claim (test F1)",
    "paired seeds",
    "mean Δ [95 % CI] (points)",
    "wins/losses",
    "p",
    "Holm p",
    "verdict",
]


SHORT = {
    ("rdrop-gp_kl", "baseline"): "(a) vs baseline",
    ("rdrop-gp_kl", "baseline-2x"): "(a) vs baseline-2x",
    ("rdrop-gp_kl", "rdrop-none"): "(b) gp_kl",
    ("rdrop-softmax_kl", "rdrop-none"): "(b) softmax_kl",
    ("rdrop-softmax_kl_all", "rdrop-none"): "(b) softmax_kl_all",
    ("rdrop-gp_kl", "rdrop-softmax_kl"): "(c) vs softmax_kl",
    ("rdrop-gp_kl", "rdrop-softmax_kl_all"): "(c) vs softmax_kl_all",
    ("vat-gp_kl", "baseline"): "VAT (a) vs baseline",
    ("vat-gp_kl", "vat-softmax_kl"): "VAT (c) vs softmax_kl",
}


def overview(grids: Sequence[GridData], found: Sequence[Comparison]) -> list[str]:
    """One row per grid, one column per comparison: the verdict and the mean difference."""
    columns = [(a, b) for _, a, b in COMPARISONS if any(c.a == a and c.b == b for c in found)]
    rows = []
    for data in grids:
        row = [title(data.grid)]
        for a, b in columns:
            c = next((c for c in found if c.grid is data and (c.a, c.b) == (a, b)), None)
            if c is None:
                row.append("–")
            elif c.test.mean is None:
                row.append("unresolved (no seeds)")
            else:
                row.append(f"**{c.verdict}** {pts(c.test.mean, True)} (n={c.test.n})")
        rows.append(row)
    return table(["grid"] + [SHORT[k] for k in columns], rows)


def conclusion(found: Sequence[Comparison]) -> list[str]:
    """The "what we conclude" paragraph, from the verdicts alone."""
    if not any(c.test.n for c in found):
        return ["No comparison has paired final cells yet, so nothing can be concluded."]
    sentences = []
    by_grid: dict[str, list[Comparison]] = {}
    for c in found:
        if c.test.n:
            by_grid.setdefault(title(c.grid.grid), []).append(c)
    for name, items in by_grid.items():
        parts = []
        for q in QUESTIONS:
            mine = [c for c in items if c.question == q]
            if not mine:
                continue
            held = [c for c in mine if c.verdict == P.HOLDS]
            refuted = [c for c in mine if c.verdict == P.REFUTED]
            words = []
            if held:
                words.append("supported for " + "; ".join(c.claim for c in held))
            if refuted:
                words.append("contradicted for " + "; ".join(c.claim for c in refuted))
            open_ = len(mine) - len(held) - len(refuted)
            if open_:
                words.append(f"{open_} of {len(mine)} comparison(s) unresolved")
            parts.append(f"({q}) " + ", ".join(words))
        sentences.append(f"**{name}:** " + "; ".join(parts) + ".")
    n = len([c for c in found if c.test.p is not None])
    held = sum(c.verdict == P.HOLDS for c in found)
    refuted = sum(c.verdict == P.REFUTED for c in found)
    summary = (
        f"Of {n} comparisons with at least two paired seeds, after the Holm correction: "
        f"{held} hold, {refuted} refuted, {n - held - refuted} unresolved"
    )
    b_gp = [c for c in found if c.question == "b" and c.a == "rdrop-gp_kl" and c.test.n]
    a_gp = [c for c in found if c.question == "a" and c.a == "rdrop-gp_kl" and c.test.n]
    if any(c.verdict == P.HOLDS for c in a_gp) and not any(c.verdict == P.HOLDS for c in b_gp):
        summary += (
            ". Where R-Drop + gp_kl beats a baseline, the data do not show that the divergence, "
            "rather than the second dropout pass, is what helps"
        )
    c_gp = [c for c in found if c.question == "c" and c.test.n]
    if c_gp and not any(c.verdict == P.HOLDS for c in c_gp):
        summary += ". Nowhere is gp_kl shown to be better than a softmax KL"
    return sentences + [summary + "."]


# ------------------------------------------------------------------------------ tables


def _mean(values: Sequence[float]) -> float | None:
    return statistics.fmean(values) if values else None


def results_table(data: GridData) -> list[str]:
    base_train = [r["timing"]["train_seconds"] for r in data.finals("baseline").values()]
    rows = []
    for v in data.variants:
        finals = data.finals(v)
        test = data.test_f1(v)
        chosen = data.chosen(v)
        alpha = "–"
        if chosen is not None and chosen[0] is not None:
            alpha = fmt_alpha(chosen[0]) + (f", ε {chosen[1]:g}" if chosen[1] is not None else "")
        elif chosen is None and G.VARIANTS[v][0] != "none":
            alpha = "search unfinished"
        ys = list(test.values())
        mean_std = "–"
        if ys:
            mean_std = pts(_mean(ys)) + (f" ± {pts(statistics.stdev(ys))}" if len(ys) > 1 else "")
        epochs = [r["epochs"] for r in finals.values()]
        cap = [r for r in finals.values() if r["validation"]["best_epoch"] == r["epochs"]]
        maximum = G.Cell(0, data.grid, "final", v, 1).epochs
        at_max = sum(r["epochs"] >= maximum for r in finals.values())
        train = [r["timing"]["train_seconds"] for r in finals.values()]
        cost = (
            f"{_mean(train) / _mean(base_train):.2f}x" if train and base_train else "–"
        )  # total training time, mean over seeds, relative to the baseline's
        rows.append(
            [
                NAMES[v],
                alpha,
                f"{len(ys)}",
                mean_std,
                pts(_mean([r["validation"]["f1"] for r in finals.values()])),
                f"{_mean(epochs):.1f} / {maximum}" if epochs else "–",
                f"{at_max}, {len(cap)}" if epochs else "–",
                cost,
            ]
        )
    header = [
        "variant",
        "alpha",
        "seeds",
        "test F1 mean ± std",
        "val F1 mean",
        "epochs run (mean / max)",
        "cells at max epochs, best at last epoch",
        "train time vs baseline",
    ]
    return table(header, rows)


@dataclass
class Bracket:
    variant: str
    best: float | None
    words: str
    bracketed: bool


def search_curve(data: GridData, variant: str) -> tuple[list, list[float], dict[tuple, dict]]:
    """(candidates in grid order, mean validation F1 over seeds, per-candidate seed scores)
    over candidates finished at every search seed."""
    seeds = data.grid.search_seed_list
    scores: dict[tuple, dict[int, float]] = {}
    for e in data.search(variant):
        key = (e.cell.alpha, e.cell.epsilon)
        scores.setdefault(key, {})
        if e.status == "done":
            scores[key][e.cell.seed] = e.result["validation"]["f1"]
    full = [k for k, v in scores.items() if len(v) == len(seeds)]
    return full, [statistics.fmean(scores[k].values()) for k in full], scores


def reference_score(data: GridData, variant: str) -> float | None:
    done = [e.result["validation"]["f1"] for e in data.search(variant) if e.status == "done"]
    return statistics.fmean(done) if len(done) == len(data.grid.search_seed_list) else None


def bracket(data: GridData, variant: str) -> Bracket:
    """Whether the best alpha of an R-Drop search is interior, or alpha -> 0 is best."""
    candidates, means, _ = search_curve(data, variant)
    every = data.grid.candidates(variant)
    if len(candidates) < len(every):
        return Bracket(variant, None, f"{len(candidates)} of {len(every)} candidates done", False)
    k = G.select_best(candidates, means)
    best = candidates[k][0]
    zero = reference_score(data, "rdrop-none")
    if k == len(candidates) - 1:
        return Bracket(variant, best, "best at the largest alpha: not bracketed above", False)
    if k > 0:
        return Bracket(variant, best, "interior optimum (bracketed)", True)
    if zero is None:
        return Bracket(variant, best, "best at the smallest alpha; alpha 0 not measured yet", False)
    if zero >= means[0]:
        return Bracket(
            variant,
            best,
            f"alpha -> 0 is best: rdrop-none ({pts(zero)}) ≥ the smallest alpha ({pts(means[0])})",
            True,
        )
    return Bracket(
        variant,
        best,
        f"best at the smallest alpha, above alpha 0 ({pts(zero)}): bracketed by 0",
        True,
    )


def search_table(data: GridData) -> list[str]:
    rdrop = [v for v in data.variants if v.startswith("rdrop-") and data.grid.searched(v)]
    lines: list[str] = []
    if rdrop:
        alphas = list(data.grid.rdrop_alphas)
        rows = []
        for alpha in alphas:
            row = [fmt_alpha(alpha)]
            for v in rdrop:
                _, _, scores = search_curve(data, v)
                got = scores.get((alpha, None), {})
                chosen = data.chosen(v)
                cell = _seed_scores(got, len(data.grid.search_seed_list))
                if chosen is not None and chosen[0] == alpha and cell != "–":
                    cell = f"**{cell}**"
                row.append(cell)
            rows.append(row)
        for ref in ("rdrop-none", "baseline"):
            if ref in data.variants:
                got = {
                    e.cell.seed: e.result["validation"]["f1"]
                    for e in data.search(ref)
                    if e.status == "done"
                }
                label = "0 (rdrop-none)" if ref == "rdrop-none" else "baseline"
                rows.append(
                    [label] + [_seed_scores(got, len(data.grid.search_seed_list))] * len(rdrop)
                )
        lines += table(["alpha"] + [NAMES[v] for v in rdrop], rows)
        lines.append("")
        for v in rdrop:
            b = bracket(data, v)
            lines.append(f"- {NAMES[v]}: {b.words}.")
        lines.append("")
    vat = [v for v in data.variants if v.startswith("vat-") and data.grid.searched(v)]
    for v in vat:
        _, _, scores = search_curve(data, v)
        chosen = data.chosen(v)
        rows = []
        for alpha in data.grid.vat_alphas:
            row = [fmt_alpha(alpha)]
            for eps in data.grid.vat_epsilons:
                cell = _seed_scores(scores.get((alpha, eps), {}), len(data.grid.search_seed_list))
                if chosen == (alpha, eps) and cell != "–":
                    cell = f"**{cell}**"
                row.append(cell)
            rows.append(row)
        lines += [f"{NAMES[v]} (rows alpha, columns epsilon):", ""]
        lines += table(["alpha \\ epsilon"] + [f"{e:g}" for e in data.grid.vat_epsilons], rows)
        lines += ["", f"- {NAMES[v]}: {_vat_bracket(data, v)}.", ""]
    return lines


def _seed_scores(got: dict[int, float], n_seeds: int) -> str:
    if not got:
        return "–"
    mean = pts(statistics.fmean(got.values()))
    each = ", ".join(pts(got[s]) for s in sorted(got))
    return f"{mean} ({each})" if len(got) == n_seeds else f"({each}; {len(got)}/{n_seeds} seeds)"


def _vat_bracket(data: GridData, variant: str) -> str:
    candidates, means, _ = search_curve(data, variant)
    every = data.grid.candidates(variant)
    if len(candidates) < len(every):
        return f"{len(candidates)} of {len(every)} candidates done"
    alpha, eps = candidates[G.select_best(candidates, means)]
    words = []
    for name, value, grid in (
        ("alpha", alpha, data.grid.vat_alphas),
        ("epsilon", eps, data.grid.vat_epsilons),
    ):
        k = list(grid).index(value)
        where = "interior" if 0 < k < len(grid) - 1 else ("lowest" if k == 0 else "highest")
        words.append(f"{name} {fmt_alpha(value)} ({where} value of its grid)")
    return "best at " + ", ".join(words)


def strength_table(data: GridData) -> list[str]:
    rows = []
    for v in data.variants:
        if G.VARIANTS[v][0] == "none" or v == "rdrop-none":
            continue
        finals = data.finals(v)
        if not finals:
            continue
        shares, probes, ratios, cosines = [], [], [], []
        for r in finals.values():
            alpha = r["regularizer"]["alpha"]
            best = next(h for h in r["history"] if h["epoch"] == r["validation"]["best_epoch"])
            if "train_reg" in best and best.get("train_loss"):
                shares.append(alpha * best["train_reg"] / best["train_loss"])
            probe = r.get("probe") or {}
            if "median_share" in probe:
                probes.append(probe["median_share"])
                ratios.append(probe["median_grad_ratio"])
                cosines.append(probe["median_grad_cosine"])
        rows.append(
            [
                NAMES[v],
                fmt_alpha(finals[min(finals)]["regularizer"]["alpha"]),
                str(len(finals)),
                _pct(shares),
                _pct(probes),
                f"{_mean(ratios):.3f}" if ratios else "–",
                f"{_mean(cosines):+.2f}" if cosines else "–",
            ]
        )
    if not rows:
        return ["No regularised final cell has finished yet."]
    header = [
        "variant",
        "alpha",
        "cells",
        "alpha·D / loss, training (best epoch)",
        "alpha·D / loss, probe",
        "‖∇ alpha·D‖ / ‖∇ CE‖, probe",
        "cos(∇ alpha·D, ∇ CE), probe",
    ]
    return table(header, rows)


def fmt_alpha(a: float) -> str:
    """1/1024 rather than 0.000976562: the grids are powers of 4."""
    if 0 < a < 1 and float(1 / a).is_integer():
        return f"1/{int(1 / a)}"
    return f"{a:g}"


def _pct(values: Sequence[float]) -> str:
    return f"{100 * _mean(values):.2f} %" if values else "–"


def settings_table(data: GridData) -> list[str]:
    ref = next((e for e in data.entries if e.cell.stage == "final" and e.config), None)
    if ref is None:
        return []
    config = G.config_to_dict(ref.config)
    skip = {"train.seed", "train.progress", "output_dir", "train.num_threads"}
    rows = [
        (f"`{k}`", f"`{v}`")
        for k, v in _flat("", {k: config[k] for k in ("data", "encoder", "head", "train")})
        if k not in skip
    ]
    grid = data.grid
    rows += [
        ("final seeds", ", ".join(map(str, grid.seeds))),
        ("search seeds (same budget)", ", ".join(map(str, grid.search_seed_list))),
        ("R-Drop alpha grid", ", ".join(fmt_alpha(a) for a in grid.rdrop_alphas)),
        ("VAT alpha grid", ", ".join(fmt_alpha(a) for a in grid.vat_alphas)),
        ("VAT epsilon grid", ", ".join(f"{e:g}" for e in grid.vat_epsilons)),
        ("reported test set", grid.test_set),
    ]
    return table(["setting", "value"], rows)


# ---------------------------------------------------------------------------------- plot


def plot(grids: Sequence[GridData], path: Path) -> bool:
    """Per grid: validation F1 per epoch (mean over final seeds) per variant; the alpha search
    curves; test F1 per seed."""
    shown = [d for d in grids if any(e.status == "done" for e in d.entries)]
    if not shown:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(shown), 3, figsize=(16, 4 * len(shown)), squeeze=False)
    colors = {v: f"C{k}" for k, v in enumerate(ORDER)}
    for row, data in zip(axes, shown):
        ax = row[0]
        for v in data.variants:
            curves = [
                [h["dev"]["micro"]["f1"] for h in r["history"]] for r in data.finals(v).values()
            ]
            if not curves:
                continue
            longest = max(len(c) for c in curves)
            means = []
            for k in range(longest):
                at = [c[k] for c in curves if len(c) > k]
                means.append(100 * statistics.fmean(at))
            ax.plot(
                range(1, longest + 1), means, "-", color=colors[v], label=f"{v} ({len(curves)})"
            )
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation micro F1 (%)")
        ax.set_title(f"{title(data.grid)}: learning curves (mean over final seeds)", fontsize=9)
        _legend_or_note(ax, "no finished final cells")
        ax = row[1]
        for v in data.variants:
            if not (v.startswith("rdrop-") and data.grid.searched(v)):
                continue
            candidates, means, _ = search_curve(data, v)
            if candidates:
                xs = [a for a, _ in candidates]
                ax.plot(xs, [100 * m for m in means], "o-", color=colors[v], label=v)
        for ref, style in (("rdrop-none", "--"), ("baseline", ":")):
            score = reference_score(data, ref) if ref in data.variants else None
            if score is not None:
                ax.axhline(100 * score, linestyle=style, color=colors[ref], label=f"{ref}")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("alpha")
        ax.set_ylabel("val. micro F1 (%), mean of search seeds")
        ax.set_title(f"{title(data.grid)}: R-Drop alpha search", fontsize=9)
        _legend_or_note(ax, "no complete search candidate")
        ax = row[2]
        for x, v in enumerate(data.variants):
            ys = [100 * y for y in data.test_f1(v).values()]
            if ys:
                ax.plot([x] * len(ys), ys, "o", color=colors[v], alpha=0.6)
                ax.plot([x + 0.2], [statistics.fmean(ys)], "s", color="black")
        ax.set_xticks(range(len(data.variants)))
        ax.set_xticklabels(data.variants, rotation=25, fontsize=7)
        ax.set_ylabel("test micro F1 (%)")
        ax.set_title(f"{title(data.grid)}: test F1 (dots: seeds; black: mean)", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return True


def _legend_or_note(ax, note: str) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, note, ha="center", transform=ax.transAxes)


# -------------------------------------------------------------------------------- report


def build_report(
    blocks: Sequence[G.Block], results_dir: Path, out: Path, png_name: str | None = None
) -> Path:
    results_dir, out = Path(results_dir), Path(out)
    grids, entries = collect(blocks, results_dir)
    found = comparisons(grids)
    png = out.with_name(png_name or (out.stem.lower() + ".png"))
    n_done = sum(e.status == "done" for e in entries)
    lines = [
        "# GlobalPointer divergence experiment, design v2 (issue 16)",
        "",
        f"Generated by `benchmarks/accuracy/report_v2.py` from the result JSONs in "
        f"`{_rel(results_dir)}` ({n_done} of {len(entries)} cells finished); do not edit by "
        f"hand. {_as_of(entries)} The first design's report is `REPORT.md`.",
        "",
        "**Design.** Every cell trains with early stopping (`train.patience`) up to a maximum "
        "epoch count and keeps its best validation epoch; validation is a split carved from the "
        "training file, the same for every cell of a grid. Variants: the baseline; a "
        "compute-matched baseline (twice the epochs and patience: as many encoder "
        "forward/backward passes as R-Drop); R-Drop with alpha 0 (two dropout passes, CE "
        "averaged, no divergence); R-Drop with gp_kl, softmax_kl (one softmax per (example, "
        "type)) and softmax_kl_all (one softmax per example over all valid cells of all types). "
        "Alpha is chosen per grid and divergence by the best validation F1 averaged over two "
        "search seeds trained with the final cells' budget; the final seeds are different seeds "
        "and are evaluated once on the test set. See `grid_v2.py` and `README.md`.",
        "",
        '**Verdicts.** Each claim "A beats B" is tested on the per-seed differences of test '
        "micro F1 (paired by seed): mean with a 95 % t-interval, a two-sided paired t-test, and "
        f"Holm's correction across all {sum(c.test.p is not None for c in found)} comparisons "
        "with at least two paired seeds in this report. **holds**: Holm-adjusted p < 0.05 and "
        "A is better; **refuted**: adjusted p < 0.05 and B is better; **unresolved**: "
        "otherwise (including fewer than two paired seeds).",
        "",
        "## What we conclude",
        "",
        *conclusion(found),
        "",
        "## Verdicts",
        "",
    ]
    for q, words in QUESTIONS.items():
        lines.append(f"- ({q}) {words}")
    lines += [
        "",
        "Each cell: the verdict and the mean paired difference of test F1 in points (claimed "
        "better minus other) over n seeds; the per-grid sections give intervals and p-values.",
        "",
    ]
    lines += overview(grids, found) + [""]
    if plot(grids, png):
        lines += [f"![learning curves, alpha searches and test F1]({png.name})", ""]
    else:
        lines += ["No finished cells yet, so no plot.", ""]
    for data in grids:
        lines += [f"## {title(data.grid)}", ""]
        mine = [c for c in found if c.grid is data]
        if mine:
            lines += table(VERDICT_HEADER, verdict_rows(mine)) + [""]
        lines += ["### Final cells (test F1 in points)", ""] + results_table(data) + [""]
        lines += ["### Alpha search (validation F1, mean (per seed))", ""] + search_table(data)
        lines += ["### How strongly the regulariser acts at the chosen alpha", ""]
        lines += strength_table(data) + [""]
        lines += [
            "Training share: `alpha · train_reg / train_loss` of the best epoch (means over its "
            "batches), mean over seeds. Probe (`probe.py`): 8 training batches through the best "
            "checkpoint in training mode; medians over batches, means over seeds; gradients over "
            "all trainable parameters.",
            "",
        ]
        lines += ["### Settings", ""] + [f"- {note}" for note in data.grid.notes]
        lines += [""] if data.grid.notes else []
        lines += settings_table(data) + [""]
    lines += ["## Limitations", ""] + [f"- {x}" for x in LIMITATIONS] + [""]
    lines += ["## Completeness", ""]
    left = G.compute_left(entries)
    for block in blocks:
        mine = [e for e in entries if e.cell.block == block.number]
        done = sum(e.status == "done" for e in mine)
        line = f"- Block {block.number} ({block.title}): {done} of {len(mine)} cells done"
        if block.number in left:
            c = left[block.number]
            basis = "measured epoch times" if c.measured else "prior epoch times"
            line += f"; about {c.minutes / 60:.1f} h of cell time left ({basis}, dry-run estimate)"
        unavailable = sum(e.status == "unavailable" for e in mine)
        if unavailable:
            line += f"; {unavailable} cell(s) this checkout could not build"
        lines.append(line + ".")
    total = sum(c.minutes for c in left.values())
    lines += [
        "",
        f"Compute left in all: about {total / 60:.1f} h of cell time (`python3 "
        "benchmarks/accuracy/run.py --dry-run` lists every cell).",
        "",
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines), encoding="utf-8")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=V2.DEFAULT_RESULTS)
    parser.add_argument("--out", type=Path, default=G.HERE / "REPORT-v2.md")
    args = parser.parse_args(argv)
    path = build_report(V2.blocks(), args.results, args.out, png_name="report-v2.png")
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
