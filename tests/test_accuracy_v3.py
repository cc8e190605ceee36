"""Design v3 of the accuracy experiment (benchmarks/accuracy/design_v3.py, run_v3.py,
report_v3.py) and its statistics (paired.py): the cell list, the alpha extension rule, Holm,
the refusal to mix commits, the validation split, and the report on partial and complete fake
results. One test trains two tiny cells on synthetic data through the runner's commands."""

import json
import math
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from benchmarks.accuracy import design_v3 as D
from benchmarks.accuracy import paired as P
from benchmarks.accuracy import report_v3 as R
from benchmarks.accuracy import run_v3

ROOT = Path(__file__).resolve().parents[1]
COMMIT = "c" * 40


def _fake(results: Path, cell: D.Cell, alpha, val, test=None, commit=COMMIT, design=D.V3):
    curve = [val - 0.02, val, val - 0.01]
    payload = {
        "cell": cell.id,
        "stage": cell.stage,
        "variant": cell.variant,
        "seed": cell.seed,
        "kind": cell.kind,
        "alpha": alpha,
        "spec": D.spec(design, cell, alpha),
        "library": {"commit": commit},
        "validation": {"f1": val, "best_epoch": 2, "per_epoch": curve},
        "epochs_run": 3,
        "test": None if test is None else {"micro": {"f1": test}},
        "probe": {
            "median_share": 0.1,
            "median_ce_grad_norm": 1.0,
            "median_divergence_grad_norm": 0.2,
        }
        if alpha
        else None,
        "timing": {"wall_seconds": 600.0, "epoch_seconds": 60.0},
        "machine": {"cpu_model": "fake CPU", "layout": "1x2"},
    }
    (results / f"{cell.stem}.json").write_text(json.dumps(payload), encoding="utf-8")


def _fill_search(results, design=D.V3, best=1 / 16):
    """Every base search cell; the best mean validation F1 at ``best`` for each divergence."""
    for seed in design.search_seeds:
        _fake(results, D.Cell("search", "baseline", seed), None, 0.70)
        _fake(results, D.Cell("search", "rdrop-none", seed), 0.0, 0.705)
        for d in D.DIVERGENCES:
            for a in design.alphas:
                val = 0.72 - 0.005 * abs(math.log(a / best, 4))
                _fake(results, D.Cell("search", "rdrop-" + d, seed, a), a, val)


# ---------------------------------------------------------------------------- the cells


def test_cell_list_counts_and_order(tmp_path):
    entries = D.plan(D.V3, tmp_path)
    ids = [e.cell.id for e in entries]
    assert len(ids) == len(set(ids))
    search = [e for e in entries if e.cell.stage == "search"]
    finals = [e for e in entries if e.cell.stage == "final"]
    assert {e.cell.variant for e in entries} == set(D.VARIANTS) and len(D.VARIANTS) == 5
    assert len(search) == 2 * (2 + 3 * 4)  # 2 seeds x (baseline, rdrop-none, 3 x 4 alphas)
    assert len(finals) == 5 * 7 and {e.cell.seed for e in finals} == set(range(1, 8))
    assert {e.cell.seed for e in search} == {101, 102}
    assert all(e.status == "blocked" for e in finals if e.cell.divergence)
    assert all(e.status == "pending" for e in entries if e.status != "blocked")
    assert ids[:3] == [
        "search/baseline/s101",
        "search/rdrop-none/s101",
        "search/rdrop-gp_kl/a1_256/s101",
    ]
    # The configs: the recipe's model at 12 epochs, patience 3, the carved split, no test file
    sets = D.overrides(D.V3, D.Cell("final", "rdrop-gp_kl", 3), 1 / 64)
    assert "train.epochs=12" in sets and "train.patience=3" in sets and "train.seed=3" in sets
    assert "data.validation_fraction=0.1" in sets and "regularizer.alpha=0.015625" in sets
    none = D.overrides(D.V3, D.Cell("final", "rdrop-none", 1), 0.0)
    assert "regularizer.alpha=0.0" in none and not any("divergence" in s for s in none)
    assert D.overrides(D.V3, D.Cell("final", "baseline", 1), None)[-1] == "regularizer.kind=none"


