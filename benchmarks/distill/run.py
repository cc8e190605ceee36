#!/usr/bin/env python3
"""Train the distillation benchmark's cells (``distill_cells.py``), resumably, one JSON each.

    python3 -m benchmarks.distill.run --dry-run        # the cells in run order, with status
    nohup nice -n 10 python3 -m benchmarks.distill.run >> benchmarks/distill/run.log 2>&1 &
    python3 -m benchmarks.distill.run --kind unlabeled  # the optional People's Daily cells
    python3 -m benchmarks.distill.predict_speed         # predict speed: teacher vs students
    python3 -m benchmarks.distill.report                # RESULTS.md from the JSONs

Built on ``benchmarks/cellrunner.py``: a finished cell writes ``results/<cell id with / as
__>.json`` atomically and is skipped while its config is unchanged; a killed cell resumes from
its last finished epoch; cells whose settings wait for others (the search, the teacher) are
blocked until those are done. Runs from the repository root (the configs' paths are relative
to it). The teacher's and the final students' best models are kept in ``models/``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.distill import distill_cells as G
from benchmarks.distill.distill_cells import CR


def write_unlabeled(path: Path = G.UNLABELED) -> int:
    """The People's Daily texts (dev and test files, labels ignored), one per line; their
    number. Written once."""
    from gpner.data.paths import resolve
    from gpner.data.readers import read

    if path.is_file():
        return sum(1 for _ in path.open(encoding="utf-8"))
    texts = [ex.text for name in G.PEOPLE_DAILY for ex in read(resolve(name), format="conll-chars")]
    from gpner.atomic import atomic_write

    with atomic_write(path, "w", encoding="utf-8") as handle:
        handle.writelines(t.replace("\n", " ") + "\n" for t in texts if t.strip())
    return len(texts)


def teacher_caches() -> list[dict[str, Any]]:
    """The metadata of every cached teacher-logits file (texts, cells and bytes per text,
    seconds the teacher took)."""
    metas = []
    for path in sorted(G.CACHE_DIR.glob("*.json")):
        meta = CR.read_json(path)
        if meta is not None:
            metas.append({"file": path.name, **meta})
    return metas


def build_result(
    entry: G.PlanEntry, result: Any, sitting: CR.Sitting, env: dict[str, Any] | None
) -> dict[str, Any]:
    from gpner.config import config_to_dict

    cell, config = entry.cell, entry.config
    history = result.history
    best = next(h for h in history if h["epoch"] == result.best_epoch)
    kept = None
    if cell.kind in ("teacher", "final"):  # kept for the students and for predict_speed.py
        target = G.TEACHER_DIR if cell.kind == "teacher" else G.MODELS / cell.stem
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(result.best_path, target)
        kept = G.rel(target)
    return {
        "schema": 1,
        "cell": cell.id,
        "kind": cell.kind,
        "term": cell.term,
        "seed": config.train.seed,
        "overrides": entry.overrides,
        "config": config_to_dict(config),
        "beta": config.distill.beta if cell.distilled else None,
        "temperature": config.distill.temperature if cell.distilled else None,
        "command": G.distill_command(entry) if cell.distilled else None,
        "validation": {
            "split": "10 % of train" if cell.kind == "search" else "CLUENER dev",
            "f1": result.best_f1,
            "best_epoch": result.best_epoch,
            "micro": best["dev"].get("micro"),
            "per_type_f1": best["dev"].get("per_type_f1"),
        },
        "epochs": len(history),
        "stopped_early": result.stopped_early,
        "history": history,
        "timing": CR.timing(history, sitting),
        "encode": result.info.get("encode"),
        "teacher_caches": teacher_caches() if cell.distilled else None,
        "kept_model": kept,
        "environment": CR.run_environment(env),
        "started_at": sitting.started_at,
        "finished_at": CR.now(),
    }


def run_cell(entry: G.PlanEntry, results_dir: Path, env: dict[str, Any] | None = None) -> dict:
    if entry.cell.kind == "unlabeled":
        write_unlabeled()

    def build(result: Any, sitting: CR.Sitting) -> dict[str, Any]:
        return build_result(entry, result, sitting, env)

    return CR.train_entry(entry, results_dir, build)


def describe(entry: G.PlanEntry) -> str:
    if entry.status == "blocked":
        return "waits for the teacher or the search"
    if entry.status != "done":
        return " ".join(entry.overrides) or "the config as it is"
    r = entry.result
    return (
        f"{r['validation']['split']} F1 {r['validation']['f1']:.4f} @ epoch "
        f"{r['validation']['best_epoch']}, {r['timing']['train_seconds'] / 60:.1f} train min"
    )


def summarize(payload: dict[str, Any]) -> str:
    v = payload["validation"]
    return f"{v['split']} F1 {v['f1']:.4f} after {payload['epochs']} epochs"


def run_grid(
    kinds: Sequence[str],
    results_dir: Path,
    *,
    only: Sequence[str] | None = None,
    max_cells: int | None = None,
    overrides: Sequence[str] = (),
    threads: int | None = None,
) -> dict[str, list[str]]:
    results_dir = Path(results_dir).resolve()
    return CR.run_cells(
        lambda: G.plan(kinds, results_dir, overrides=overrides, threads=threads),
        results_dir,
        lambda entry, fresh, env: run_cell(entry, results_dir, env),
        only=only,
        max_cells=max_cells,
        describe=describe,
        summarize=summarize,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    CR.add_arguments(parser, G.DEFAULT_RESULTS)
    CR.add_kind_argument(parser, G.KINDS, G.DEFAULT_KINDS)
    args = parser.parse_args(argv)
    kinds = args.kind or list(G.DEFAULT_KINDS)
    threads = CR.threads_of(args)
    args.results = args.results.resolve()
    os.chdir(G.ROOT)  # the configs' paths (teacher, cache, unlabelled texts) are relative to it
    if args.dry_run:
        entries = G.plan(kinds, args.results, overrides=args.overrides, threads=threads)
        CR.print_cells(entries, args.only, describe)
        return 0
    if args.workers > 1:
        return CR.spawn_module_workers(args, threads, CR.kind_argv(kinds), __spec__.name)
    CR.log(f"results in {args.results}; threads {threads}; kinds {kinds}")
    outcome = run_grid(kinds, args.results, **CR.grid_options(args, threads))
    return 1 if outcome["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
