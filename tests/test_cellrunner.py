"""benchmarks/cellrunner.py on a grid of its own (not the accuracy grid): cell status from the
result files, dependency-aware selection, resumable runs with a fake trainer, estimates and the
common command line. Seconds, no training."""

import argparse
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from benchmarks import cellrunner as CR
from gpner.config import config_from_dict, config_to_dict

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Recipe(CR.StemFromId):
    id: str
    block: int = 1
    needs: tuple[str, ...] = ()


@dataclass
class Entry:
    cell: Recipe
    status: str
    config: object
    result: dict | None = None
    waiting: list[str] = field(default_factory=list)


def _config(tmp_path, lr=1e-3, stem="x"):
    return config_from_dict(
        {
            "data": {"train": "train.jsonl"},
            "train": {"lr": lr, "epochs": 2},
            "output_dir": str(tmp_path / CR.WORK_DIRNAME / stem),
        }
    )


RECIPES = [Recipe("a/one"), Recipe("a/two"), Recipe("b/after", block=2, needs=("a/one", "a/two"))]


def _plan(results, lrs):
    entries, done = [], set()
    for recipe in RECIPES:
        if any(n not in done for n in recipe.needs):
            entries.append(Entry(recipe, "blocked", None))
            continue
        config = _config(results, lrs.get(recipe.id, 1e-3), recipe.stem)
        status, stored = CR.cell_status(results, recipe.stem, config)
        if status == "done":
            done.add(recipe.id)
        entries.append(Entry(recipe, status, config, stored))
    return entries


def test_run_cells_runs_in_order_skips_done_and_redoes_stale(tmp_path):
    calls = []

    def run_one(entry, fresh, env):
        calls.append(entry.cell.id)
        assert env == {"fake": True}
        if entry.cell.id == "a/two" and calls.count("a/two") == 1:
            raise CR.CellFailed("a/two: simulated")
        payload = {"cell": entry.cell.id, "config": config_to_dict(entry.config), "f1": 0.5}
        CR.atomic_write_json(CR.result_path(tmp_path, entry.cell.stem), payload)
        return payload

    def go(lrs=None, **kwargs):
        return CR.run_cells(
            lambda: _plan(tmp_path, lrs or {}),
            tmp_path,
            run_one,
            env=lambda: {"fake": True},
            **kwargs,
        )

    out = go()
    # a/two failed once: b/after (which needs it) stays blocked; nothing else to do.
    assert out["ran"] == ["a/one"] and out["failed"] == ["a/two"]
    assert out["blocked"] == ["b/after"] and out["left"] == ["a/two", "b/after"]
    out = go()
    assert out["ran"] == ["a/two", "b/after"] and not out["left"]
    assert go()["ran"] == []  # everything done: skipped
    # Another lr for a/one: its JSON is stale, so it is redone (and only it).
    assert [e.status for e in _plan(tmp_path, {"a/one": 0.5})][0] == "stale"
    assert go({"a/one": 0.5})["ran"] == ["a/one"]
    # A volatile key (threads) does not make a cell stale.
    payload = CR.read_json(CR.result_path(tmp_path, "a__two"))
    payload["config"]["train"]["num_threads"] = 7
    CR.atomic_write_json(CR.result_path(tmp_path, "a__two"), payload)
    assert _plan(tmp_path, {"a/one": 0.5})[1].status == "done"
    # --max-cells, and the status of a killed run (a checkpoint in its run dir).
    CR.result_path(tmp_path, "b__after").unlink()
    (tmp_path / CR.WORK_DIRNAME / "b__after").mkdir(parents=True, exist_ok=True)
    (tmp_path / CR.WORK_DIRNAME / "b__after" / "last.pt").write_bytes(b"x")
    assert _plan(tmp_path, {"a/one": 0.5})[2].status == "partial"
    assert go({"a/one": 0.5}, max_cells=1)["ran"] == ["b/after"]
    # --only without a selection callable: only the matching cells are considered.
    CR.result_path(tmp_path, "a__one").unlink()
    out = go({"a/one": 0.5}, only=["b/*"])
    assert out["ran"] == [] and out["blocked"] == out["left"] == ["b/after"]
    assert go({"a/one": 0.5}, only=["a/one"])["ran"] == ["a/one"]


def test_selection_pulls_in_dependencies_and_a_claimed_cell_is_busy(tmp_path):
    entries = _plan(tmp_path, {})

    def needs(cell, all_cells):
        return [c for c in all_cells if c.id in cell.needs]

    assert CR.selected_ids(entries, ["b/*"], needs) == {"b/after", "a/one", "a/two"}
    assert CR.selected_ids(entries, ["two"]) == {"a/two"}
    assert CR.matches("a/one", None) and not CR.matches("a/one", ["b/*"])
    with CR.cell_lock(tmp_path, "a__one") as claimed:
        assert claimed and CR.cell_busy(tmp_path, "a__one")
    assert not CR.cell_busy(tmp_path, "a__one")


def test_dry_run_lists_the_selected_cells_in_order(tmp_path, capsys):
    entries = _plan(tmp_path, {})
    assert entries[0].cell.stem == "a__one"
    CR.print_cells(entries, ["a/*"], lambda e: f"<{e.cell.block}>")
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:3] for line in lines] == [
        ["1", "pending", "a/one"],
        ["2", "pending", "a/two"],
    ]
    assert lines[0].endswith("a/one  <1>")


def test_compute_left_and_median_by(tmp_path):
    entries = _plan(tmp_path, {})
    entries[0].status, entries[0].result = "done", {"t": 4.0}
    left = CR.compute_left(
        entries, lambda e: (10.0 if e.cell.block == 1 else 1.0, e.cell.block == 1)
    )
    assert left[1] == CR.ComputeLeft(10.0, 1, True)
    assert left[2] == CR.ComputeLeft(1.0, 1, False)
    assert CR.median_by(entries, lambda e: e.cell.block, lambda r: r.get("t")) == {1: 4.0}


def test_common_command_line():
    parser = argparse.ArgumentParser()
    CR.add_arguments(parser, Path("results"))
    args = parser.parse_args(
        ["--workers", "2", "--only", "x", "--set", "train.lr=1", "--max-cells", "3"]
    )
    assert CR.threads_of(args) == 1
    assert CR.worker_argv(args, 1, ["--block", "2"]) == [
        "--results",
        "results",
        "--threads",
        "1",
        "--only",
        "x",
        "--set",
        "train.lr=1",
        "--max-cells",
        "3",
        "--block",
        "2",
    ]
    assert CR.grid_options(args, 1) == {
        "only": ["x"],
        "max_cells": 3,
        "overrides": ["train.lr=1"],
        "threads": 1,
    }
    CR.add_kind_argument(parser, ("a", "b"), ("a",))
    assert "default: a)" in parser.format_help()
    kinds = parser.parse_args(["--kind", "b", "--kind", "a"]).kind
    assert kinds == ["b", "a"] and CR.kind_argv(kinds) == ["--kind", "b", "--kind", "a"]
    with pytest.raises(SystemExit):
        parser.parse_args(["--kind", "c"])
    assert CR.threads_of(parser.parse_args(["--threads", "0"])) is None
    with pytest.raises(SystemExit):
        CR.threads_of(parser.parse_args(["--workers", "0"]))
