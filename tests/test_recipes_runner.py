"""The recipe benchmark (benchmarks/recipes): every recipe config has the cell that reproduces
it, a tiny cell trains through the shared cell runner and is skipped once done, and the reports
render its JSON. Synthetic data only; seconds."""

import pytest

from benchmarks.recipes import report, run
from tests.conftest import tiny_config_toml

G = run.G


def test_every_recipe_has_exactly_one_cell_that_is_its_config(tmp_path):
    entries = G.plan(["explore", "recipe"], tmp_path)
    ids = [e.cell.id for e in entries]
    assert len(ids) == len(set(ids))
    assert [e.cell.block for e in entries] == sorted(e.cell.block for e in entries)
    for recipe in G.RECIPES:
        own = G.CR.identity(G.own_config(recipe))
        matching = [
            e.cell.id
            for e in entries
            if e.cell.name == recipe.name and G.CR.identity(e.config) == own
        ]
        assert len(matching) == 1, (recipe.name, matching, own)
        assert G.own_config(recipe).train.patience is not None, "recipes stop early on dev"
    # The head comparison: both heads with every seed, seeds shared between the heads.
    m3e = [e for e in entries if e.cell.name == "cluener-m3e"]
    seeds = {
        v: sorted(e.config.train.seed for e in m3e if e.cell.variant == v) for v in ("gp", "egp")
    }
    assert seeds["gp"] == seeds["egp"] and len(seeds["gp"]) == 3
    kinds = {e.config.head.kind for e in m3e if e.cell.variant in ("gp", "egp")}
    assert kinds == {"global_pointer", "efficient_global_pointer"}


def test_a_cell_trains_once_and_the_reports_show_it(tmp_path, tiny_data, monkeypatch):
    train_path, dev_path = tiny_data
    base = tmp_path / "base.toml"
    encoder = ["[encoder]", 'kind = "bilstm"', "hidden_size = 16", "num_layers = 1"]
    base.write_text(tiny_config_toml(train_path, dev_path, encoder), encoding="utf-8")
    monkeypatch.setattr(G, "EXPLORE_BASE", str(base))
    monkeypatch.setattr(
        G, "EXPLORE", {"tiny": (("encoder.bigrams=true",), "a tiny BiLSTM with bigrams")}
    )
    results = tmp_path / "results"
    first = run.run_grid(["explore"], results, threads=1, machine="idle: a test")
    assert first["ran"] == ["explore/tiny"] and not first["failed"]
    second = run.run_grid(["explore"], results, threads=1)
    assert second["ran"] == [] and second["left"] == []
    (entry,) = G.plan(["explore"], results)
    r = entry.result
    assert entry.status == "done" and r["epochs"] == 2 and len(r["history"]) == 2
    assert r["parameters"] > 0 and r["config"]["encoder"]["bigrams"] is True
    assert r["timing"]["train_seconds"] > 0 and not (results / ".work" / entry.cell.stem).exists()
    text = report.explore_report([entry])
    assert "`tiny`" in text and f"{r['validation']['f1']:.4f}" in text
    assert "Not run yet" not in text
    # what else ran on the machine is recorded and shown beside the minutes
    assert r["machine"] == "idle: a test" and "idle: a test" in text


@pytest.mark.parametrize(
    "epochs, best, stopped, capped",
    [(10, 10, False, True), (10, 8, False, False), (6, 6, True, False)],
)
def test_a_run_still_improving_at_its_epoch_cap_is_marked(epochs, best, stopped, capped):
    result = {"epochs": epochs, "stopped_early": stopped, "validation": {"best_epoch": best}}
    assert report.still_improving(result) is capped


@pytest.mark.parametrize(
    "epochs, best, stopped, ended",
    [
        (10, 10, False, "10 (best 10, ran to the cap, best last)"),
        (10, 8, False, "10 (best 8, ran to the cap)"),
        (6, 4, True, "6 (best 4, stopped early)"),
    ],
)
def test_each_run_says_how_it_ended(epochs, best, stopped, ended):
    result = {"epochs": epochs, "stopped_early": stopped, "validation": {"best_epoch": best}}
    assert report._epochs(result) == ended


def test_recipes_report_lists_missing_cells_and_quotes_anchors(tmp_path):
    text = report.recipes_report(G.plan(["recipe"], tmp_path))
    assert "not run yet" in text and "80.03" in text and "58.79" in text and "90.94" in text
    assert "convergence" not in text
    # Each anchor names its split; the CLUENER paper's scores are on the hidden test set.
    assert "80.03 (dev)" in text and "BiLSTM-CRF 70.00 (hidden test: not comparable)" in text
    assert "BERT-base 78.82 (hidden test: not comparable)" in text and "90.94 (test)" in text
    assert "Cells not finished yet" in text


