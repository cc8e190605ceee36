#!/usr/bin/env python3
"""Train the recipe benchmark's cells (see ``grid.py``), resumably, one JSON per cell.

    python3 -m benchmarks.recipes.run --dry-run                 # recipe cells in run order
    python3 -m benchmarks.recipes.run --kind explore --dry-run  # the from-scratch exploration
    nohup nice -n 10 python3 -m benchmarks.recipes.run >> benchmarks/recipes/run.log 2>&1 &
    python3 -m benchmarks.recipes.run --kind explore --workers 2 --only lstm
    python3 -m benchmarks.recipes.report                        # EXPLORE.md and RESULTS.md

Built on ``benchmarks/cellrunner.py`` (the accuracy runner's machinery): a finished cell writes
``results/<cell id with / as __>.json`` atomically and is skipped while its config is unchanged;
a killed cell resumes from its last finished epoch; ``--workers N`` runs N runners side by side,
each claiming cells by an OS lock. Every JSON records threads and worker count, since they
change the seconds per epoch.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.recipes import grid as G
from benchmarks.recipes.grid import CR


def parameter_count(best_path: Path) -> int:
    """Trainable parameters of the saved best model (buffers such as a bigram vocabulary not
    counted)."""
    import gpner

    model = gpner.load(best_path)
    return sum(p.numel() for p in model.parameters())


def build_result(
    entry: G.PlanEntry,
    result: Any,
    sitting: CR.Sitting,
    env: dict[str, Any] | None,
    machine: str | None = None,
) -> dict[str, Any]:
    """The result JSON of a finished cell, from the trainer's ``TrainResult``."""
    from gpner.config import config_to_dict

    cell, config = entry.cell, entry.config
    history = result.history
    best = next(h for h in history if h["epoch"] == result.best_epoch)
    return {
        "schema": 1,
        "cell": cell.id,
        "kind": cell.kind,
        "name": cell.name,
        "variant": cell.variant,
        "seed": config.train.seed,
        "config_file": cell.config_path,
        "overrides": list(cell.overrides),
        "why": cell.why,
        "config": config_to_dict(config),
        "parameters": parameter_count(result.best_path),
        "validation": {
            "f1": result.best_f1,
            "best_epoch": result.best_epoch,
            "micro": best["dev"].get("micro"),
            "macro": best["dev"].get("macro"),
            "per_type_f1": best["dev"].get("per_type_f1"),
        },
        "test": CR.metrics_summary(result.test_metrics),
        "epochs": len(history),
        "stopped_early": result.stopped_early,
        "history": history,
        "timing": CR.timing(history, sitting),
        "encode": result.info.get("encode"),
        "environment": CR.run_environment(env),
        # what else ran on the machine meanwhile (--machine), since it changes the minutes
        "machine": machine,
        "started_at": sitting.started_at,
        "finished_at": CR.now(),
    }


def run_cell(
    entry: G.PlanEntry,
    results_dir: Path,
    env: dict[str, Any] | None = None,
    machine: str | None = None,
) -> dict:
    def build(result: Any, sitting: CR.Sitting) -> dict[str, Any]:
        return build_result(entry, result, sitting, env, machine)

    return CR.train_entry(entry, results_dir, build)


def describe(entry: G.PlanEntry) -> str:
    if entry.status != "done":
        return entry.cell.why
    r = entry.result
    text = f"dev F1 {r['validation']['f1']:.4f} @ epoch {r['validation']['best_epoch']}"
    if r.get("test"):
        text += f", test F1 {r['test']['f1']:.4f}"
    return text + f", {r['timing']['train_seconds'] / 60:.1f} train min"


def summarize(payload: dict[str, Any]) -> str:
    text = f"dev F1 {payload['validation']['f1']:.4f} after {payload['epochs']} epochs"
    if payload.get("test"):
        text += f", test F1 {payload['test']['f1']:.4f}"
    return text


def run_grid(
    kinds: Sequence[str],
    results_dir: Path,
    *,
    only: Sequence[str] | None = None,
    max_cells: int | None = None,
    overrides: Sequence[str] = (),
    threads: int | None = None,
    machine: str | None = None,
) -> dict[str, list[str]]:
    results_dir = Path(results_dir)
    return CR.run_cells(
        lambda: G.plan(kinds, results_dir, overrides=overrides, threads=threads),
        results_dir,
        lambda entry, fresh, env: run_cell(entry, results_dir, env, machine),
        only=only,
        max_cells=max_cells,
        describe=describe,
        summarize=summarize,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    CR.add_arguments(parser, G.DEFAULT_RESULTS)
    CR.add_kind_argument(parser, ("explore", "recipe"), ("recipe",))
    parser.add_argument(
        "--machine",
        default=None,
        metavar="TEXT",
        help="what else ran on the machine meanwhile, recorded in each result JSON and shown "
        "beside its minutes (e.g. 'idle: nothing else ran')",
    )
    args = parser.parse_args(argv)
    kinds = args.kind or ["recipe"]
    threads = CR.threads_of(args)
    if args.dry_run:
        entries = G.plan(kinds, args.results, overrides=args.overrides, threads=threads)
        CR.print_cells(entries, args.only, describe)
        return 0
    if args.workers > 1:
        extra = CR.kind_argv(kinds)
        extra += ["--machine", args.machine] if args.machine else []
        return CR.spawn_module_workers(args, threads, extra, __spec__.name)
    CR.log(f"results in {args.results}; threads {threads}; kinds {kinds}")
    outcome = run_grid(kinds, args.results, **CR.grid_options(args, threads), machine=args.machine)
    return 1 if outcome["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
