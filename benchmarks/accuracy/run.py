#!/usr/bin/env python3
"""Train and evaluate the cells of the divergence experiment (issue 6), resumably.

    python3 -m benchmarks.accuracy.run --dry-run            # list the cells in run order
    python3 -m benchmarks.accuracy.run                      # run every unfinished cell
    python3 -m benchmarks.accuracy.run --only cluener-m3e --max-cells 3
    python3 -m benchmarks.accuracy.run --block 1            # only priority block 1
    python3 -m benchmarks.accuracy.run --smoke              # 2 tiny cells on synthetic data

Each finished cell writes ``results/<cell id with / as __>.json`` atomically; a cell whose JSON
exists with the same config is skipped. Unfinished cells keep their run dir under
``results/.work/<cell>/``: a cell that was killed resumes from its last finished epoch (the
trainer's exact ``resume=True``), a cell that raised an error is wiped and starts over, and a run
dir from another config is wiped. The run dir is removed once the result JSON is written.

``--workers N`` runs N runners side by side on one results dir (each with ``--threads``, default
``2 // N``): a runner claims a cell by an OS lock on ``.work/locks/<cell>``, so no cell runs
twice, and a runner with nothing it may start waits while another runner's cell may unblock a
final cell. On 2 cores two 1-thread workers trained 1.17x (m3e-small) to 1.26x (char
Transformer) more examples per second than one 2-thread runner. Every result records the worker
count, since it changes the seconds per epoch. See ``accuracy_grid.py`` for the grid itself
and ``benchmarks/cellrunner.py`` for the generic machinery (status, run dirs, locks, workers).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.accuracy import accuracy_grid as G
from benchmarks.accuracy.accuracy_grid import CR  # benchmarks/cellrunner.py: the machinery
from benchmarks.cellrunner import (  # noqa: F401  (re-exported for the tests)
    CellFailed,
    environment,
    log,
)

POLL_SECONDS = CR.POLL_SECONDS  # how often a runner with only blocked cells looks again


# ------------------------------------------------------------------------------- one cell


def _prepare_run_dir(entry: G.PlanEntry, work: Path) -> bool:
    """Make the cell's run dir; True if it holds a checkpoint to resume from."""
    return CR.prepare_run_dir(entry.cell.id, entry.config, work)


