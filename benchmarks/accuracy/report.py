#!/usr/bin/env python3
"""Write ``REPORT.md`` and ``report.png`` from the result JSONs of ``run.py``.

    python3 -m benchmarks.accuracy.report [--results DIR] [--out REPORT.md]

Every number and every sentence about the claim is computed from the JSONs; cells that are not
finished yet are listed as missing, and the statements use the paired seeds that exist.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from benchmarks.accuracy import accuracy_grid as G

REG_NAMES = {"rdrop": "R-Drop", "vat": "VAT"}
VARIANT_NAMES = {
    "baseline": "baseline (CE only)",
    "rdrop-gp_kl": "R-Drop + gp_kl",
    "rdrop-softmax_kl": "R-Drop + softmax_kl",
    "vat-gp_kl": "VAT + gp_kl",
    "vat-softmax_kl": "VAT + softmax_kl",
}
# Two-sided 95 % Student t quantiles by degrees of freedom (1.96 beyond the table).
_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228]
_T975 += [2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086]


def t975(df: int) -> float:
    return _T975[df - 1] if 1 <= df <= len(_T975) else 1.96


def pts(x: float | None, sign: bool = False) -> str:
    """An F1 (0..1) as percentage points."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{100 * x:+.2f}" if sign else f"{100 * x:.2f}"


@dataclass
class Stats:
    values: list[float]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.values) if self.n >= 2 else None

    @property
    def ci(self) -> tuple[float, float] | None:
        """95 % t-interval of the mean (n >= 2)."""
        if self.n < 2:
            return None
        half = t975(self.n - 1) * self.std / math.sqrt(self.n)
        return self.mean - half, self.mean + half

    def mean_std(self) -> str:
        if not self.values:
            return "–"
        if self.std is None:
            return f"{pts(self.mean)} (n=1)"
        return f"{pts(self.mean)} ± {pts(self.std)}"


@dataclass
class Paired:
    """Per-seed differences a - b over the seeds both have."""

    seeds: list[int]
    diffs: list[float]

    @property
    def stats(self) -> Stats:
        return Stats(self.diffs)

    @property
    def wins(self) -> int:
        return sum(d > 0 for d in self.diffs)

    @property
    def losses(self) -> int:
        return sum(d < 0 for d in self.diffs)


# ------------------------------------------------------------------------------ collecting


@dataclass
class GridData:
    grid: G.Grid
    blocks: list[G.Block]
    variants: list[str]
    entries: list[G.PlanEntry]

    def final(self, variant: str) -> dict[int, dict[str, Any]]:
        """seed -> result of the finished final cells of a variant."""
        return {
            e.cell.seed: e.result
            for e in self.entries
            if e.cell.stage == "final" and e.cell.variant == variant and e.status == "done"
        }

    def test_f1(self, variant: str) -> dict[int, float]:
        return {s: r["test"]["f1"] for s, r in self.final(variant).items() if r.get("test")}

    def val_f1(self, variant: str) -> dict[int, float]:
        return {s: r["validation"]["f1"] for s, r in self.final(variant).items()}

    def paired(self, a: str, b: str) -> Paired:
        fa, fb = self.test_f1(a), self.test_f1(b)
        seeds = sorted(set(fa) & set(fb))
        return Paired(seeds, [fa[s] - fb[s] for s in seeds])

    def epoch_seconds(self, variant: str) -> Stats:
        return Stats([r["timing"]["train_seconds_per_epoch"] for r in self.final(variant).values()])

    def runner_setups(self) -> list[tuple[int, int]]:
        """(runner workers, torch threads) the finished final cells ran under, sorted."""
        setups = set()
        for variant in self.variants:
            for r in self.final(variant).values():
                env = r.get("environment", {})
                setups.add((env.get("runner_workers", 1), env.get("torch_threads")))
        return sorted(setups, key=str)

    def search(self) -> list[G.PlanEntry]:
        return [e for e in self.entries if e.cell.stage == "search"]

    def chosen(self, variant: str) -> tuple[float | None, float | None] | None:
        for e in self.entries:
            if e.cell.stage == "final" and e.cell.variant == variant and e.status != "blocked":
                return e.alpha, e.epsilon
        return None


