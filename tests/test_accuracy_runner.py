"""The accuracy benchmark runner and report (benchmarks/accuracy): cell order, alpha selection,
resumability (finished cells skipped, failed cells redone, killed cells resumed exactly) and the
report from fake result JSONs. Tiny synthetic cells only; seconds, no shared data needed."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks.accuracy import probe, report, run

ROOT = Path(__file__).resolve().parents[1]


G = run.G


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return G.write_synthetic_data(tmp_path_factory.mktemp("accuracy-data"))


def _entries(blocks, results):
    return {e.cell.id: e for e in G.plan(blocks, results)}


# ------------------------------------------------------------------------------ the grid


def test_main_grid_order_and_protocol(tmp_path):
    blocks = G.main_blocks()
    entries = G.plan(blocks, tmp_path)
    ids = [e.cell.id for e in entries]
    assert len(ids) == len(set(ids)) == 142
    assert ids[0] == "cluener-m3e/search/baseline/s1"
    # Blocks in priority order; in each block the search cells come before the final cells.
    assert [e.cell.block for e in entries] == sorted(e.cell.block for e in entries)
    for number in range(1, 6):
        stages = [e.cell.stage for e in entries if e.cell.block == number]
        assert stages == sorted(stages, key=lambda s: s != "search")
    block1 = {e.cell.variant for e in entries if e.cell.block == 1}
    assert block1 == {"baseline", "rdrop-gp_kl", "rdrop-softmax_kl"}
    assert {e.cell.variant for e in entries if e.cell.block == 2} == {"vat-gp_kl", "vat-softmax_kl"}
    # Final cells seed by seed, so a partial sitting leaves complete paired seeds.
    finals = [e.cell for e in entries if e.cell.block == 1 and e.cell.stage == "final"]
    assert [c.seed for c in finals] == [1, 1, 1, 2, 2, 2, 3, 3, 3]
    # Every grid: 5 variants x 3 seeds of final cells.
    for grid in ("cluener-m3e", "cluener-char", "cmeee-m3e", "conll2003-minilm"):
        final = {
            (e.cell.variant, e.cell.seed)
            for e in entries
            if e.cell.id.startswith(grid + "/") and e.cell.stage == "final"
        }
        assert final == {(v, s) for v in G.ALL_VARIANTS for s in (1, 2, 3)}

    # Search cells never read the test set; all cells use the carved validation split; finals of
    # a grid share everything except regulariser and seed.
    for e in entries:
        if e.config is None:
            continue
        assert e.config.data.validation_fraction == pytest.approx(0.1)
        if e.cell.stage == "search":
            assert e.config.data.test is None
            assert e.config.train.epochs == e.cell.grid.search_epochs
        else:
            assert e.config.data.test is not None
    shared = {}
    for e in entries:
        if e.cell.stage == "final" and e.config is not None:
            ident = G.identity(e.config)
            ident.pop("regularizer")
            ident["train"].pop("seed")
            shared.setdefault(e.cell.grid.name, []).append(ident)
    for grid, idents in shared.items():
        assert all(i == idents[0] for i in idents), grid
    cluener = entries[ids.index("cluener-m3e/final/baseline/s1")].config
    assert cluener.data.test == "cluener/dev.json"
    assert cluener.data.train == "cluener/train.json"
    # Regularised final cells wait for their search.
    assert entries[ids.index("cluener-m3e/final/rdrop-gp_kl/s1")].status == "blocked"


def test_select_best_picks_best_validation_f1_first_on_ties():
    cands = [(0.25, None), (1.0, None), (4.0, None)]
    assert G.select_best(cands, [0.5, 0.7, 0.6]) == 1
    assert G.select_best(cands, [0.7, 0.7, 0.6]) == 0
    assert G.select_best(cands, [0.1, 0.2, 0.3]) == 2
    with pytest.raises(ValueError):
        G.select_best(cands, [0.1])


def test_matches_and_only_pulls_in_search_dependencies(tmp_path):
    assert G.matches("cluener-m3e/final/baseline/s1", ["cluener-m3e"])
    assert G.matches("cluener-m3e/final/baseline/s1", ["*/final/*/s1"])
    assert not G.matches("cluener-m3e/final/baseline/s1", ["*/search/*"])
    entries = G.plan(G.main_blocks(), tmp_path)
    chosen = run.selected_ids(entries, ["cluener-m3e/final/rdrop-gp_kl/s2"])
    assert chosen == {
        "cluener-m3e/final/rdrop-gp_kl/s2",
        "cluener-m3e/search/rdrop-gp_kl/a0.0625/s1",
        "cluener-m3e/search/rdrop-gp_kl/a0.25/s1",
        "cluener-m3e/search/rdrop-gp_kl/a1/s1",
        "cluener-m3e/search/rdrop-gp_kl/a4/s1",
    }


def _fake_result(entry, val_f1, test_f1=None, seconds=100.0, per_type=None):
    cell = entry.cell
    per_type = per_type or {"LOC": test_f1 or 0.0, "PER": test_f1 or 0.0}
    return {
        "schema": 1,
        "cell": cell.id,
        "grid": cell.grid.name,
        "block": cell.block,
        "stage": cell.stage,
        "variant": cell.variant,
        "seed": cell.seed,
        "regularizer": {"kind": cell.kind, "alpha": entry.alpha, "epsilon": entry.epsilon},
        "config": G.config_to_dict(entry.config),
        "validation": {"f1": val_f1, "best_epoch": 1},
        "test": None
        if test_f1 is None
        else {"f1": test_f1, "micro": {"f1": test_f1}, "per_type_f1": per_type},
        "epochs": entry.cell.epochs,
        "timing": {"train_seconds_per_epoch": seconds},
        "environment": {"python": "3.x", "torch": "t", "gpner": "g", "git_commit": "abc"},
    }


def _write_fake(results, entry, *args, **kwargs):
    G.atomic_write_json(G.result_path(results, entry.cell), _fake_result(entry, *args, **kwargs))


def test_compute_left_uses_measured_epoch_times_then_cost_factors_then_the_prior(tmp_path):
    blocks = G.main_blocks()
    grid = blocks[0].grid  # block 1: 1 + 2 x 4 search cells, 3 + 2 x 3 final cells
    search, final = grid.search_epochs, grid.final_epochs

    def expected(plain, rdrop, n_search_done=0):
        search_minutes = search * (plain + rdrop * (8 - n_search_done))
        return 1.1 * (search_minutes + final * (3 * plain + 6 * rdrop))

    left = G.compute_left(G.plan(blocks, tmp_path))[1]
    prior = grid.epoch_minutes
    assert (left.cells, left.measured) == (18, False)
    assert left.minutes == pytest.approx(expected(prior, prior * G.COST_FACTOR["rdrop"]))
    # A finished baseline cell: its epoch time replaces the prior, scaled for R-Drop.
    entries = _entries(blocks, tmp_path)
    _write_fake(tmp_path, entries["cluener-m3e/search/baseline/s1"], 0.6, seconds=120.0)
    left = G.compute_left(G.plan(blocks, tmp_path))[1]
    assert (left.cells, left.measured) == (17, True)
    assert left.minutes == pytest.approx(expected(2.0, 4.0) - 1.1 * search * 2.0)
    # A finished R-Drop cell: R-Drop cells use their own measured time.
    _write_fake(tmp_path, entries["cluener-m3e/search/rdrop-gp_kl/a1/s1"], 0.6, seconds=300.0)
    left = G.compute_left(G.plan(blocks, tmp_path))[1]
    assert left.cells == 16
    assert left.minutes == pytest.approx(expected(2.0, 5.0, n_search_done=1) - 1.1 * search * 2.0)
    assert 2 in G.compute_left(G.plan(blocks, tmp_path))  # other blocks are still estimated


def test_config_fields_added_later_keep_finished_cells_done(tmp_path):
    blocks = G.main_blocks()
    entry = _entries(blocks, tmp_path)["cluener-m3e/search/baseline/s1"]
    _write_fake(tmp_path, entry, 0.6)
    path = G.result_path(tmp_path, entry.cell)
    payload = json.loads(path.read_text())
    # Written before train.compiled_kernels existed: the key is missing (its default = old code).
    del payload["config"]["train"]["compiled_kernels"]
    path.write_text(json.dumps(payload))
    assert _entries(blocks, tmp_path)[entry.cell.id].status == "done"
    # A real difference still makes it stale, and so does a key the current Config cannot read.
    payload["config"]["train"]["lr"] = 123.0
    path.write_text(json.dumps(payload))
    assert _entries(blocks, tmp_path)[entry.cell.id].status == "stale"
    payload["config"]["train"]["lr"] = entry.config.train.lr
    payload["config"]["train"]["removed_option"] = 1
    path.write_text(json.dumps(payload))
    assert _entries(blocks, tmp_path)[entry.cell.id].status == "stale"


def test_regularizer_defaults_do_not_touch_baseline_cells_but_do_regularised_ones(tmp_path):
    blocks = G.main_blocks()
    entries = _entries(blocks, tmp_path)
    baseline = entries["cluener-m3e/search/baseline/s1"]
    rdrop = entries["cluener-m3e/search/rdrop-gp_kl/a0.0625/s1"]
    for entry in (baseline, rdrop):
        _write_fake(tmp_path, entry, 0.6)
        path = G.result_path(tmp_path, entry.cell)
        payload = json.loads(path.read_text())
        # As written before the default alpha became 1/64 (and with another unused epsilon).
        payload["config"]["regularizer"]["epsilon"] = 3.0
        if entry is baseline:
            payload["config"]["regularizer"]["alpha"] = 1.0
        path.write_text(json.dumps(payload))
    after = _entries(blocks, tmp_path)
    assert after[baseline.cell.id].status == "done"  # kind "none" reads neither weight
    assert after[rdrop.cell.id].status == "stale"  # R-Drop cells record their epsilon as well
    payload["config"]["regularizer"]["epsilon"] = rdrop.config.regularizer.epsilon
    payload["config"]["regularizer"]["alpha"] = 1.0
    G.result_path(tmp_path, rdrop.cell).write_text(json.dumps(payload))
    assert _entries(blocks, tmp_path)[rdrop.cell.id].status == "stale"


def test_plan_chooses_alpha_from_search_results(tmp_path, synthetic):
    blocks = G.smoke_blocks(*synthetic, rdrop_alphas=(0.5, 2.0, 8.0))
    entries = _entries(blocks, tmp_path)
    search = [e for e in entries.values() if e.cell.stage == "search"]
    assert [e.cell.id for e in search] == [
        "smoke-char/search/baseline/s1",
        "smoke-char/search/rdrop-gp_kl/a0.5/s1",
        "smoke-char/search/rdrop-gp_kl/a2/s1",
        "smoke-char/search/rdrop-gp_kl/a8/s1",
    ]
    final = "smoke-char/final/rdrop-gp_kl/s1"
    for e, f1 in zip(search, [0.9, 0.5, 0.7, 0.6]):
        assert entries[final].status == "blocked"
        _write_fake(tmp_path, e, f1)
        entries = _entries(blocks, tmp_path)
    # The baseline reference (0.9) is not a candidate; alpha 2 has the best validation F1.
    assert entries[final].status == "pending"
    assert entries[final].alpha == 2.0 and entries[final].config.regularizer.alpha == 2.0
    assert entries[final].config.regularizer.kind == "rdrop"
    assert entries["smoke-char/final/baseline/s1"].config.regularizer.kind == "none"


# ---------------------------------------------------------------------- real tiny training


def test_runner_skips_finished_and_redoes_failed_cells(tmp_path, synthetic, monkeypatch):
    import gpner.training

    blocks = G.smoke_blocks(*synthetic)
    results = tmp_path / "results"
    original = gpner.training.run_epoch

    def failing(state):
        if state.epoch >= 1:  # the second epoch
            raise RuntimeError("simulated failure")
        return original(state)

    monkeypatch.setattr(gpner.training, "run_epoch", failing)
    out = run.run_grid(blocks, results, threads=1)
    assert out["ran"] == [] and len(out["failed"]) == 2
    assert not list(results.glob("*.json")) and not list(results.glob("*.tmp"))
    work = results / G.WORK_DIRNAME
    assert (work / "smoke-char__final__baseline__s1" / "failed.txt").is_file()

    monkeypatch.setattr(gpner.training, "run_epoch", original)
    out = run.run_grid(blocks, results, threads=1, max_cells=1)
    assert out["ran"] == ["smoke-char/final/baseline/s1"] and not out["failed"]
    out = run.run_grid(blocks, results, threads=1)
    assert out["ran"] == ["smoke-char/final/rdrop-gp_kl/s1"]
    probe = json.loads((results / "smoke-char__final__rdrop-gp_kl__s1.json").read_text())["probe"]
    assert 0.0 < probe["median_share"] < 1.0 and probe["median_grad_ratio"] > 0.0
    for path in sorted(results.glob("*.json")):
        payload = json.loads(path.read_text())
        assert payload["epochs"] == 2 and not payload["timing"]["resumed"]  # started over
        assert 0.0 <= payload["test"]["f1"] <= 1.0 and payload["test"]["per_type_f1"]
        assert payload["environment"]["torch"] and "git_commit" in payload["environment"]
        assert payload["config"]["data"]["validation_fraction"] == 0.25
        # no machine path: the (deleted) run dir relative to the results dir
        assert payload["config"]["output_dir"] == f"{G.WORK_DIRNAME}/{path.stem}"
    assert not any(p.name.startswith("smoke") for p in work.iterdir())  # run dirs cleaned up

    # Finished cells are skipped; a deleted or stale result is redone.
    assert run.run_grid(blocks, results, threads=1)["ran"] == []
    (results / "smoke-char__final__baseline__s1.json").unlink()
    stale = results / "smoke-char__final__rdrop-gp_kl__s1.json"
    payload = json.loads(stale.read_text())
    payload["config"]["train"]["epochs"] = 5
    stale.write_text(json.dumps(payload))
    statuses = {e.cell.id: e.status for e in G.plan(blocks, results)}
    assert statuses == {
        "smoke-char/final/baseline/s1": "pending",
        "smoke-char/final/rdrop-gp_kl/s1": "stale",
    }
    assert len(run.run_grid(blocks, results, threads=1)["ran"]) == 2


def test_killed_cell_resumes_and_matches_an_uninterrupted_run(tmp_path, synthetic, monkeypatch):
    import gpner.training

    blocks = G.smoke_blocks(*synthetic, variants=("baseline",), epochs=3)
    reference = tmp_path / "reference"
    run.run_grid(blocks, reference, threads=1)
    expected = json.loads((reference / "smoke-char__final__baseline__s1.json").read_text())

    results = tmp_path / "results"
    original = gpner.training.run_epoch

    def killed(state):
        if state.epoch >= 2:  # killed during the third epoch, after two finished epochs
            raise KeyboardInterrupt
        return original(state)

    monkeypatch.setattr(gpner.training, "run_epoch", killed)
    with pytest.raises(KeyboardInterrupt):
        run.run_grid(blocks, results, threads=1)
    assert not list(results.glob("*.json"))
    assert [e.status for e in G.plan(blocks, results)] == ["partial"]

    monkeypatch.setattr(gpner.training, "run_epoch", original)
    assert run.run_grid(blocks, results, threads=1)["ran"] == ["smoke-char/final/baseline/s1"]
    got = json.loads((results / "smoke-char__final__baseline__s1.json").read_text())
    assert got["timing"]["resumed"] is True
    assert [h["epoch"] for h in got["history"]] == [1, 2, 3]
    assert got["validation"]["f1"] == expected["validation"]["f1"]
    assert got["test"] == expected["test"]
    assert [h["train_loss"] for h in got["history"]] == pytest.approx(
        [h["train_loss"] for h in expected["history"]], rel=1e-6
    )


def test_run_dir_from_another_config_is_wiped(tmp_path, synthetic):
    blocks = G.smoke_blocks(*synthetic)
    entry = G.plan(blocks, tmp_path)[0]
    work = Path(entry.config.output_dir)
    work.mkdir(parents=True)
    other = G.config_to_dict(entry.config)
    other["train"]["lr"] = 0.5
    G.atomic_write_json(work / "cell.json", {"config": other})
    (work / "last.pt").write_bytes(b"not a checkpoint")
    assert run._prepare_run_dir(entry, work) is False
    assert not (work / "last.pt").exists()
    assert G.identity(G.read_json(work / "cell.json")["config"]) == G.identity(entry.config)
    (work / "last.pt").write_bytes(b"x")  # same config + checkpoint -> resume
    assert run._prepare_run_dir(entry, work) is True


def test_runners_share_a_results_dir_but_not_with_an_old_exclusive_runner(tmp_path):
    import fcntl

    with run.runner_lock(tmp_path), run.runner_lock(tmp_path):
        pass  # two current runners coexist: cells are claimed one by one
    work = tmp_path / G.WORK_DIRNAME
    with open(work / "lock", "a+") as old_runner:  # what a runner before cell locks took
        fcntl.flock(old_runner, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(SystemExit, match="without cell locks"), run.runner_lock(tmp_path):
            pass


def test_a_claimed_cell_is_busy_for_everyone_else(tmp_path, synthetic):
    cell = G.plan(G.smoke_blocks(*synthetic), tmp_path)[0].cell
    assert not run.cell_busy(tmp_path, cell)
    with run.cell_lock(tmp_path, cell) as claimed:
        assert claimed and run.cell_busy(tmp_path, cell)
        with run.cell_lock(tmp_path, cell) as again:
            assert not again
    assert not run.cell_busy(tmp_path, cell)


def test_parallel_runners_run_each_cell_once_and_wait_for_search_cells(
    tmp_path, synthetic, monkeypatch
):
    """Two runners (threads here; the OS locks are per open file, so they exclude each other
    like processes) on a grid whose final cell waits for two search cells."""
    import threading

    blocks = G.smoke_blocks(*synthetic, rdrop_alphas=(0.5, 2.0))
    results = tmp_path / "results"
    calls: list[str] = []
    lock = threading.Lock()

    def fake_run_cell(entry, results_dir, all_cells, env=None):
        with lock:
            calls.append(entry.cell.id)
        time.sleep(0.3)  # long enough for the other runner to find this cell claimed
        f1 = {0.5: 0.4, 2.0: 0.6}.get(entry.alpha, 0.5) if entry.cell.stage == "search" else 0.7
        payload = _fake_result(entry, f1, 0.7 if entry.cell.stage == "final" else None)
        G.atomic_write_json(G.result_path(results_dir, entry.cell), payload)
        return payload

    monkeypatch.setattr(run, "run_cell", fake_run_cell)
    monkeypatch.setattr(run, "POLL_SECONDS", 0.05)
    outcomes = [None, None]

    def runner(k):
        outcomes[k] = run.run_grid(blocks, results, threads=1)

    threads = [threading.Thread(target=runner, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    every = [e.cell.id for e in G.plan(blocks, results)]
    assert sorted(calls) == sorted(every)  # each cell ran exactly once
    assert sorted(outcomes[0]["ran"] + outcomes[1]["ran"]) == sorted(every)
    assert outcomes[0]["ran"] and outcomes[1]["ran"]  # both runners did work
    assert not outcomes[0]["failed"] and not outcomes[1]["failed"]
    assert all(e.status == "done" for e in G.plan(blocks, results))
    final = "smoke-char/final/rdrop-gp_kl/s1"
    searches = [c for c in every if "/search/rdrop-gp_kl/" in c]
    assert max(calls.index(c) for c in searches) < calls.index(final)
    assert (
        json.loads(G.result_path(results, _entries(blocks, results)[final].cell).read_text())[
            "regularizer"
        ]["alpha"]
        == 2.0
    )


# The runner's processes import this checkout's gpner, whichever one is installed.
_CHECKOUT_ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src")}


def test_workers_flag_starts_tagged_child_runners(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.accuracy.run", "--workers", "2"]
        + ["--results", str(tmp_path), "--only", "no-such-cell"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=_CHECKOUT_ENV,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert (
        "starting 2 workers: -m benchmarks.accuracy.run --results" in out and "--threads 1" in out
    )
    assert " w1] results in" in out and " w2] results in" in out
    assert "workers finished with exit codes [0, 0]" in out


# ------------------------------------------------------------------------------- report


def _fill_block1(results, base, gp, soft, alphas_val=(0.59, 0.60, 0.62, 0.61)):
    """Fake CLUENER/m3e block-1 results: search F1s, then finals with the chosen alphas."""
    blocks = G.main_blocks()
    entries = _entries(blocks, results)
    for variant in ("rdrop-gp_kl", "rdrop-softmax_kl"):
        for alpha, f1 in zip((0.0625, 0.25, 1, 4), alphas_val):
            _write_fake(results, entries[f"cluener-m3e/search/{variant}/a{alpha}/s1"], f1)
    _write_fake(results, entries["cluener-m3e/search/baseline/s1"], 0.6)
    entries = _entries(blocks, results)
    for variant, f1s, seconds in (
        ("baseline", base, 300.0),
        ("rdrop-gp_kl", gp, 600.0),
        ("rdrop-softmax_kl", soft, 620.0),
    ):
        for seed, f1 in zip((1, 2, 3), f1s):
            entry = entries[f"cluener-m3e/final/{variant}/s{seed}"]
            assert entry.status != "blocked"
            _write_fake(results, entry, f1 - 0.01, f1, seconds)
    return blocks


def test_report_from_fake_results(tmp_path):
    results = tmp_path / "results"
    blocks = _fill_block1(results, [0.70, 0.71, 0.72], [0.71, 0.715, 0.73], [0.69, 0.70, 0.70])
    out = report.build_report(blocks, results, tmp_path / "REPORT.md", png_name="report.png")
    text = out.read_text()
    png = tmp_path / "report.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![test F1" in text
    # Tables: mean ± std over seeds, per-seed paired differences, cost, the search table.
    assert "| baseline (CE only) | – | – | 3 | 71.00 ± 1.00 |" in text
    assert "s1: +1.00, s2: +0.50, s3: +1.00" in text
    assert "| 2.00x |" in text and "| 2.07x |" in text
    assert text.count("**chosen**") == 2  # alpha 1 (0.62) for both divergences
    assert "| R-Drop + gp_kl | 1 | – | 62.00 | **chosen** |" in text
    assert "`train.batch_size` | `32`" in text and "`data.max_length` | `64`" in text
    # Words computed from the numbers: gp_kl +0.83 over baseline, softmax_kl -2.17 below gp_kl.
    assert "R-Drop + gp_kl is better than baseline (CE only) by 0.83 F1 points" in text
    assert "R-Drop + softmax_kl is worse than R-Drop + gp_kl by 2.17 F1 points" in text
    assert "| CLUENER / m3e-small | R-Drop | 3 | +0.83 [+0.12, +1.55] |" in text
    assert (
        "**holds** (gp_kl is better than the baseline (95 % interval excludes zero); "
        "softmax_kl is worse than gp_kl (95 % interval excludes zero))"
    ) in text
    assert "Not measured yet: VAT on CLUENER / m3e-small;" in text
    # Incomplete grid: the missing cells are listed by block.
    assert "### Missing cells" in text
    assert "Block 1 (CLUENER, m3e-small: baseline and R-Drop): 18 of 18 done." in text
    assert "`cluener-m3e/final/vat-gp_kl/s1` (blocked, waits for 4 search cell(s))" in text
    assert "`cmeee-m3e/search/baseline/s1` (pending)" in text
    assert "0 of 36 done; about " in text and "h of cell time left (prior epoch time" in text
    assert "Compute left in all: about " in text


def test_report_says_when_the_claim_does_not_hold(tmp_path):
    results = tmp_path / "results"
    blocks = _fill_block1(results, [0.72, 0.72, 0.73], [0.70, 0.71, 0.72], [0.71, 0.72, 0.73])
    text = report.build_report(blocks, results, tmp_path / "R.md").read_text()
    assert "**does not hold**" in text
    assert "R-Drop + gp_kl is worse than baseline (CE only)" in text
    # The largest alpha wins the search here: the report says it sits on the grid's edge.
    results2 = tmp_path / "results2"
    blocks = _fill_block1(
        results2, [0.7] * 3, [0.7] * 3, [0.7] * 3, alphas_val=(0.05, 0.1, 0.2, 0.3)
    )
    text = report.build_report(blocks, results2, tmp_path / "R2.md").read_text()
    assert "the chosen alpha 4 is the largest value of its grid" in text
    assert "ties with" in text


def test_report_with_one_paired_seed_gives_a_direction_not_a_verdict(tmp_path):
    results = tmp_path / "results"
    blocks = _fill_block1(results, [0.70], [0.71], [0.69])
    text = report.build_report(blocks, results, tmp_path / "R.md").read_text()
    assert "**holds in direction only (1 paired seed)** (" in text
    assert "softmax_kl is worse than gp_kl on one seed (no interval)" in text
    assert "within seed noise" not in text


def test_report_verdict_follows_the_intervals_not_only_the_signs(tmp_path):
    # gp_kl beats the baseline on every seed; softmax_kl is below gp_kl on average, but by
    # less than the seed noise: only half of the claim is supported.
    results = tmp_path / "results"
    blocks = _fill_block1(results, [0.70, 0.71, 0.72], [0.71, 0.72, 0.73], [0.715, 0.71, 0.72])
    text = report.build_report(blocks, results, tmp_path / "R.md").read_text()
    assert (
        "**partly holds** (gp_kl is better than the baseline (95 % interval excludes zero); "
        "softmax_kl is worse than gp_kl on average, within seed noise)"
    ) in text
    # Neither difference outside the noise: unresolved, whatever the signs say.
    results = tmp_path / "results2"
    blocks = _fill_block1(results, [0.70, 0.71, 0.72], [0.71, 0.70, 0.73], [0.70, 0.71, 0.72])
    text = report.build_report(blocks, results, tmp_path / "R2.md").read_text()
    assert "**unresolved (within seed noise)** (gp_kl is better than the baseline on average" in (
        text
    )


def test_report_warns_when_costs_come_from_different_runner_setups(tmp_path):
    results = tmp_path / "results"
    blocks = _fill_block1(results, [0.70, 0.71], [0.71, 0.72], [0.69, 0.70])
    text = report.build_report(blocks, results, tmp_path / "R.md").read_text()
    assert "different runner setups" not in text
    path = results / "cluener-m3e__final__rdrop-gp_kl__s2.json"
    payload = json.loads(path.read_text())
    payload["environment"].update(runner_workers=2, torch_threads=1)
    path.write_text(json.dumps(payload))
    text = report.build_report(blocks, results, tmp_path / "R.md").read_text()
    assert "different runner setups (1 worker(s) x None thread(s), 2 worker(s) x 1 thread(s))" in (
        text
    )
    assert "| 1 | 2 | 1 |" in text  # environment table: 1 thread, 2 workers, 1 cell


def test_report_with_no_results(tmp_path):
    text = report.build_report(G.main_blocks(), tmp_path, tmp_path / "R.md").read_text()
    assert "0 of 142 cells finished" in text and "No finished cells yet, so no plot." in text
    assert not (tmp_path / "r.png").exists()


# ---------------------------------------------------------------------------------- CLI


def test_dry_run_lists_cells_in_order(capsys, tmp_path):
    v1 = ["--dry-run", "--design", "v1", "--results", str(tmp_path)]
    assert run.main([*v1, "--only", "cluener-m3e"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "cluener-m3e/search/baseline/s1" in lines[1]
    assert sum("cluener-m3e/" in line for line in lines) == 32
    assert not any("cluener-char" in line for line in lines)
    assert run.main([*v1, "--block", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert sum("/vat-" in line for line in lines) == 14 and "block 2:" in lines[-1]


def test_smoke_cli_runs_two_tiny_cells():
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.accuracy.run", "--smoke"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=_CHECKOUT_ENV,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "smoke OK" in proc.stdout


def test_a_variant_this_checkout_cannot_build_is_listed_not_run(tmp_path, synthetic, monkeypatch):
    monkeypatch.setitem(G.VARIANTS, "rdrop-nonesuch", ("rdrop", "no_such_divergence"))
    blocks = G.smoke_blocks(
        *synthetic, variants=("baseline", "rdrop-nonesuch"), rdrop_alphas=(1.0,)
    )
    entries = _entries(blocks, tmp_path)
    bad = entries["smoke-char/final/rdrop-nonesuch/s1"]
    assert bad.status == "unavailable" and "no_such_divergence" in bad.note
    assert "cannot be built" in run.describe(bad)
    assert entries["smoke-char/final/baseline/s1"].status == "pending"


def test_probe_measures_without_side_effects(tmp_path, synthetic):
    import torch

    import gpner
    from gpner.training import train

    blocks = G.smoke_blocks(*synthetic, variants=("rdrop-gp_kl",), rdrop_alphas=(0.5,), epochs=1)
    entry = G.plan(blocks, tmp_path)[0]
    result = train(entry.config)
    rng = torch.get_rng_state()
    first = probe.probe_regularizer(entry.config, result.best_path, batches=3)
    assert torch.equal(torch.get_rng_state(), rng)  # the global RNG is left as it was
    again = probe.probe_regularizer(entry.config, result.best_path, batches=3)
    assert first == again and first["batches"] == 3 and first["alpha"] == 0.5
    for row in first["per_batch"]:
        total = row["ce"] + 0.5 * row["divergence"]
        assert row["share"] == pytest.approx(0.5 * row["divergence"] / total)
        assert -1.0 <= row["grad_cosine"] <= 1.0 and row["grad_ratio"] > 0
    model = gpner.load(result.best_path)
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(ValueError, match="no regulariser"):
        baseline = G.smoke_blocks(*synthetic, variants=("baseline",))
        probe.probe_regularizer(G.plan(baseline, tmp_path)[0].config, result.best_path)