def build_result(
    entry: G.PlanEntry,
    result: Any,
    *,
    all_cells: Sequence[G.Cell],
    sitting: CR.Sitting,
    env: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The result JSON of a finished cell, from the trainer's ``TrainResult``."""
    cell, config = entry.cell, entry.config
    history = result.history
    best = next(h for h in history if h["epoch"] == result.best_epoch)
    return {
        "schema": 1,
        "cell": cell.id,
        "grid": cell.grid.name,
        "block": cell.block,
        "stage": cell.stage,
        "variant": cell.variant,
        "seed": cell.seed,
        "dataset": cell.grid.dataset,
        "encoder": cell.grid.encoder,
        "test_set": cell.grid.test_set if cell.stage == "final" else None,
        "regularizer": {
            "kind": cell.kind,
            "divergence": cell.divergence if cell.kind != "none" else None,
            "alpha": entry.alpha,
            "epsilon": entry.epsilon,
        },
        "chosen_from": [c.id for c in G.search_cells_of(cell, all_cells)],
        "config": G.config_to_dict(config),
        "validation": {
            "f1": result.best_f1,
            "best_epoch": result.best_epoch,
            "micro": best["dev"].get("micro"),
            "macro": best["dev"].get("macro"),
            "per_type_f1": best["dev"].get("per_type_f1"),
        },
        "test": CR.metrics_summary(result.test_metrics),
        "epochs": len(history),
        "history": history,
        "timing": CR.timing(history, sitting),
        "encode": result.info.get("encode"),
        "environment": CR.run_environment(env),
        "started_at": sitting.started_at,
        "finished_at": CR.now(),
    }


def run_cell(
    entry: G.PlanEntry,
    results_dir: Path,
    all_cells: Sequence[G.Cell],
    env: dict[str, Any] | None = None,
) -> dict:
    """Train one cell (resuming a killed one) and write its result JSON; returns it."""

    def build(result: Any, sitting: CR.Sitting) -> dict[str, Any]:
        payload = build_result(entry, result, all_cells=all_cells, sitting=sitting, env=env)
        if entry.cell.stage == "final" and entry.cell.kind != "none" and entry.alpha:
            payload["probe"] = _probe(entry, result.best_path)
        return payload

    return CR.train_entry(entry, results_dir, build)


def _probe(entry: G.PlanEntry, checkpoint: Path) -> dict[str, Any]:
    """The regulariser's loss share and gradient ratio at the cell's best epoch (probe.py); an
    error is recorded, not raised, so that a finished training is never lost to it."""
    from benchmarks.accuracy.probe import probe_regularizer

    start = time.perf_counter()
    try:
        out = probe_regularizer(entry.config, checkpoint)
    except Exception as error:  # noqa: BLE001
        log(f"  probe failed: {type(error).__name__}: {error}")
        return {"error": f"{type(error).__name__}: {error}"}
    out["seconds"] = time.perf_counter() - start
    return out


# ------------------------------------------------------------------------------ the grid


def selected_ids(entries: Sequence[G.PlanEntry], only: Sequence[str] | None) -> set[str]:
    """Cells matching ``--only``, plus the search cells that selected final cells depend on."""
    return CR.selected_ids(entries, only, G.search_cells_of)


def describe(entry: G.PlanEntry) -> str:
    if entry.status == "blocked":
        return f"waits for {len(entry.waiting_for)} search cell(s)"
    if entry.status == "unavailable":
        return f"cannot be built by this checkout: {entry.note}"
    parts = []
    if entry.alpha is not None:
        parts.append(f"alpha={entry.alpha:g}")
    if entry.epsilon is not None:
        parts.append(f"epsilon={entry.epsilon:g}")
    if entry.status == "done":
        f1 = entry.result["validation"]["f1"]
        parts.append(f"val F1 {f1:.4f}")
        if entry.result.get("test"):
            parts.append(f"test F1 {entry.result['test']['f1']:.4f}")
    return ", ".join(parts)


def print_plan(entries: Sequence[G.PlanEntry], chosen: set[str]) -> None:
    measured = G.measured_epoch_seconds(entries)
    epochs_run = G.measured_epochs(entries)
    shown_entries = [e for e in entries if e.cell.id in chosen]
    counts: dict[str, int] = {}
    print(f"{'#':>3}  {'status':8} {'est.min':>7}  cell")
    for k, entry in enumerate(shown_entries):
        counts[entry.status] = counts.get(entry.status, 0) + 1
        minutes = G.estimate_minutes(entry, measured, epochs_run)
        shown = "" if entry.status == "done" else f"{minutes:7.1f}"
        print(f"{k + 1:>3}  {entry.status:8} {shown:>7}  {entry.cell.id}  {describe(entry)}")
    print("cells: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    for block, left in sorted(G.compute_left(shown_entries, measured).items()):
        print(f"block {block}: about {left.minutes / 60:.1f} h of compute left (rough estimate)")


runner_lock = CR.runner_lock


def cell_lock(results_dir: Path, cell: G.Cell):
    """Try to claim a cell for this process (see :func:`cellrunner.cell_lock`)."""
    return CR.cell_lock(results_dir, cell.stem)


def cell_busy(results_dir: Path, cell: G.Cell) -> bool:
    """Whether another process is running this cell now."""
    return CR.cell_busy(results_dir, cell.stem)


def _summary(payload: dict[str, Any]) -> str:
    test = payload["test"]["f1"] if payload["test"] else None
    return f"val F1 {payload['validation']['f1']:.4f}" + (
        f", test F1 {test:.4f}" if test is not None else ""
    )


def run_grid(
    blocks: Sequence[G.Block],
    results_dir: Path,
    *,
    only: Sequence[str] | None = None,
    max_cells: int | None = None,
    overrides: Sequence[str] = (),
    threads: int | None = None,
) -> dict[str, list[str]]:
    """Run unfinished selected cells in order until done, ``max_cells`` ran, or nothing is left
    that can run. Returns ``{"ran": [...], "failed": [...], "blocked": [...]}`` (cell ids)."""
    results_dir = Path(results_dir)
    return CR.run_cells(
        lambda: G.plan(blocks, results_dir, overrides=overrides, threads=threads),
        results_dir,
        # Looked up at call time, so that tests can replace run_cell.
        lambda entry, fresh, env: run_cell(entry, results_dir, [e.cell for e in fresh], env),
        selected=lambda entries: selected_ids(entries, only),
        max_cells=max_cells,
        describe=describe,
        summarize=_summary,
        poll_seconds=POLL_SECONDS,
    )


# -------------------------------------------------------------------------------- smoke


def smoke(results_dir: Path | None = None, threads: int | None = 1) -> int:
    """Two tiny cells on synthetic data, a second pass that must skip both, and a report."""
    keep = results_dir is not None
    root = Path(results_dir) if keep else Path(tempfile.mkdtemp(prefix="gpner-accuracy-smoke-"))
    start = time.perf_counter()
    try:
        train_path, test_path = G.write_synthetic_data(root / "smoke-data")
        blocks = G.smoke_blocks(train_path, test_path)
        first = run_grid(blocks, root, threads=threads)
        second = run_grid(blocks, root, threads=threads)
        from benchmarks.accuracy import report

        md = report.build_report(blocks, root, root / "REPORT.md")
        problems = []
        if first["failed"] or first["left"]:
            problems.append(f"first pass left {first['left']} (failed {first['failed']})")
        if len(first["ran"]) != 2:
            problems.append(f"expected 2 cells, ran {first['ran']}")
        if second["ran"]:
            problems.append(f"second pass re-ran {second['ran']}")
        if "Missing cells" in md.read_text(encoding="utf-8"):
            problems.append("the report lists missing cells")
        seconds = time.perf_counter() - start
        if problems:
            log("SMOKE FAILED: " + "; ".join(problems))
            return 1
        where = md if keep else "a temporary dir (--results DIR keeps it)"
        log(f"smoke OK in {seconds:.1f} s: {first['ran']} then skipped; report in {where}")
        return 0
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


# ---------------------------------------------------------------------------------- CLI

# design -> (its blocks, its default results dir); design v3 has its own runner (run_v3.py)
DESIGNS = {"v1": (G.main_blocks, G.DEFAULT_RESULTS)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    CR.add_arguments(parser, None)
    parser.add_argument(
        "--design",
        choices=sorted(DESIGNS),
        default="v1",
        help="v1 (issue 6; results/); design v3 (issue 30) runs with run_v3.py",
    )
    parser.add_argument(
        "--block",
        action="append",
        type=int,
        metavar="N",
        help="only cells of priority block N (1-5); repeatable",
    )
    parser.add_argument("--smoke", action="store_true", help="2 tiny cells on synthetic data")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    threads = CR.threads_of(args, 1 if args.smoke else None)
    if args.smoke:
        return smoke(args.results, threads=threads)
    all_blocks, default_results = DESIGNS[args.design]
    if args.results is None:
        args.results = default_results
    blocks = [b for b in all_blocks() if not args.block or b.number in args.block]
    if not blocks:
        parser.error(f"no block numbered {args.block}")
    if args.dry_run:
        CR.quiet_broken_pipe()
        entries = G.plan(blocks, args.results, overrides=args.overrides, threads=threads)
        print_plan(entries, selected_ids(entries, args.only))
        return 0
    if args.workers > 1:
        extra = ["--design", args.design]
        extra += [x for number in args.block or () for x in ("--block", str(number))]
        return CR.spawn_module_workers(args, threads, extra, __spec__.name)
    log(f"results in {args.results}; threads {threads}; overrides {args.overrides or 'none'}")
    outcome = run_grid(blocks, args.results, **CR.grid_options(args, threads))
    return 1 if outcome["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