def collect(
    blocks: Sequence[G.Block], results_dir: Path, overrides: Sequence[str] = ()
) -> tuple[list[GridData], list[G.PlanEntry]]:
    entries = G.plan(blocks, results_dir, overrides=overrides)
    grids: dict[str, GridData] = {}
    for block in blocks:
        data = grids.setdefault(block.grid.name, GridData(block.grid, [], [], []))
        data.blocks.append(block)
        data.variants = [v for v in G.ALL_VARIANTS if v in set(data.variants) | set(block.variants)]
    for entry in entries:
        grids[entry.cell.grid.name].entries.append(entry)
    return list(grids.values()), entries


# -------------------------------------------------------------------------------- words


def compare_sentence(a: str, b: str, p: Paired) -> str:
    """A templated sentence on the paired differences a - b (test micro F1)."""
    name_a, name_b = VARIANT_NAMES[a], VARIANT_NAMES[b]
    if not p.diffs:
        return f"{name_a} vs {name_b}: no paired seeds finished yet."
    st = p.stats
    if st.mean > 0:
        verb = "is better than"
    elif st.mean < 0:
        verb = "is worse than"
    else:
        verb = "ties with"
    text = (
        f"{name_a} {verb} {name_b} by {pts(abs(st.mean))} F1 points on average "
        f"({p.wins} of {st.n} paired seed(s) better, {p.losses} worse"
    )
    ci = st.ci
    if ci is None:
        text += "; one seed gives no interval)."
    else:
        where = "excludes" if ci[0] > 0 or ci[1] < 0 else "includes"
        text += f"; 95 % t-interval of the mean difference [{pts(ci[0], True)}, "
        text += f"{pts(ci[1], True)}] {where} zero)."
    return text


@dataclass
class Verdict:
    reg: str
    gp_vs_base: Paired
    soft_vs_base: Paired
    soft_vs_gp: Paired

    @property
    def available(self) -> bool:
        return bool(self.gp_vs_base.diffs and self.soft_vs_gp.diffs)

    def _parts(self) -> list[tuple[Paired, int, str, str]]:
        """(difference, the sign the claim predicts, its minuend, its subtrahend)."""
        return [
            (self.gp_vs_base, +1, "gp_kl", "the baseline"),
            (self.soft_vs_gp, -1, "softmax_kl", "gp_kl"),
        ]

    @staticmethod
    def _status(p: Paired, sign: int) -> str:
        """'yes' / 'no' when the 95 % interval excludes zero on the claimed / other side,
        'unclear' when it includes zero, 'direction' with one seed (no interval)."""
        ci = p.stats.ci
        if ci is None:
            return "direction"
        if ci[0] > 0 or ci[1] < 0:
            return "yes" if (ci[0] > 0) == (sign > 0) else "no"
        return "unclear"

    @property
    def label(self) -> str:
        """holds / partly holds / unresolved / does not hold, by the 95 % intervals of the two
        paired differences (gp_kl − baseline > 0, softmax_kl − gp_kl < 0); with one seed, by
        their signs, and the label says so."""
        if not self.available:
            return "not measured yet"
        statuses = [self._status(p, sign) for p, sign, _, _ in self._parts()]
        if "direction" in statuses:
            agree = [p.stats.mean * sign > 0 for p, sign, _, _ in self._parts()]
            label = "holds" if all(agree) else "partly holds" if any(agree) else "does not hold"
            # One paired seed shows a direction, not a result: say so in the label itself.
            return label + " in direction only (1 paired seed)"
        if statuses == ["yes", "yes"]:
            return "holds"
        if "yes" in statuses:
            return "partly holds"
        if "no" in statuses:
            return "does not hold"
        return "unresolved (within seed noise)"

    @property
    def detail(self) -> str:
        if not self.available:
            return ""
        parts = []
        for p, sign, a, b in self._parts():
            status = self._status(p, sign)
            side = "better than" if p.stats.mean > 0 else "worse than"
            if status in ("yes", "no"):
                parts.append(f"{a} is {side} {b} (95 % interval excludes zero)")
            elif status == "unclear":
                parts.append(f"{a} is {side} {b} on average, within seed noise")
            else:
                parts.append(f"{a} is {side} {b} on one seed (no interval)")
        return "; ".join(parts)

    @property
    def text(self) -> str:
        return f"**{self.label}** ({self.detail})" if self.detail else self.label


