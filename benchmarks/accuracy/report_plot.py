"""``report.png`` of the v1 accuracy report (``report.py``): one row of panels per grid."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path

from benchmarks.accuracy.report_data import (
    GridData,
    Stats,
)


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
