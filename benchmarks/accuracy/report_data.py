"""The numbers of the v1 accuracy report (``report.py``): per-variant statistics, paired
differences and the result JSONs collected per grid."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
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