def verdicts(data: GridData) -> list[Verdict]:
    out = []
    for reg in ("rdrop", "vat"):
        gp, soft = f"{reg}-gp_kl", f"{reg}-softmax_kl"
        if gp in data.variants and soft in data.variants and "baseline" in data.variants:
            out.append(
                Verdict(
                    reg,
                    data.paired(gp, "baseline"),
                    data.paired(soft, "baseline"),
                    data.paired(soft, gp),
                )
            )
    return out


def words(data: GridData) -> list[str]:
    lines = []
    base = Stats(list(data.test_f1("baseline").values()))
    if base.std is not None:
        lines.append(
            f"For scale: the baseline's test micro F1 is {base.mean_std()} over {base.n} seeds, "
            f"so its seed-to-seed standard deviation is {pts(base.std)} points."
        )
    for v in verdicts(data):
        reg = REG_NAMES[v.reg]
        if not any(p.diffs for p in (v.gp_vs_base, v.soft_vs_base, v.soft_vs_gp)):
            lines.append(f"**{reg}.** No paired seeds finished yet.")
            continue
        lines.append(
            f"**{reg}.** Verdict here on the claim that {reg} with gp_kl improves on the "
            f"baseline and softmax_kl does worse: {v.text}."
        )
        lines.append(compare_sentence(f"{v.reg}-gp_kl", "baseline", v.gp_vs_base))
        lines.append(compare_sentence(f"{v.reg}-softmax_kl", f"{v.reg}-gp_kl", v.soft_vs_gp))
        lines.append(compare_sentence(f"{v.reg}-softmax_kl", "baseline", v.soft_vs_base))
    for variant in data.variants:
        if variant == "baseline" or not data.grid.searched(variant):
            continue
        chosen = data.chosen(variant)
        if chosen is None:
            continue
        alpha, eps = chosen
        grid_alphas = [a for a, _ in data.grid.candidates(variant)]
        if alpha in (min(grid_alphas), max(grid_alphas)):
            edge = "smallest" if alpha == min(grid_alphas) else "largest"
            lines.append(
                f"{VARIANT_NAMES[variant]}: the chosen alpha {alpha:g} is the {edge} value of "
                "its grid, so the best alpha may lie outside the grid."
            )
        if eps is not None and len(set(data.grid.vat_epsilons)) > 1:
            eps_grid = data.grid.vat_epsilons
            if eps in (min(eps_grid), max(eps_grid)):
                edge = "smallest" if eps == min(eps_grid) else "largest"
                lines.append(
                    f"{VARIANT_NAMES[variant]}: the chosen epsilon {eps:g} is the {edge} value "
                    "of its grid."
                )
    base_time = data.epoch_seconds("baseline").mean
    for variant in data.variants:
        if variant == "baseline":
            continue
        t = data.epoch_seconds(variant).mean
        if t is not None and base_time:
            lines.append(
                f"{VARIANT_NAMES[variant]} took {t / base_time:.2f}x the baseline's training "
                "time per epoch."
            )
    return lines


# ------------------------------------------------------------------------------- tables


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out


def _flat(prefix: str, node: Any) -> list[tuple[str, Any]]:
    if isinstance(node, dict):
        return [kv for k, v in node.items() for kv in _flat(f"{prefix}{k}.", v)]
    return [(prefix.rstrip("."), node)]


def hyper_table(data: GridData) -> list[str]:
    ref = next(e for e in data.entries if e.cell.stage == "final" and e.config is not None)
    config = G.config_to_dict(ref.config)
    skip = {"train.seed", "train.progress", "output_dir", "regularizer.kind"}
    # A config field added to gpner after every finished cell of the grid ran (at its default,
    # the old behaviour) is not a setting of these cells: leave it out, so the report of
    # finished cells does not change when the library grows.
    stored = [e.result["config"] for e in data.entries if e.status == "done"]
    if stored:
        ran_with = {k for c in stored for k, _ in _flat("", c)}
        skip |= {k for k, _ in _flat("", config) if k not in ran_with}
    skip |= {"regularizer.divergence", "regularizer.alpha", "regularizer.epsilon"}
    if config["data"]["validation_fraction"] > 0:
        config["data"]["dev"] = "unused: the validation split is carved from data.train"
    rows = [
        (f"`{k}`", f"`{v}`")
        for k, v in _flat("", {k: config[k] for k in ("data", "encoder", "head", "train")})
        if k not in skip
    ]
    rows += [
        (f"`{k}`", f"`{config['regularizer'][k.split('.')[1]]}`")
        for k in ("regularizer.xi", "regularizer.power_iterations")
    ]
    grid = data.grid
    rows += [
        ("seeds (final cells)", ", ".join(map(str, grid.seeds))),
        ("search: seed, epochs", f"{grid.search_seed}, {grid.search_epochs}"),
        ("R-Drop alpha grid", ", ".join(f"{a:g}" for a in grid.rdrop_alphas)),
        ("VAT alpha grid", ", ".join(f"{a:g}" for a in grid.vat_alphas)),
        ("VAT epsilon grid", ", ".join(f"{e:g}" for e in grid.vat_epsilons)),
        ("reported test set", grid.test_set),
    ]
    return table(["setting", "value"], rows)