def test_alpha_extension_rule():
    design = D.V3
    seeds = design.search_seeds

    def scores(values):
        return {a: {s: v for s in seeds} for a, v in values.items()}

    grid = dict(zip(sorted(design.alphas), (0.70, 0.71, 0.73, 0.72)))
    interior = D.alpha_search(design, scores(grid))
    assert interior.chosen == 1 / 16 and interior.note == "bracketed"
    assert interior.alphas == tuple(sorted(design.alphas))
    # The lowest wins: one factor of 4 below it is searched, then the choice is bracketed
    low = dict(zip(sorted(design.alphas), (0.74, 0.73, 0.72, 0.71)))
    step = D.alpha_search(design, scores(low))
    assert step.chosen is None and step.alphas[0] == 1 / 1024
    assert D.possible_alphas(design, step) == [1.0, 4.0]
    done = D.alpha_search(design, scores({**low, 1 / 1024: 0.735}))
    assert done.chosen == 1 / 256 and done.note == "bracketed"
    at_limit = D.alpha_search(design, scores({**low, 1 / 1024: 0.75}))
    assert at_limit.chosen == 1 / 1024 and at_limit.note == "at the limit of the range"
    # The highest wins: 1, then 4, which is the limit
    high = dict(zip(sorted(design.alphas), (0.70, 0.71, 0.72, 0.73)))
    assert D.alpha_search(design, scores(high)).alphas[-1] == 1.0
    top = D.alpha_search(design, scores({**high, 1.0: 0.74, 4.0: 0.75}))
    assert top.chosen == 4.0 and top.note == "at the limit of the range"
    # A seed missing: nothing is chosen; ties go to the smaller alpha
    partial = scores(grid)
    del partial[1 / 64][seeds[1]]
    assert D.alpha_search(design, partial).chosen is None
    tie = D.alpha_search(design, scores(dict(zip(sorted(design.alphas), (0.7, 0.73, 0.73, 0.7)))))
    assert tie.chosen == 1 / 64


def test_plan_adds_extension_cells_from_finished_search_cells(tmp_path):
    _fill_search(tmp_path, best=1 / 256)  # every divergence peaks at its lowest alpha
    entries = {e.cell.id: e for e in D.plan(D.V3, tmp_path)}
    for seed in (101, 102):
        assert entries[f"search/rdrop-gp_kl/a1_1024/s{seed}"].status == "pending"
    assert entries["final/rdrop-gp_kl/s1"].status == "blocked"
    assert entries["final/baseline/s1"].status == "pending"
    for d in D.DIVERGENCES:
        for seed in (101, 102):
            _fake(tmp_path, D.Cell("search", "rdrop-" + d, seed, 1 / 1024), 1 / 1024, 0.70)
    entries = {e.cell.id: e for e in D.plan(D.V3, tmp_path)}
    final = entries["final/rdrop-softmax_kl/s4"]
    assert final.status == "pending" and final.alpha == 1 / 256
    assert "regularizer.alpha=0.00390625" in D.overrides(D.V3, final.cell, final.alpha)


# ------------------------------------------------------------------------------ statistics


