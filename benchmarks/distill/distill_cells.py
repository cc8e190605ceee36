"""The cells of the distillation benchmark: shared by ``run.py`` (trains them),
``predict_speed.py`` and ``report.py`` (RESULTS.md).

Teacher ``configs/cluener_m3e.toml`` (m3e-small, Efficient GlobalPointer), student
``configs/cluener_char.toml`` (the char BiLSTM + bigrams, its budget and patience unchanged).
Cells, in run order (each one ``gpner.training.train`` run through ``benchmarks/cellrunner.py``:
resumable, one JSON per cell):

1. ``teacher/s1``: the teacher's own config; its best model is kept in ``models/teacher``
   (git-ignored), the teacher of every other cell.
2. ``search/...``: seed 1 only, trained on 90 % of CLUENER train and scored on the other 10 %
   (``data.validation_fraction = 0.1``, a seeded split; dev is never read): the from-scratch
   student (``search/scratch/s1``), each KD term at every weight of :data:`BETAS` with T = 1
   (``search/<term>/b<beta>/s1``), then gp_kl and softmax_kl at :data:`TEMPERATURES` with the
   best weight of their T = 1 cells (``search/<term>/t<T>/s1``; the squared error ignores T).
3. ``final/...``: full train, CLUENER dev, seeds 1-3: the from-scratch student
   (``final/scratch/s<k>``) and each KD term at its best (beta, T) of the search
   (``final/<term>/s<k>``); their best models are kept in ``models/`` for
   ``predict_speed.py``.
4. ``unlabeled/gp_kl/s<k>`` (optional, ``--kind unlabeled``): the final gp_kl cells plus the
   People's Daily texts (``people_daily/example.dev`` and ``.test``, labels ignored) as
   ``distill.unlabeled``.

A cell whose settings depend on cells not done yet is ``blocked``. Paths in the configs are
relative to the repository root (``run.py`` runs from there), so the JSONs hold no machine path.
The teacher's logits are cached once per training set in ``models/teacher_logits`` (shared by
every cell). Nothing here does work at import time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import cellrunner as CR

HERE = Path(__file__).resolve().parent
ROOT = CR.ROOT
DEFAULT_RESULTS = HERE / "results"
MODELS = HERE / "models"  # kept model directories, the cache, the unlabelled texts (git-ignored)
TEACHER_DIR = MODELS / "teacher"
CACHE_DIR = MODELS / "teacher_logits"
UNLABELED = MODELS / "people_daily.txt"
PEOPLE_DAILY = ("people_daily/example.dev", "people_daily/example.test")

TEACHER_CONFIG = "configs/cluener_m3e.toml"
STUDENT_CONFIG = "configs/cluener_char.toml"
TERMS = ("gp_kl", "softmax_kl", "mse")
# Weights searched at T = 1. D and the squared error are summed over the cells of each
# (example, type) (the squared error about 4x D near agreement), the softmax KL is one KL per
# (example, type): hence different ranges, each four steps of 4x.
BETAS: dict[str, tuple[float, ...]] = {
    "gp_kl": (1 / 64, 1 / 16, 1 / 4, 1.0),
    "softmax_kl": (1 / 16, 1 / 4, 1.0, 4.0),
    "mse": (1 / 256, 1 / 64, 1 / 16, 1 / 4),
}
TEMPERATURES: dict[str, tuple[float, ...]] = {"gp_kl": (2.0, 4.0), "softmax_kl": (2.0, 4.0)}
SEARCH_SPLIT = ("data.validation_fraction=0.1", "data.split_seed=0")
SEEDS = 3
KINDS = ("teacher", "search", "final", "unlabeled")
DEFAULT_KINDS = ("teacher", "search", "final")


def rel(path: Path) -> str:
    """``path`` relative to the repository root (what the configs hold); absolute outside it."""
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


@dataclass(frozen=True)
class Cell(CR.StemFromId):
    kind: str  # teacher | search | final | unlabeled
    term: str = ""  # "" for the teacher, "scratch" for the from-scratch student, else a KD term
    beta: float | None = None  # search cells at T = 1
    temperature: float | None = None  # search cells at the best beta
    seed_offset: int = 0
    order: int = 0

    @property
    def id(self) -> str:
        parts = [self.kind] + ([self.term] if self.term else [])
        if self.beta is not None:
            parts.append(f"b{self.beta:g}")
        if self.temperature is not None:
            parts.append(f"t{self.temperature:g}")
        return "/".join(parts + [f"s{self.seed_offset + 1}"])

    @property
    def block(self) -> int:
        return KINDS.index(self.kind) + 1

    @property
    def distilled(self) -> bool:
        return self.kind != "teacher" and self.term != "scratch"


def cells(kinds: Sequence[str] = DEFAULT_KINDS) -> list[Cell]:
    out: list[Cell] = []
    if "teacher" in kinds:
        out.append(Cell("teacher", order=0))
    if "search" in kinds:
        out.append(Cell("search", "scratch", order=100))
        for term in TERMS:
            out += [Cell("search", term, beta=b, order=101) for b in BETAS[term]]
        for term, temps in TEMPERATURES.items():
            out += [Cell("search", term, temperature=t, order=102) for t in temps]
    if "final" in kinds:
        for k in range(SEEDS):
            out.append(Cell("final", "scratch", seed_offset=k, order=200 + k))
            out += [Cell("final", term, seed_offset=k, order=200 + k) for term in TERMS]
    if "unlabeled" in kinds:
        out += [Cell("unlabeled", "gp_kl", seed_offset=k, order=300 + k) for k in range(SEEDS)]
    return sorted(out, key=lambda c: c.order)


# ---------------------------------------------------------------------------- the search


def _validation_f1(result: dict[str, Any]) -> float:
    return result["validation"]["f1"]


def best_setting(term: str, results: dict[str, dict]) -> tuple[float, float] | None:
    """``(beta, T)`` of ``term``'s best search cell by validation F1 (the earlier cell on a tie),
    or None while one of its search cells is not done. ``results``: cell id -> result JSON."""
    beta = best_beta(term, results)
    if beta is None:
        return None
    scored = [(_validation_f1(results[Cell("search", term, beta=beta).id]), 0, 1.0)]
    for k, t in enumerate(TEMPERATURES.get(term, ())):
        result = results.get(Cell("search", term, temperature=t).id)
        if result is None:
            return None
        scored.append((_validation_f1(result), -(k + 1), t))
    return beta, max(scored)[2]


def best_beta(term: str, results: dict[str, dict]) -> float | None:
    """The weight of ``term``'s best T = 1 search cell, or None while one is not done."""
    scored = []
    for k, beta in enumerate(BETAS[term]):
        result = results.get(Cell("search", term, beta=beta).id)
        if result is None:
            return None
        scored.append((_validation_f1(result), -k, beta))
    return max(scored)[2]