def search_table(data: GridData) -> list[str]:
    rows = []
    chosen = {v: data.chosen(v) for v in data.variants}
    for e in data.search():
        val = e.result["validation"]["f1"] if e.status == "done" else None
        mark = ""
        if e.cell.variant != "baseline" and chosen.get(e.cell.variant) == (e.alpha, e.epsilon):
            mark = "**chosen**"
        rows.append(
            (
                VARIANT_NAMES[e.cell.variant] + (" (reference)" if e.cell.kind == "none" else ""),
                "–" if e.alpha is None else f"{e.alpha:g}",
                "–" if e.epsilon is None else f"{e.epsilon:g}",
                pts(val) if val is not None else f"({e.status})",
                mark,
            )
        )
    if not rows:
        return ["No search: every regularised variant of this grid has a single candidate."]
    return table(["variant", "alpha", "epsilon", "validation micro F1", ""], rows)


def results_table(data: GridData) -> list[str]:
    rows = []
    base_time = data.epoch_seconds("baseline").mean
    for v in data.variants:
        test = Stats(list(data.test_f1(v).values()))
        val = Stats(list(data.val_f1(v).values()))
        chosen = data.chosen(v)
        alpha = "–" if not chosen or chosen[0] is None else f"{chosen[0]:g}"
        eps = "–" if not chosen or chosen[1] is None else f"{chosen[1]:g}"
        if chosen is None:
            alpha = eps = "(search unfinished)"
        if v == "baseline":
            per_seed = mean_diff = better = "–"
        else:
            p = data.paired(v, "baseline")
            per_seed = ", ".join(f"s{s}: {pts(d, True)}" for s, d in zip(p.seeds, p.diffs)) or "–"
            st = p.stats
            mean_diff = pts(st.mean, True) if st.n else "–"
            if st.ci is not None:
                mean_diff += f" [{pts(st.ci[0], True)}, {pts(st.ci[1], True)}]"
            better = f"{p.wins}/{st.n}" if st.n else "–"
        t = data.epoch_seconds(v).mean
        cost = f"{t / base_time:.2f}x" if t is not None and base_time else "–"
        seconds = f"{t:.0f}" if t is not None else "–"
        rows.append(
            (
                VARIANT_NAMES[v],
                alpha,
                eps,
                test.n,
                test.mean_std(),
                val.mean_std(),
                per_seed,
                mean_diff,
                better,
                seconds,
                cost,
            )
        )
    header = [
        "variant",
        "alpha",
        "epsilon",
        "seeds",
        "test micro F1 (mean ± std)",
        "validation F1",
        "Δ test vs baseline per seed",
        "mean Δ [95 % CI]",
        "better seeds",
        "train s/epoch",
        "cost vs baseline",
    ]
    return table(header, rows)


def per_type_table(data: GridData) -> list[str]:
    labels: list[str] = []
    means: dict[str, dict[str, float]] = {}
    for v in data.variants:
        finals = [r for r in data.final(v).values() if r.get("test")]
        if not finals:
            continue
        per = {}
        for label in sorted({k for r in finals for k in r["test"]["per_type_f1"]}):
            per[label] = statistics.fmean(r["test"]["per_type_f1"].get(label, 0.0) for r in finals)
            if label not in labels:
                labels.append(label)
        means[v] = per
    if not means:
        return ["No finished final cells yet."]
    rows = [[VARIANT_NAMES[v]] + [pts(means[v].get(label)) for label in labels] for v in means]
    return table(["variant"] + labels, rows)


# --------------------------------------------------------------------------------- plot