def test_holm_and_one_sided_tests_on_known_values():
    out = P.holm([0.01, 0.04, None, 0.03, 0.005])
    assert out[2] is None
    assert [out[k] for k in (0, 1, 3, 4)] == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert P.holm([0.001] * 7) == pytest.approx([0.007] * 7)
    assert P.holm([0.9, 0.8]) == pytest.approx([1.0, 1.0])
    # 7 pairs, differences with mean 0.01 and sd 0.01: t = sqrt(7) = 2.6458, df = 6
    t = P.paired(
        {k: 0.7 + d for k, d in enumerate((0.0, 0.02, 0.01, 0.0, 0.02, 0.01, 0.01))},
        {k: 0.7 for k in range(7)},
    )
    assert t.t == pytest.approx(math.sqrt(7) * 0.01 / t.sd)
    assert t.p_greater == pytest.approx(P.t_two_sided_p(t.t, 6) / 2)
    assert P.paired({1: 0.5, 2: 0.6}, {1: 0.6, 2: 0.8}).p_greater > 0.5  # the other direction
    lower, upper = t.bound("lower"), t.bound("upper")
    assert lower < t.mean < upper and t.mean - lower == pytest.approx(upper - t.mean)
    assert t.mean - lower == pytest.approx(P.t_quantile(0.95, 6) * t.sd / math.sqrt(7))
    assert P.paired({1: 0.7}, {1: 0.6}).p_greater is None


# -------------------------------------------------------------------------------- pinning


def test_refuses_to_mix_commits(tmp_path, capsys):
    _fake(tmp_path, D.Cell("search", "baseline", 101), None, 0.7, commit="a" * 40)
    results = D.load_results(tmp_path)
    assert D.check_commits(results, None) == "a" * 40
    assert D.check_commits(results, "a" * 40) == "a" * 40
    with pytest.raises(D.DesignError, match="runs one library commit"):
        D.check_commits(results, "b" * 40)
    _fake(tmp_path, D.Cell("search", "baseline", 102), None, 0.7, commit="b" * 40)
    with pytest.raises(D.DesignError, match="search/baseline/s10"):
        D.check_commits(D.load_results(tmp_path), None)
    assert run_v3.main(["--results", str(tmp_path), "--dry-run", "--epoch-minutes", "1"]) == 2
    assert "runs one library commit" in capsys.readouterr().err


def test_a_result_from_other_settings_is_an_error(tmp_path):
    cell = D.Cell("search", "baseline", 101)
    _fake(tmp_path, cell, None, 0.7, design=replace(D.V3, epochs=20))
    with pytest.raises(D.DesignError, match="other settings"):
        D.plan(D.V3, tmp_path)


def _git(repo, *args):
    return subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True
    ).stdout.strip()


