"""Design v3 of the divergence experiment (issue 30): its cells, the alpha search and its
extension rule, the cells' status from the result JSONs, and the time estimates. Shared by
``run_v3.py`` (trains cells) and ``report_v3.py`` (REPORT-v3.md). Pure: no torch, no gpner, no
work at import time.

* **Data.** CLUENER. Validation = 10 % of ``cluener/train.json`` carved by the library with a
  fixed seed (``data.validation_fraction = 0.1``, ``data.split_seed = 0``: a seeded permutation
  of the example indices, ``gpner.corpus.split_validation``), the same split for every cell; the
  cells read the data by path, nothing is copied. Test = the CLUENER dev file, scored once per
  final cell (``gpner evaluate``) from the best-validation epoch; search cells never read it.
* **Model.** ``configs/cluener_char.toml``'s encoder, head and optimiser (as the pinned commit has
  it), ``train.epochs = 12`` (the learning rate decays over them), ``train.patience = 3``, the
  best validation epoch kept.
* **Variants:** ``baseline``; ``rdrop-none`` (R-Drop with alpha 0: two dropout passes, CE
  averaged, the divergence not computed); R-Drop with ``gp_kl``, ``softmax_kl`` and
  ``softmax_kl_all``.
* **Alpha search** per divergence at seeds 101 and 102 (disjoint from the final seeds), grid
  {1/256, 1/64, 1/16, 1/4}; when the winner (best mean validation F1 over both seeds, ties to the
  smaller alpha) is an edge of the searched grid, one more factor of 4 past it is searched (down
  to 1/1024, up to 4) until the winner has searched neighbours on both sides or sits at a limit.
  ``baseline`` and ``rdrop-none`` run at the search seeds too.
* **Finals:** seeds 1-7 per variant at the chosen alpha, paired by seed.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DEFAULT_RESULTS = HERE / "results-v3"
WORK_DIRNAME = ".work"
VARIANTS = ("baseline", "rdrop-none", "rdrop-gp_kl", "rdrop-softmax_kl", "rdrop-softmax_kl_all")
DIVERGENCES = ("gp_kl", "softmax_kl", "softmax_kl_all")
# The pre-registered family: (label, a, b) for the one-sided claim "test F1 of a > that of b".
CLAIMS = (
    ("a", "rdrop-gp_kl", "baseline"),
    ("b", "rdrop-gp_kl", "rdrop-none"),
    ("b", "rdrop-softmax_kl", "rdrop-none"),
    ("b", "rdrop-softmax_kl_all", "rdrop-none"),
    ("c", "rdrop-gp_kl", "rdrop-softmax_kl"),
    ("c", "rdrop-gp_kl", "rdrop-softmax_kl_all"),
    ("d", "baseline", "rdrop-softmax_kl"),
)


class DesignError(RuntimeError):
    """The results dir and the design disagree (another commit, other settings)."""


@dataclass(frozen=True)
class Design:
    name: str = "v3"
    base_config: str = "configs/cluener_char.toml"  # relative to the pinned checkout
    data: tuple[str, ...] = ("data.validation_fraction=0.1", "data.split_seed=0")
    train_file: str = "cluener/train.json"
    test_set: str = "cluener/dev.json"
    epochs: int = 12
    patience: int = 3
    search_seeds: tuple[int, ...] = (101, 102)
    final_seeds: tuple[int, ...] = tuple(range(1, 8))
    alphas: tuple[float, ...] = (1 / 256, 1 / 64, 1 / 16, 1 / 4)
    alpha_min: float = 1 / 1024
    alpha_max: float = 4.0
    factor: float = 4.0
    extra: tuple[str, ...] = ()  # more overrides (the tests' tiny designs only)


V3 = Design()


def alpha_label(alpha: float) -> str:
    """1/64 -> "1_64", 4 -> "4" (file-name safe, exact for powers of 2)."""
    f = Fraction(alpha).limit_denominator(1 << 20)
    return str(f.numerator) if f.denominator == 1 else f"{f.numerator}_{f.denominator}"


@dataclass(frozen=True)
class Cell:
    stage: str  # "search" | "final"
    variant: str
    seed: int
    alpha: float | None = None  # search cells of a divergence only

    @property
    def id(self) -> str:
        parts = [self.stage, self.variant]
        if self.alpha is not None:
            parts.append(f"a{alpha_label(self.alpha)}")
        return "/".join([*parts, f"s{self.seed}"])

    @property
    def stem(self) -> str:
        return self.id.replace("/", "__")

    @property
    def kind(self) -> str:
        return "none" if self.variant == "baseline" else "rdrop"

    @property
    def divergence(self) -> str | None:
        name = self.variant.removeprefix("rdrop-")
        return name if name in DIVERGENCES else None  # baseline, rdrop-none: none


def overrides(design: Design, cell: Cell, alpha: float | None) -> list[str]:
    """The ``gpner train --set`` overrides of a cell on top of ``design.base_config``."""
    out = [*design.data, f"train.epochs={design.epochs}", f"train.patience={design.patience}"]
    out += [f"train.seed={cell.seed}", *design.extra, f"regularizer.kind={cell.kind}"]
    if cell.kind == "rdrop":
        out.append(f"regularizer.alpha={float(alpha)!r}")
        if alpha:  # rdrop-none computes no divergence: it names none
            out.append(f"regularizer.divergence={cell.divergence}")
    return out


def spec(design: Design, cell: Cell, alpha: float | None) -> dict[str, Any]:
    """What a cell computes (compared with a stored result's ``spec``; threads excluded)."""
    return {
        "design": design.name,
        "base_config": design.base_config,
        "stage": cell.stage,
        "variant": cell.variant,
        "seed": cell.seed,
        "alpha": alpha,
        "overrides": overrides(design, cell, alpha),
        "test_set": design.test_set if cell.stage == "final" else None,
    }


# ------------------------------------------------------------------------------ alpha search


@dataclass(frozen=True)
class Search:
    """One divergence's search: the alphas to search now, their mean validation F1 (where both
    seeds finished), the chosen alpha once settled, and why it stopped there."""

    alphas: tuple[float, ...]
    means: dict[float, float]
    chosen: float | None
    note: str = ""


def alpha_search(design: Design, scores: dict[float, dict[int, float]]) -> Search:
    """The extension rule on ``scores`` (alpha -> seed -> validation F1 of finished cells)."""
    alphas = sorted(design.alphas)
    while True:
        means = {
            a: statistics.fmean(scores[a][s] for s in design.search_seeds)
            for a in alphas
            if a in scores and all(s in scores[a] for s in design.search_seeds)
        }
        if len(means) < len(alphas):
            return Search(tuple(alphas), means, None, "waiting for search cells")
        best = min(alphas, key=lambda a: (-means[a], a))  # ties: the smaller alpha
        if best == alphas[0] and best / design.factor >= design.alpha_min * (1 - 1e-9):
            alphas.insert(0, best / design.factor)
        elif best == alphas[-1] and best * design.factor <= design.alpha_max * (1 + 1e-9):
            alphas.append(best * design.factor)
        else:
            at_limit = best in (alphas[0], alphas[-1])
            note = "at the limit of the range" if at_limit else "bracketed"
            return Search(tuple(alphas), means, best, note)


def possible_alphas(design: Design, search: Search) -> list[float]:
    """Alphas an unsettled search may still add (the dry run's upper estimate)."""
    if search.chosen is not None:
        return []
    out, a = [], min(search.alphas) / design.factor
    while a >= design.alpha_min * (1 - 1e-9):
        out.append(a)
        a /= design.factor
    a = max(search.alphas) * design.factor
    while a <= design.alpha_max * (1 + 1e-9):
        out.append(a)
        a *= design.factor
    return sorted(out)


# ----------------------------------------------------------------------------------- the plan


@dataclass
class Entry:
    cell: Cell
    status: str  # done | partial | pending | blocked
    alpha: float | None = None  # the cell's own or, for a final cell, the chosen one
    result: dict[str, Any] | None = None
    waiting_for: str = ""

    @property
    def config(self) -> None:  # the cell runner's duck type; v3 cells are run by command
        return None


def load_results(results_dir: Path) -> dict[str, dict[str, Any]]:
    """stem -> result JSON of every readable result file of a v3 results dir."""
    out = {}
    for path in sorted(Path(results_dir).glob("*.json")):
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(payload, dict) and "cell" in payload:
            out[path.stem] = payload
    return out


def commits(results: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    """Library commit -> cell ids that ran it."""
    out: dict[str, list[str]] = {}
    for payload in results.values():
        commit = (payload.get("library") or {}).get("commit") or "unknown"
        out.setdefault(commit, []).append(payload["cell"])
    return out


def check_commits(results: dict[str, dict[str, Any]], pinned: str | None) -> str | None:
    """The one commit of the finished cells (or ``pinned``); DesignError if they mix commits or
    differ from ``pinned``."""
    found = commits(results)
    wanted = {pinned} if pinned else set()
    if len(set(found) | wanted) > 1:
        lines = [f"  {c}: {len(ids)} cell(s), e.g. {ids[0]}" for c, ids in sorted(found.items())]
        raise DesignError(
            "a design runs one library commit, but "
            + (f"--pin is {pinned} and " if pinned else "")
            + "the finished cells ran:\n"
            + "\n".join(lines)
            + "\nPin the commit they ran (--pin), or move the other JSONs out of the results dir."
        )
    return pinned or next(iter(found), None)


def _status(design: Design, cell: Cell, alpha: float | None, results, results_dir: Path):
    stored = results.get(cell.stem)
    if stored is not None:
        if stored.get("spec") != spec(design, cell, alpha):
            raise DesignError(
                f"{cell.id}: its result JSON was made with other settings than this design "
                f"(stored {stored.get('spec')}); move {cell.stem}.json away to redo it"
            )
        return Entry(cell, "done", alpha, stored)
    work = Path(results_dir) / WORK_DIRNAME / cell.stem / "last.pt"
    return Entry(cell, "partial" if work.is_file() else "pending", alpha)


def searches(design: Design, results: dict[str, dict[str, Any]]) -> dict[str, Search]:
    """Divergence -> its :class:`Search` from the finished search cells."""
    out = {}
    for divergence in DIVERGENCES:
        scores: dict[float, dict[int, float]] = {}
        for payload in results.values():
            if payload.get("stage") == "search" and payload.get("variant") == "rdrop-" + divergence:
                scores.setdefault(payload["alpha"], {})[payload["seed"]] = payload["validation"][
                    "f1"
                ]
        out[divergence] = alpha_search(design, scores)
    return out


def plan(design: Design, results_dir: Path) -> list[Entry]:
    """Every cell of the design in run order with its status: the search cells seed by seed
    (references, then each divergence's grid), then the extension cells the finished searches
    call for, then the finals seed by seed. A regularised final waits ("blocked") until its
    divergence's search has settled."""
    results = load_results(results_dir)
    found = searches(design, results)
    cells: list[tuple[Cell, float | None]] = []
    for seed in design.search_seeds:
        cells.append((Cell("search", "baseline", seed), None))
        cells.append((Cell("search", "rdrop-none", seed), 0.0))
        for d in DIVERGENCES:
            cells += [(Cell("search", "rdrop-" + d, seed, a), a) for a in sorted(design.alphas)]
    for seed in design.search_seeds:  # the extensions, in the order they were called for
        for d in DIVERGENCES:
            extra = [a for a in found[d].alphas if a not in design.alphas]
            cells += [(Cell("search", "rdrop-" + d, seed, a), a) for a in extra]
    out = [_status(design, c, a, results, results_dir) for c, a in cells]
    for seed in design.final_seeds:
        for variant in VARIANTS:
            cell = Cell("final", variant, seed)
            if variant in ("baseline", "rdrop-none"):
                out.append(
                    _status(
                        design, cell, None if variant == "baseline" else 0.0, results, results_dir
                    )
                )
            elif found[cell.divergence].chosen is None:
                out.append(Entry(cell, "blocked", waiting_for=f"the {cell.divergence} search"))
            else:
                chosen = found[cell.divergence].chosen
                out.append(_status(design, cell, chosen, results, results_dir))
    return out


# ---------------------------------------------------------------------------------- estimates


@dataclass(frozen=True)
class Rates:
    """Minutes per epoch (training + validation) by regulariser kind and epochs per cell."""

    epoch_minutes: dict[str, float]
    epochs: float
    source: str

    def minutes(self, cell: Cell) -> float:
        return self.epoch_minutes[cell.kind] * self.epochs


def measured_rates(payloads: Sequence[dict[str, Any]], rdrop_cost: float) -> Rates | None:
    """Median minutes per epoch by kind and median epochs run over finished cells (pilot JSONs or
    this design's own); an unmeasured kind is the other times ``rdrop_cost`` (or divided)."""
    per_kind: dict[str, list[float]] = {}
    epochs = []
    for p in payloads:
        t = p.get("timing") or {}
        if t.get("epoch_seconds") or t.get("train_seconds_per_epoch"):
            seconds = t.get("epoch_seconds") or t["train_seconds_per_epoch"]
            kind = (p.get("config", {}).get("regularizer") or {}).get("kind", p.get("kind"))
            per_kind.setdefault("none" if kind == "none" else "rdrop", []).append(seconds / 60)
        if p.get("epochs_run") or p.get("epochs"):
            epochs.append(p.get("epochs_run") or p["epochs"])
    if not per_kind or not epochs:
        return None
    m = {k: statistics.median(v) for k, v in per_kind.items()}
    m.setdefault("rdrop", m.get("none", 0.0) * rdrop_cost)
    m.setdefault("none", m["rdrop"] / rdrop_cost)
    n = sum(len(v) for v in per_kind.values())
    return Rates(m, statistics.median(epochs), f"measured: medians over {n} finished cell(s)")


def given_rates(epoch_minutes: float, rdrop_cost: float, epochs: float) -> Rates:
    return Rates(
        {"none": epoch_minutes, "rdrop": epoch_minutes * rdrop_cost},
        epochs,
        f"given: {epoch_minutes:g} min per plain epoch, R-Drop x{rdrop_cost:g}, "
        f"{epochs:g} epochs per cell",
    )
