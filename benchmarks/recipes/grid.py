"""The cells of the recipe benchmark: shared by ``run.py`` (trains them) and ``report.py``.

A *cell* is one ``gpner.training.train`` run of a config file (``configs/*.toml`` or one here)
plus ``--set`` overrides, trained with the shared cell machinery of ``benchmarks/cellrunner.py``
(resumable, one JSON per cell). Two kinds:

* ``explore/<variant>``: the from-scratch exploration on CLUENER, every variant with the same
  fixed epoch budget and CLUENER dev scored after each epoch (which model learns fastest);
* ``recipe/<recipe>[/<variant>]/s<seed>``: a recipe trained with early stopping (``train.patience``,
  ``train.epochs`` a maximum), scored on the split its published anchor reports.

A recipe's *own* cell is the one whose config is its TOML unchanged (its own seed, no variant):
that is the row ``gpner train CONFIG`` reproduces. Nothing here does work at import time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import cellrunner as CR

HERE = Path(__file__).resolve().parent
ROOT = CR.ROOT
DEFAULT_RESULTS = HERE / "results"  # explore__*.json and recipe__*.json

# ------------------------------------------------------------------------------- explore

EXPLORE_BASE = "benchmarks/recipes/explore_base.toml"
_TF = ("encoder.kind=char_transformer",)
_LSTM = ("encoder.kind=bilstm", "encoder.num_layers=1")
_BIGRAMS = ("encoder.bigrams=true",)
_NARROW = ("encoder.bigram_size=64",)  # a 64-wide bigram table projected to hidden_size

# name -> (overrides on EXPLORE_BASE, what it tests). Every variant: the base's 4 epochs.
EXPLORE: dict[str, tuple[tuple[str, ...], str]] = {
    "tf-256x2": (_TF, "the main job's model before this exploration"),
    "tf-256x2-bigram": (_TF + _BIGRAMS, "+ char bigrams"),
    "lstm-256x1": (_LSTM, "a 1-layer BiLSTM instead"),
    "lstm-256x1-bigram": (_LSTM + _BIGRAMS, "BiLSTM + char bigrams"),
    "tf-256x2-bigram64": (_TF + _BIGRAMS + _NARROW, "+ char bigrams, 64 wide, projected"),
    "lstm-256x1-bigram64": (_LSTM + _BIGRAMS + _NARROW, "BiLSTM + 64-wide char bigrams"),
    "lstm-256x1-lr5e-3": (_LSTM + ("train.lr=5e-3",), "BiLSTM, learning rate 5e-3"),
    "lstm-256x1-b16": (_LSTM + ("train.batch_size=16",), "BiLSTM, batch 16 (twice the steps)"),
    "lstm-256x1-lr1e-2": (_LSTM + ("train.lr=1e-2",), "BiLSTM, learning rate 1e-2"),
    "lstm-256x1-bigram64-lr5e-3": (
        _LSTM + _BIGRAMS + _NARROW + ("train.lr=5e-3",),
        "BiLSTM + 64-wide bigrams, learning rate 5e-3",
    ),
    "lstm-256x1-bigram64-lr1e-2": (
        _LSTM + _BIGRAMS + _NARROW + ("train.lr=1e-2",),
        "BiLSTM + 64-wide bigrams, learning rate 1e-2",
    ),
    "lstm-256x2-lr5e-3": (
        ("encoder.kind=bilstm", "encoder.num_layers=2", "train.lr=5e-3"),
        "BiLSTM, 2 layers, learning rate 5e-3",
    ),
    "lstm-512x1-lr5e-3": (
        _LSTM + ("encoder.hidden_size=512", "train.lr=5e-3"),
        "BiLSTM, twice as wide, learning rate 5e-3",
    ),
    "tf-128x2": (_TF + ("encoder.hidden_size=128", "encoder.ffn_size=256"), "narrower"),
    "tf-256x4": (_TF + ("encoder.num_layers=4",), "deeper"),
    "tf-256x1": (_TF + ("encoder.num_layers=1",), "shallower"),
}


# ------------------------------------------------------------------------------- recipes


@dataclass(frozen=True)
class Anchor:
    """A published score on the same data set, for comparison."""

    model: str
    f1: float  # percent
    source: str
    note: str = ""  # where the split or setting differs from ours
    split: str = ""  # the split the score is on, shown beside it in the table


_CLUENER_PAPER = "Xu et al. 2020, CLUENER2020 paper (arXiv:2001.04351)"
# The paper's baselines are leaderboard scores on CLUENER's test set, whose labels are not public;
# the recipes report CLUENER dev, so the two do not compare directly.
_HIDDEN_TEST = "a leaderboard score on the hidden test set, not comparable to the dev F1 here"
_CLUENER_ANCHORS = (
    Anchor(
        "BERT-base + GlobalPointer",
        80.03,
        "Su Jianlin, GlobalPointer (kexue.fm/archives/8373), CLUENER dev",
        split="dev",
    ),
    Anchor(
        "BERT-base + Efficient GlobalPointer",
        80.66,
        "Su Jianlin, Efficient GlobalPointer (kexue.fm/archives/8877), CLUENER dev",
        split="dev",
    ),
    Anchor("BERT-base", 78.82, _CLUENER_PAPER, _HIDDEN_TEST, "hidden test: not comparable"),
    Anchor("BiLSTM-CRF", 70.00, _CLUENER_PAPER, _HIDDEN_TEST, "hidden test: not comparable"),
)


@dataclass(frozen=True)
class Recipe:
    name: str  # in cell ids
    config: str  # relative to the repository root
    dataset: str
    encoder: str
    split: str  # "dev" or "test": the split the row reports
    split_note: str  # what that split is, in words
    anchors: tuple[Anchor, ...] = ()
    # variant name -> overrides; "" is the recipe's own config
    variants: dict[str, tuple[str, ...]] = field(default_factory=lambda: {"": ()})
    seeds: int = 1  # seeds of the variants in multi_seed: the config's seed, then seed + 1, ...
    multi_seed: tuple[str, ...] = ()


# A recipe whose 10-epoch run ended with its best epoch last is also run with twice the cap.
# The learning rate decays linearly to 0 at ``train.epochs``, so a larger cap is a different
# schedule too, not only more epochs: the comparison says which of the two the data set wants.
LONGER_CAP: dict[str, tuple[str, ...]] = {"": (), "cap20": ("train.epochs=20",)}

RECIPES: tuple[Recipe, ...] = (
    Recipe(
        "cluener-char",
        "configs/cluener_char.toml",
        "CLUENER",
        "char BiLSTM + bigrams (from scratch)",
        "dev",
        "CLUENER dev (the test labels are not public); dev also picks the best epoch",
        anchors=_CLUENER_ANCHORS[3:],
    ),
    Recipe(
        "cluener-m3e",
        "configs/cluener_m3e.toml",
        "CLUENER",
        "m3e-small",
        "dev",
        "CLUENER dev (the test labels are not public); dev also picks the best epoch",
        anchors=_CLUENER_ANCHORS,
        variants={
            "gp": ("head.kind=global_pointer",),
            "egp": ("head.kind=efficient_global_pointer",),
            "gp-rdrop": ("head.kind=global_pointer", "regularizer.kind=rdrop"),
        },
        seeds=3,
        multi_seed=("gp", "egp"),
    ),
    Recipe(
        "weibo-m3e",
        "configs/weibo_m3e.toml",
        "Weibo NER (all: NAM + NOM)",
        "m3e-small",
        "test",
        "weiboNER_2nd_conll test; dev picks the best epoch",
        anchors=(
            Anchor(
                "Lattice LSTM",
                58.79,
                "Zhang and Yang 2018, Chinese NER Using Lattice LSTM (ACL), Weibo all, test",
                split="test",
            ),
        ),
    ),
    Recipe(
        "cmeee-m3e",
        "configs/cmeee_m3e.toml",
        "CMeEE-V2 (nested)",
        "m3e-small",
        "test",
        "CMeEE-V2_dev.json[4000:] (1000 sentences; training uses [:4000] minus a seeded 10 % "
        "validation split): the official training file is not available here",
        variants=LONGER_CAP,
    ),
    Recipe(
        "conll2003-minilm",
        "configs/conll2003_minilm.toml",
        "CoNLL-2003 English",
        "all-MiniLM-L6-v2",
        "test",
        "eng.testb; eng.testa picks the best epoch",
        anchors=(
            Anchor(
                "BERT-base",
                92.4,
                "Devlin et al. 2019, BERT (NAACL), CoNLL-2003 test",
                split="test",
            ),
            Anchor(
                "BiLSTM-CRF",
                90.94,
                "Lample et al. 2016, Neural Architectures for NER (NAACL), CoNLL-2003 test",
                "with pre-trained word embeddings and character features",
                split="test",
            ),
        ),
        variants=LONGER_CAP,
    ),
)
RECIPE_BY_NAME = {r.name: r for r in RECIPES}


# --------------------------------------------------------------------------------- cells


@dataclass(frozen=True)
class Cell(CR.StemFromId):
    kind: str  # "explore" | "recipe"
    name: str  # explore variant, or recipe name
    config_path: str
    overrides: tuple[str, ...]
    order: int  # run order
    variant: str = ""  # recipe variant ("" = the recipe's own config)
    seed_offset: int = 0  # recipe cells: seed = the config's seed + this
    why: str = ""

    @property
    def id(self) -> str:
        if self.kind == "explore":
            return f"explore/{self.name}"
        parts = ["recipe", self.name] + ([self.variant] if self.variant else [])
        return "/".join(parts + [f"s{self.seed_offset + 1}"])

    @property
    def block(self) -> int:
        return 1 if self.kind == "explore" else 2

    @property
    def recipe(self) -> Recipe | None:
        return RECIPE_BY_NAME.get(self.name) if self.kind == "recipe" else None


def _recipe_cells() -> list[Cell]:
    """Cheapest informative first: the char recipe, CLUENER/m3e-small with each head, Weibo,
    R-Drop, the other seeds of the head comparison, then CMeEE and CoNLL."""
    out = []

    def add(recipe: Recipe, variant: str, seed_offset: int, order: int) -> None:
        out.append(
            Cell(
                "recipe",
                recipe.name,
                recipe.config,
                recipe.variants[variant],
                order,
                variant,
                seed_offset,
            )
        )

    by = RECIPE_BY_NAME
    order = 100
    first = [("cluener-char", ""), ("cluener-m3e", "gp"), ("cluener-m3e", "egp")]
    first += [("weibo-m3e", ""), ("cluener-m3e", "gp-rdrop")]
    for name, variant in first:
        add(by[name], variant, 0, order)
        order += 1
    m3e = by["cluener-m3e"]
    for seed_offset in range(1, m3e.seeds):
        for variant in m3e.multi_seed:
            add(m3e, variant, seed_offset, order)
            order += 1
    for name in ("cmeee-m3e", "conll2003-minilm"):
        for variant in by[name].variants:
            add(by[name], variant, 0, order)
            order += 1
    return out


def cells(kinds: Sequence[str] = ("explore", "recipe")) -> list[Cell]:
    out: list[Cell] = []
    if "explore" in kinds:
        for k, (name, (overrides, why)) in enumerate(EXPLORE.items()):
            out.append(Cell("explore", name, EXPLORE_BASE, overrides, k, why=why))
    if "recipe" in kinds:
        out += _recipe_cells()
    return sorted(out, key=lambda c: c.order)


def cell_config(
    cell: Cell, work_root: Path, overrides: Sequence[str] = (), threads: int | None = None
):
    """The full config of a cell: its file, its overrides, its seed, the run's settings."""
    from gpner.config import load_config

    base = load_config(ROOT / cell.config_path)
    extra = list(cell.overrides)
    if cell.seed_offset:
        extra.append(f"train.seed={base.train.seed + cell.seed_offset}")
    extra += list(overrides)
    extra += ["train.progress=false", f"train.num_threads={threads or 'none'}"]
    config = load_config(ROOT / cell.config_path, extra)
    config.output_dir = str(work_root / cell.stem)
    return config


def own_config(recipe: Recipe):
    """The recipe's TOML exactly as ``gpner train CONFIG`` reads it."""
    from gpner.config import load_config

    return load_config(ROOT / recipe.config)


@dataclass
class PlanEntry:
    cell: Cell
    status: str  # done | pending | partial | stale
    config: Any
    result: dict[str, Any] | None = None


def plan(
    kinds: Sequence[str],
    results_dir: Path = DEFAULT_RESULTS,
    *,
    overrides: Sequence[str] = (),
    threads: int | None = None,
) -> list[PlanEntry]:
    """The status of every cell of these kinds, in run order, with its config."""
    results_dir = Path(results_dir)
    out = []
    for cell in cells(kinds):
        config = cell_config(cell, results_dir / CR.WORK_DIRNAME, overrides, threads)
        status, stored = CR.cell_status(results_dir, cell.stem, config)
        out.append(PlanEntry(cell, status, config, stored))
    return out