def plot(grids: Sequence[GridData], path: Path) -> bool:
    """One row per grid: test F1 per seed (mean ± std), paired Δ to baseline, search curves."""
    shown = [
        d
        for d in grids
        if any(d.test_f1(v) for v in d.variants) or any(e.status == "done" for e in d.search())
    ]
    if not shown:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(shown), 3, figsize=(15, 3.8 * len(shown)), squeeze=False)
    for row, data in zip(axes, shown):
        title = f"{data.grid.dataset} / {data.grid.encoder}"
        ax = row[0]
        for x, v in enumerate(data.variants):
            f1 = data.test_f1(v)
            if f1:
                ys = [100 * y for y in f1.values()]
                ax.plot([x] * len(ys), ys, "o", color="tab:gray", alpha=0.6)
                st = Stats(ys)
                ax.errorbar(
                    [x + 0.15], [st.mean], yerr=[st.std or 0.0], fmt="s", color="tab:red", capsize=4
                )
        ax.set_xticks(range(len(data.variants)))
        ax.set_xticklabels(data.variants, rotation=20, fontsize=8)
        ax.set_xlim(-0.5, len(data.variants) - 0.3)
        ax.set_ylabel("test micro F1 (%)")
        ax.set_title(f"{title}: test F1 (dots: seeds; red: mean ± std)", fontsize=9)
        if not any(data.test_f1(v) for v in data.variants):
            for empty in row[:2]:
                empty.text(
                    0.5,
                    0.5,
                    "no final cell finished yet",
                    ha="center",
                    va="center",
                    transform=empty.transAxes,
                    color="tab:gray",
                )

        ax = row[1]
        others = [v for v in data.variants if v != "baseline"]
        for x, v in enumerate(others):
            p = data.paired(v, "baseline")
            if p.diffs:
                ys = [100 * d for d in p.diffs]
                ax.plot([x] * len(ys), ys, "o", color="tab:gray", alpha=0.6)
                ax.plot([x + 0.15], [statistics.fmean(ys)], "D", color="tab:blue")
        ax.axhline(0.0, color="black", linewidth=0.8)
        ax.set_xticks(range(len(others)))
        ax.set_xticklabels(others, rotation=20, fontsize=8)
        ax.set_xlim(-0.5, max(1, len(others)) - 0.3)
        ax.set_ylabel("Δ test F1 vs baseline (points)")
        ax.set_title("paired difference per seed (blue: mean)", fontsize=9)

        ax = row[2]
        done = [e for e in data.search() if e.status == "done"]
        for e in done:
            if e.cell.kind == "none":
                ax.axhline(
                    100 * e.result["validation"]["f1"],
                    color="black",
                    linestyle="--",
                    linewidth=0.8,
                    label="baseline",
                )
        series: dict[str, list[tuple[float, float]]] = {}
        for e in done:
            if e.cell.kind == "none":
                continue
            key = e.cell.variant + (f" eps={e.epsilon:g}" if e.epsilon is not None else "")
            series.setdefault(key, []).append((e.alpha, 100 * e.result["validation"]["f1"]))
        for key, points in series.items():
            points.sort()
            ax.plot([a for a, _ in points], [f for _, f in points], "o-", label=key)
        ax.set_xscale("log")
        alphas = sorted({a for points in series.values() for a, _ in points})
        if alphas:
            ax.set_xticks(alphas)
            ax.set_xticklabels([f"{a:g}" for a in alphas])
        ax.minorticks_off()
        ax.set_xlabel("alpha")
        ax.set_ylabel("validation micro F1 (%)")
        ax.set_title(
            f"search ({data.grid.search_epochs} epoch(s), seed {data.grid.search_seed})", fontsize=9
        )
        if done:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "no finished search cells", ha="center", transform=ax.transAxes)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


# -------------------------------------------------------------------------------- report