# ---------------------------------------------------------------------------- configs


def cell_overrides(cell: Cell, results: dict[str, dict]) -> list[str] | None:
    """The ``--set`` overrides of a cell on its config file, or None while it is blocked."""
    if cell.kind == "teacher":
        return []
    extra: list[str] = []
    if cell.distilled:
        if Cell("teacher").id not in results:
            return None
        extra += [f'distill.teacher="{rel(TEACHER_DIR)}"', f'distill.cache_dir="{rel(CACHE_DIR)}"']
        extra.append(f"distill.kd={cell.term}")
    if cell.kind == "search":
        extra += list(SEARCH_SPLIT)
        if cell.beta is not None:
            extra += [f"distill.beta={cell.beta!r}", "distill.temperature=1.0"]
        elif cell.temperature is not None:
            beta = best_beta(cell.term, results)
            if beta is None:
                return None
            extra += [f"distill.beta={beta!r}", f"distill.temperature={cell.temperature!r}"]
    elif cell.distilled:  # final and unlabeled cells: the term's best setting
        setting = best_setting(cell.term, results)
        if setting is None:
            return None
        extra += [f"distill.beta={setting[0]!r}", f"distill.temperature={setting[1]!r}"]
        if cell.kind == "unlabeled":
            extra.append(f'distill.unlabeled="{rel(UNLABELED)}"')
    return extra


def cell_config(
    cell: Cell,
    overrides: Sequence[str],
    work_root: Path,
    run_overrides: Sequence[str] = (),
    threads: int | None = None,
):
    """The full config of a cell: its file, its overrides, its seed, the run's settings."""
    from gpner.config import load_config

    path = ROOT / (TEACHER_CONFIG if cell.kind == "teacher" else STUDENT_CONFIG)
    base = load_config(path)
    extra = list(overrides)
    if cell.seed_offset:
        extra.append(f"train.seed={base.train.seed + cell.seed_offset}")
    extra += list(run_overrides)
    extra += ["train.progress=false", f"train.num_threads={threads or 'none'}"]
    config = load_config(path, extra)
    config.output_dir = str(work_root / cell.stem)
    return config


@dataclass
class PlanEntry:
    cell: Cell
    status: str  # done | pending | partial | stale | blocked
    config: Any
    result: dict[str, Any] | None = None
    overrides: list[str] = field(default_factory=list)


def plan(
    kinds: Sequence[str] = DEFAULT_KINDS,
    results_dir: Path = DEFAULT_RESULTS,
    *,
    overrides: Sequence[str] = (),
    threads: int | None = None,
) -> list[PlanEntry]:
    """Every cell of these kinds in run order, with its status and config (None when blocked).

    The settings a cell takes from others are read from the cells of every kind, so a final
    cell's (beta, T) come from the search cells even when only ``final`` is planned."""
    results_dir = Path(results_dir)
    work = results_dir / CR.WORK_DIRNAME
    done: dict[str, dict] = {}
    for cell in cells(KINDS):  # every kind, in order: later cells read earlier results
        extra = cell_overrides(cell, done)
        if extra is None:
            continue
        config = cell_config(cell, extra, work, overrides, threads)
        status, stored = CR.cell_status(results_dir, cell.stem, config)
        if status == "done":
            done[cell.id] = stored
    out = []
    for cell in cells(kinds):
        extra = cell_overrides(cell, done)
        if extra is None:
            out.append(PlanEntry(cell, "blocked", None))
            continue
        config = cell_config(cell, extra, work, overrides, threads)
        status, stored = CR.cell_status(results_dir, cell.stem, config)
        out.append(PlanEntry(cell, status, config, stored, extra))
    return out


def distill_command(entry: PlanEntry) -> str:
    """The user command that trains a distilled cell's student."""
    sets = [o for o in entry.overrides if o.startswith("distill.") and "teacher=" not in o]
    sets = [o for o in sets if "cache_dir=" not in o]
    if entry.cell.seed_offset:
        sets.append(f"train.seed={entry.config.train.seed}")
    tail = " ".join(f"--set {o}" for o in sets)
    return f"gpner distill {rel(TEACHER_DIR)} {STUDENT_CONFIG} {tail}".strip()