def test_pinned_worktree_and_commit_results(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    _git(repo, "config", "user.email", "t@example.com")
    _git(repo, "config", "user.name", "t")
    (repo / "a.txt").write_text("one")
    _git(repo, "add", "a.txt")
    _git(repo, "commit", "-qm", "one")
    first = _git(repo, "rev-parse", "HEAD")
    path, commit = run_v3.pinned_checkout(repo, "HEAD", tmp_path / "pins")
    assert commit == first and (path / "a.txt").read_text() == "one"
    assert run_v3.pinned_checkout(repo, first[:8], tmp_path / "pins") == (path, commit)
    (path / "a.txt").write_text("changed")
    with pytest.raises(D.DesignError, match="local changes"):
        run_v3.pinned_checkout(repo, first, tmp_path / "pins")
    # --commit-results: the cell's JSON alone is committed
    (repo / "a.txt").write_text("unrelated edit")
    (repo / "cell.json").write_text("{}")
    assert run_v3.commit_file(repo / "cell.json", "cell x")
    assert _git(repo, "show", "--name-only", "--format=%s", "HEAD").split() == [
        "cell",
        "x",
        "cell.json",
    ]
    assert "a.txt" in _git(repo, "status", "--porcelain")


# -------------------------------------------------------------------------- the split


def _examples(n):
    from gpner.data.spans import Example, Span

    return [Example(f"张{k}在北京", [Span(0, 1, "PER")]) for k in range(n)]


def test_validation_split_is_deterministic_and_disjoint():
    from gpner.corpus import split_validation

    examples = _examples(200)
    train, validation = split_validation(examples, 0.1, 0)
    again = split_validation(examples, 0.1, 0)
    assert (train, validation) == again and len(validation) == 20 and len(train) == 180
    texts = [ex.text for ex in examples]
    assert sorted(ex.text for ex in train + validation) == sorted(texts)
    assert not {ex.text for ex in train} & {ex.text for ex in validation}
    assert split_validation(examples, 0.1, 1)[1] != validation  # the seed picks the split


def test_the_design_carves_the_same_split_from_cluener_train_in_every_cell():
    from gpner.config import load_config
    from gpner.corpus import Corpus
    from gpner.data.paths import data_root

    if not (data_root() / D.V3.train_file).is_file():
        pytest.skip(f"CLUENER not found under {data_root()}")
    corpora = []
    for cell, alpha in (
        (D.Cell("final", "baseline", 1), None),
        (D.Cell("search", "rdrop-gp_kl", 102, 1 / 4), 1 / 4),
    ):
        config = load_config(ROOT / D.V3.base_config, D.overrides(D.V3, cell, alpha))
        corpora.append(Corpus.from_config(config.data))
    a, b = corpora
    assert [ex.text for ex in a.dev] == [ex.text for ex in b.dev] and len(a.dev) == 1075
    assert len(a.train) + len(a.dev) == 10748 and a.test is None


# ------------------------------------------------------------------------------- the report


def _fill_finals(results, seeds, gains):
    for seed in seeds:
        for v in D.VARIANTS:
            alpha = {"baseline": None, "rdrop-none": 0.0}.get(v, 1 / 16)
            wobble = 0.002 * ((seed * 7 + len(v)) % 3)
            test = 0.70 + gains[v] + wobble
            _fake(results, D.Cell("final", v, seed), alpha, test + 0.01, test)


GAINS = {
    "baseline": 0.0,
    "rdrop-none": 0.01,
    "rdrop-gp_kl": 0.03,
    "rdrop-softmax_kl": 0.0,
    "rdrop-softmax_kl_all": 0.02,
}


def test_report_on_a_complete_design(tmp_path):
    _fill_search(tmp_path)
    _fill_finals(tmp_path, range(1, 8), GAINS)
    text = R.build_report(tmp_path, tmp_path / "REPORT-v3.md").read_text()
    assert "63 of 63 planned cells finished (35 of 35 finals)" in text
    assert "Pending cells" not in text and f"`{COMMIT}`" in text
    rows = {line.split(" | ")[0]: line for line in text.splitlines() if line.startswith("| (")}
    assert len(rows) == 7
    assert rows["| (a) rdrop-gp_kl > baseline"].endswith("**holds** |")
    assert rows["| (c) rdrop-gp_kl > rdrop-softmax_kl_all"].endswith("**holds** |")
    verdict_d = rows["| (d) baseline > rdrop-softmax_kl"]
    assert verdict_d.endswith("unresolved |") and "| > " in verdict_d  # what the data rule out
    assert "not adjusted for multiplicity" in text
    assert "- gp_kl: α = 1/16 (bracketed)" in text
    assert "| gp_kl α=1/16 ← | 72.00 | 72.00 | 72.00 |" in text
    assert "| rdrop-gp_kl | 1/16 | 73." in text  # the finals table


def test_report_on_partial_results_draws_no_verdict_on_incomplete_claims(tmp_path):
    _fill_search(tmp_path)
    _fill_finals(tmp_path, range(1, 8), {k: v for k, v in GAINS.items()})
    for seed in (5, 6, 7):  # softmax_kl's last seeds are still to run
        (tmp_path / f"final__rdrop-softmax_kl__s{seed}.json").unlink()
    text = R.build_report(tmp_path, tmp_path / "R.md").read_text()
    rows = {line.split(" | ")[0]: line for line in text.splitlines() if line.startswith("| (")}
    for claim in (
        "(b) rdrop-softmax_kl > rdrop-none",
        "(c) rdrop-gp_kl > rdrop-softmax_kl",
        "(d) baseline > rdrop-softmax_kl",
    ):
        assert rows["| " + claim].endswith("no verdict: 4 of 7 paired seeds |")
    assert rows["| (a) rdrop-gp_kl > baseline"].endswith("**holds** |")  # cannot be undone
    assert "## Pending cells" in text and "`final/rdrop-softmax_kl/s5` (pending)" in text
    empty = R.build_report(tmp_path / "none", tmp_path / "E.md").read_text()
    assert "0 of 63 planned cells" in empty and "## Pre-registered design" in empty
    assert "**holds**" not in empty and empty.count("no verdict: 0 of 7") == 7


def test_dry_run_prints_the_hours_and_the_possible_extensions(tmp_path, capsys):
    assert run_v3.main(["--results", str(tmp_path), "--dry-run", "--epoch-minutes", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "search/rdrop-gp_kl/a1_1024/s101  (extension)" in out
    assert "cells: 21 blocked, 42 pending" in out
    # 9 plain cells x 6 min + 54 two-pass cells (rdrop-none too) x 12 min = 702 min; + 18
    # extensions x 12 min
    assert "left: 11.7 cell-hours without extensions, 15.3 with every possible" in out
    assert run_v3.main(["--results", str(tmp_path), "--dry-run"]) == 0
    assert "no time estimate" in capsys.readouterr().out


# ---------------------------------------------------------------------- two tiny real cells


def test_runner_trains_evaluates_and_probes_tiny_cells(tmp_path):
    pytest.importorskip("torch")
    from gpner.data.readers import write_jsonl
    from gpner.data.spans import Example, Span

    people, places = ["张三", "李四", "王小明", "赵敏"], ["北京", "上海", "广州", "深圳"]
    examples = [
        Example(f"{p}在{c}工作。", [Span(0, len(p), "PER"), Span(len(p) + 1, len(p) + 3, "LOC")])
        for p in people
        for c in places
    ]
    write_jsonl(examples * 2, tmp_path / "train.jsonl")
    write_jsonl(examples, tmp_path / "test.jsonl")
    (tmp_path / "tiny.toml").write_text(
        '[data]\nmax_length = 16\n[encoder]\nkind = "bilstm"\nhidden_size = 16\n'
        "[head]\nhead_size = 8\n[train]\nbatch_size = 8\nlr = 1e-2\n"
    )
    design = replace(
        D.V3,
        base_config=str(tmp_path / "tiny.toml"),
        train_file=str(tmp_path / "train.jsonl"),
        test_set=str(tmp_path / "test.jsonl"),
        epochs=2,
        patience=1,
        data=(
            f"data.train={tmp_path / 'train.jsonl'}",
            "data.validation_fraction=0.25",
            "data.split_seed=0",
        ),
    )
    results = tmp_path / "results"
    runner = run_v3.Runner(design, ROOT, COMMIT, results, layout="2x1")
    entry = D.Entry(D.Cell("final", "rdrop-gp_kl", 1), "pending", alpha=0.25)
    payload = runner.run_cell(entry)
    assert json.loads((results / "final__rdrop-gp_kl__s1.json").read_text()) == payload
    assert not (results / D.WORK_DIRNAME / "final__rdrop-gp_kl__s1").exists()
    assert payload["library"]["commit"] == COMMIT and payload["machine"]["threads"] == 1
    assert payload["config"]["regularizer"] == {
        **payload["config"]["regularizer"],
        "kind": "rdrop",
        "alpha": 0.25,
    }
    assert payload["config"]["train"]["epochs"] == 2 and payload["epochs_run"] <= 2
    assert len(payload["validation"]["per_epoch"]) == payload["epochs_run"]
    assert 0 <= payload["test"]["micro"]["f1"] <= 1 and payload["probe"]["batches"] >= 1
    assert payload["probe"]["median_ce_grad_norm"] > 0
    assert all(0 <= s < 1 for s in payload["divergence_share_per_epoch"])
    search = runner.run_cell(D.Entry(D.Cell("search", "baseline", 101), "pending"))
    assert search["test"] is None and search["probe"] is None
    assert search["divergence_share_per_epoch"] is None