def build_report(
    blocks: Sequence[G.Block],
    results_dir: Path,
    out: Path,
    *,
    overrides: Sequence[str] = (),
    png_name: str | None = None,
) -> Path:
    """Write the Markdown report (and the PNG beside it); returns the Markdown path."""
    results_dir, out = Path(results_dir), Path(out)
    grids, entries = collect(blocks, results_dir, overrides)
    png = out.with_name(png_name or (out.stem.lower() + ".png"))
    n_done = sum(e.status == "done" for e in entries)
    lines = [
        "> The current experiment is design v3 (issue 30): `REPORT-v3.md`. This first design "
        "is kept as it ran.",
        "",
        "# GlobalPointer divergence experiment (issue 6)",
        "",
        f"Generated by `benchmarks/accuracy/report.py` from the result JSONs in "
        f"`{_rel(results_dir)}` ({n_done} of {len(entries)} cells finished); "
        f"do not edit by hand. {_as_of(entries)}",
        "",
        "**The claim under test:** R-Drop (and VAT) with the GlobalPointer divergence "
        "`D(s,t) = Σ (σ(s) − σ(t))(s − t)` (gp_kl) slightly improves GlobalPointer over plain "
        "cross-entropy, while the softmax KL over its flattened logits (softmax_kl) does worse.",
        "",
        "**Protocol.** Every cell trains on the training file minus a validation split carved "
        "from it deterministically (`data.validation_fraction`, `data.split_seed`; the same split "
        "for every variant and seed). Alpha (and VAT's epsilon) is chosen per dataset, encoder "
        "and divergence by the best validation micro F1 of one seed with fewer epochs (ties: the "
        "first candidate in grid order); search cells never read the test set. Final cells use "
        "the chosen values and the full epoch budget, keep the epoch with the best validation "
        "F1, and are evaluated once on the test set. Differences are paired by seed (same "
        "seed: same initialisation of the shared parts and the same batch order). F1 values are "
        "entity-level micro F1 in percentage points. `data.dev` in the recorded configs is unused "
        "(the validation split replaces it). Training times come from cells run at "
        "different times on a shared machine, not side by side (and, where the environment "
        "table shows more than one runner worker, next to another cell), so cost ratios are "
        "approximate.",
        "",
        "## Summary",
        "",
    ]
    rows = []
    unmeasured = []
    for data in grids:
        for v in verdicts(data):
            if not v.available:
                unmeasured.append(
                    f"{REG_NAMES[v.reg]} on {data.grid.dataset} / {data.grid.encoder}"
                )
                continue
            rows.append(
                (
                    f"{data.grid.dataset} / {data.grid.encoder}",
                    REG_NAMES[v.reg],
                    len(v.soft_vs_gp.seeds),
                    _mean_ci(v.gp_vs_base),
                    _mean_ci(v.soft_vs_base),
                    _mean_ci(v.soft_vs_gp),
                    v.text,
                )
            )
    summary_header = [
        "dataset / encoder",
        "regulariser",
        "paired seeds",
        "gp_kl − baseline",
        "softmax_kl − baseline",
        "softmax_kl − gp_kl",
        "claim",
    ]
    if rows:
        lines += table(summary_header, rows)
        lines += ["", "Differences: mean test micro F1 difference [95 % t-interval], in points."]
    else:
        lines += ["No comparison has finished paired seeds yet."]
    if unmeasured:
        lines += [
            "",
            "Not measured yet: "
            + "; ".join(unmeasured)
            + ". The cells still to run, and the compute they need, are listed under "
            "Completeness.",
        ]
    lines.append("")
    if plot(grids, png):
        lines += [f"![test F1, paired differences and alpha search]({png.name})", ""]
    else:
        lines += ["(No finished cells yet, so no plot.)", ""]

    lines += ["## Completeness", ""]
    missing = [e for e in entries if e.status != "done"]
    if not missing:
        lines += ["All cells of the grid are finished.", ""]
    else:
        by_block: dict[int, list[G.PlanEntry]] = {}
        for e in entries:
            by_block.setdefault(e.cell.block, []).append(e)
        lines += ["### Missing cells", ""]
        titles = {b.number: b.title for b in blocks}
        left = G.compute_left(entries)
        for number, block_entries in sorted(by_block.items()):
            absent = [e for e in block_entries if e.status != "done"]
            done = len(block_entries) - len(absent)
            head = f"- Block {number} ({titles[number]}): {done} of {len(block_entries)} done"
            if absent:
                head += f"; {_compute_left_words(left[number])}; missing:"
            lines.append(head + ("" if absent else "."))
            for e in absent:
                why = e.status + (
                    f", waits for {len(e.waiting_for)} search cell(s)" if e.waiting_for else ""
                )
                lines.append(f"  - `{e.cell.id}` ({why})")
        total = sum(c.minutes for c in left.values())
        lines += [
            "",
            f"Compute left in all: about {total / 60:.1f} h of cell time. Cell time is the "
            "summed wall time of the cells as they run here (2 CPU cores shared by the runner "
            "workers); the estimate takes each grid's median measured seconds per epoch and "
            "regulariser, scales the baseline's by the reference cost factors "
            f"({_cost_factors()}) where a regulariser has no finished cell, and adds 10 % for "
            "evaluation. A grid with no finished cell uses its prior epoch time.",
        ]
        lines += [
            "",
            "Statements below use only the finished cells (seeds paired where both "
            "variants finished).",
            "",
        ]

    for data in grids:
        numbers = ", ".join(str(b.number) for b in data.blocks)
        lines += [f"## {data.grid.dataset} / {data.grid.encoder} (block {numbers})", ""]
        lines += ["### In words", ""]
        lines += [f"- {s}" for s in words(data)] or ["- No finished final cells yet."]
        lines += ["", "### Test results", ""]
        lines += results_table(data)
        setups = data.runner_setups()
        if len(setups) > 1:
            shown = ", ".join(f"{w} worker(s) x {t} thread(s)" for w, t in setups)
            lines += [
                "",
                f"Seconds per epoch here come from different runner setups ({shown}): the cost "
                "column compares unlike runs.",
            ]
        lines += ["", "### Alpha / epsilon search (validation split)", ""]
        lines += search_table(data)
        lines += ["", "### Per-type test F1 (mean over seeds)", ""]
        lines += per_type_table(data)
        lines += ["", "### Fixed hyper-parameters (the same for every variant)", ""]
        lines += hyper_table(data)
        lines.append("")

    lines += ["## Environment", ""]
    envs: dict[tuple, int] = {}
    for e in entries:
        if e.status == "done":
            env = e.result.get("environment", {})
            key = tuple(
                env.get(k)
                for k in (
                    "python",
                    "torch",
                    "gpner",
                    "git_commit",
                    "git_src_diff_sha1",
                    "torch_threads",
                )
            ) + (env.get("runner_workers", 1),)
            envs[key] = envs.get(key, 0) + 1
    if envs:
        lines += table(
            [
                "python",
                "torch",
                "gpner",
                "git commit",
                "uncommitted src diff (sha1)",
                "threads",
                "runner workers",
                "cells",
            ],
            [(*map(str, k), n) for k, n in sorted(envs.items(), key=lambda kv: -kv[1])],
        )
        lines += [
            "",
            "Cells are grouped by the code they ran: the commit plus a hash of any "
            "uncommitted changes under `src/` when their sitting started. Runner workers: "
            "how many runners shared the machine (`run.py --workers`), each with the "
            "threads shown.",
        ]
    else:
        lines.append("No finished cells.")
    lines.append("")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines), encoding="utf-8")
    return out