@pytest.mark.parametrize("recipe", [r.name for r in G.RECIPES])
def test_recipe_configs_name_existing_data(recipe, shared_data):
    from gpner.corpus import Corpus

    corpus = Corpus.from_config(G.own_config(G.RECIPE_BY_NAME[recipe]).data)
    assert corpus.train and corpus.labels


def _fake_result(entry, dev_curve, test_f1, stopped_early):
    from gpner.config import config_to_dict

    best = max(range(len(dev_curve)), key=dev_curve.__getitem__)
    micro = {"precision": test_f1, "recall": test_f1, "f1": test_f1}
    return {
        "cell": entry.cell.id,
        "seed": entry.config.train.seed,
        "config": config_to_dict(entry.config),
        "epochs": len(dev_curve),
        "stopped_early": stopped_early,
        "history": [{"dev": {"micro": {"f1": f}}} for f in dev_curve],
        "validation": {"f1": dev_curve[best], "best_epoch": best + 1},
        "test": {"micro": micro},
        "timing": {"train_seconds": 60.0 * len(dev_curve)},
    }


def test_longer_caps_sets_the_recipe_beside_its_larger_cap(tmp_path):
    import json

    entries = {e.cell.id: e for e in G.plan(["recipe"], tmp_path)}
    own, cap = entries["recipe/cmeee-m3e/s1"], entries["recipe/cmeee-m3e/cap20/s1"]
    assert own.config.train.epochs * 2 == cap.config.train.epochs == 20
    fakes = [(own, [0.5, 0.6, 0.7], 0.65, False), (cap, [0.5, 0.68, 0.66, 0.67], 0.62, True)]
    for entry, curve, test_f1, stopped in fakes:
        path = tmp_path / f"{entry.cell.stem}.json"
        path.write_text(json.dumps(_fake_result(entry, curve, test_f1, stopped)), encoding="utf-8")
    planned = G.plan(["recipe"], tmp_path)
    assert {e.cell.id for e in planned if e.status == "done"} == {own.cell.id, cap.cell.id}
    lines = report.longer_caps(planned)
    text = "\n".join(lines)
    row = "| 3 (best 3, ran to the cap, best last) | 50.00 60.00 70.00 | 70.00 | **65.00** (test) |"
    assert row in text
    assert "| 20 | 4 (best 2, stopped early) |" in text
    # The verdict gives dev (which the cap is chosen on) before the reported split.
    assert (
        "ran 4 epochs (stopped early); best dev F1 68.00, 2.00 points below the recipe's 70.00; "
        "scored 62.00 on test, 3.00 points below the recipe's 65.00 (one seed each)." in text
    )
    # CoNLL's larger cap has not run: listed, and no verdict is drawn for it.
    assert text.count("not run yet") == 2 and "CoNLL-2003 English: `train.epochs" not in text


def test_head_comparison_pairs_the_heads_by_seed(tmp_path):
    import json

    entries = {e.cell.id: e for e in G.plan(["recipe"], tmp_path)}
    # GlobalPointer cells s1 and s2, Efficient GlobalPointer cells s1 and s3: one seed in common.
    fakes = {
        "recipe/cluener-m3e/gp/s1": 0.70,
        "recipe/cluener-m3e/gp/s2": 0.90,
        "recipe/cluener-m3e/egp/s1": 0.75,
        "recipe/cluener-m3e/egp/s3": 0.10,
    }
    for cell, f1 in fakes.items():
        entry = entries[cell]
        path = tmp_path / f"{entry.cell.stem}.json"
        path.write_text(json.dumps(_fake_result(entry, [f1], f1, False)), encoding="utf-8")
    text = "\n".join(report.head_comparison(G.plan(["recipe"], tmp_path)))
    assert "| GlobalPointer | 2 | 70.00 90.00 | **80.00** |" in text
    assert (
        "- Efficient GlobalPointer minus GlobalPointer, same seed: +5.00 points "
        "(mean +5.00; higher on 1 of 1 seeds)." in text
    )
    # No R-Drop run: its row says so and no paired line is drawn for it.
    assert "| GlobalPointer + R-Drop (gp_kl) | 0 | not run yet |" in text
    assert "R-Drop (gp_kl) minus" not in text