def _as_of(entries: Sequence[G.PlanEntry]) -> str:
    """When the newest finished cell finished: the report is a function of the JSONs alone,
    so regenerating it from the same results gives the same file."""
    stamps = [e.result.get("finished_at") for e in entries if e.status == "done"]
    stamps = [s for s in stamps if s]
    if not stamps:
        return "No cell has finished yet."
    newest = max(datetime.fromisoformat(s).astimezone(timezone.utc) for s in stamps)
    return f"Results as of {newest:%Y-%m-%d %H:%M} UTC (the newest finished cell)."


def _compute_left_words(c: G.ComputeLeft) -> str:
    source = "measured epoch times" if c.measured else "prior epoch time, nothing measured yet"
    return f"about {c.minutes / 60:.1f} h of cell time left ({source})"


def _cost_factors() -> str:
    return ", ".join(f"{kind} {factor:g}x" for kind, factor in G.COST_FACTOR.items())


def _mean_ci(p: Paired) -> str:
    st = p.stats
    if not st.n:
        return "–"
    text = pts(st.mean, True)
    if st.ci is not None:
        text += f" [{pts(st.ci[0], True)}, {pts(st.ci[1], True)}]"
    return text


def _rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(G.ROOT))
    except ValueError:
        return str(path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=G.DEFAULT_RESULTS)
    parser.add_argument("--out", type=Path, default=G.HERE / "REPORT.md")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        help="the same --set overrides the runner used for these results",
    )
    args = parser.parse_args(argv)
    path = build_report(
        G.main_blocks(), args.results, args.out, overrides=args.overrides, png_name="report.png"
    )
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
