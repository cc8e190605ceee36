#!/usr/bin/env python3
"""Train and evaluate the cells of the divergence experiment (issue 6), resumably.

    python3 benchmarks/accuracy/run.py --dry-run            # list the cells in run order
    python3 benchmarks/accuracy/run.py                      # run every unfinished cell
    python3 benchmarks/accuracy/run.py --only cluener-m3e --max-cells 3
    python3 benchmarks/accuracy/run.py --block 1            # only priority block 1
    python3 benchmarks/accuracy/run.py --smoke              # 2 tiny cells on synthetic data

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
count, since it changes the seconds per epoch. See ``accuracy_grid.py`` for the grid itself.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import accuracy_grid as G  # noqa: E402

WORKER_ENV = "GPNER_ACCURACY_WORKER"  # "i/N" in a child of --workers N: tags its log lines
POLL_SECONDS = 30.0  # how often a runner with only blocked cells looks again


def _worker() -> tuple[int, int]:
    """(this worker's number, how many workers): (1, 1) outside ``--workers``."""
    index, _, count = os.environ.get(WORKER_ENV, "1/1").partition("/")
    return int(index), int(count)


def log(message: str) -> None:
    stamp = datetime.now().strftime("%Y-%m-%d %H:%M:%S")
    index, count = _worker()
    tag = f" w{index}" if count > 1 else ""
    print(f"[{stamp}{tag}] {message}", flush=True)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def environment() -> dict[str, Any]:
    """Versions, the git commit and a hash of uncommitted changes under ``src/``.

    Taken once per sitting, after the library is imported (the code every cell of the sitting
    runs), and recorded in every result.
    """
    import hashlib

    import torch

    import gpner
    import gpner.training  # noqa: F401  (the code this sitting runs is loaded from here on)

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(
                ["git", *args], cwd=G.ROOT, capture_output=True, text=True, timeout=30
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    status = git("status", "--porcelain", "--", "src")
    diff = git("diff", "HEAD", "--", "src")
    try:
        import transformers

        transformers_version = transformers.__version__
    except ImportError:  # pragma: no cover
        transformers_version = None
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers_version,
        "gpner": gpner.__version__,
        "git_commit": git("rev-parse", "HEAD"),
        "git_src_dirty": None if status is None else bool(status),
        "git_src_diff_sha1": hashlib.sha1(diff.encode()).hexdigest()[:12] if diff else None,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads_default": torch.get_num_threads(),
    }


# ------------------------------------------------------------------------------- one cell


class CellFailed(RuntimeError):
    pass


def _prepare_run_dir(entry: G.PlanEntry, work: Path) -> bool:
    """Make the cell's run dir; True if it holds a checkpoint to resume from."""
    config = entry.config
    if work.exists():
        marker = G.read_json(work / "cell.json")
        same = marker is not None and G.identity(marker.get("config", {})) == G.identity(config)
        if same and not (work / "failed.txt").exists() and (work / "last.pt").is_file():
            return True
        why = "it failed" if (work / "failed.txt").exists() else "no checkpoint or other config"
        log(f"  wiping the old run dir {work} ({why})")
        shutil.rmtree(work)
    work.mkdir(parents=True)
    G.atomic_write_json(
        work / "cell.json",
        {"cell": entry.cell.id, "config": G.config_to_dict(config), "started_at": _now()},
    )
    return False


def build_result(
    entry: G.PlanEntry,
    result: Any,
    *,
    all_cells: Sequence[G.Cell],
    wall_seconds: float,
    resumed: bool,
    started_at: str,
    env: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The result JSON of a finished cell, from the trainer's ``TrainResult``."""
    cell, config = entry.cell, entry.config
    history = result.history
    best = next(h for h in history if h["epoch"] == result.best_epoch)
    train_seconds = sum(h["seconds"] for h in history)
    eval_seconds = sum(h.get("eval_seconds", 0.0) for h in history)
    steps = sum(h["steps"] for h in history)
    test = None
    if result.test_metrics is not None:
        tm = result.test_metrics
        test = {
            "f1": tm["micro"]["f1"],
            "micro": tm["micro"],
            "macro": tm["macro"],
            "per_type_f1": {k: v["f1"] for k, v in tm["per_type"].items()},
            "per_type": tm["per_type"],
            "support": tm["support"],
        }
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
        "test": test,
        "epochs": len(history),
        "history": history,
        "timing": {
            "wall_seconds": wall_seconds,  # this sitting only (see "resumed")
            "resumed": resumed,
            "train_seconds": train_seconds,  # all epochs, across sittings
            "eval_seconds": eval_seconds,
            "train_seconds_per_epoch": train_seconds / max(1, len(history)),
            "steps": steps,
            "examples_per_second": statistics.fmean(h["examples_per_second"] for h in history),
            "tokens_per_second": statistics.fmean(h["tokens_per_second"] for h in history),
        },
        "encode": result.info.get("encode"),
        "environment": {
            **(env or environment()),
            "torch_threads": _threads(),
            # Concurrent runners share the cores: seconds per epoch depend on this.
            "runner_workers": _worker()[1],
        },
        "started_at": started_at,
        "finished_at": _now(),
    }


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def run_cell(
    entry: G.PlanEntry,
    results_dir: Path,
    all_cells: Sequence[G.Cell],
    env: dict[str, Any] | None = None,
) -> dict:
    """Train one cell (resuming a killed one) and write its result JSON; returns it."""
    from gpner.training import train

    cell = entry.cell
    work = Path(entry.config.output_dir)
    resume = _prepare_run_dir(entry, work)
    marker = G.read_json(work / "cell.json") or {}
    started_at = marker.get("started_at", _now())
    start = time.perf_counter()
    try:
        result = train(entry.config, resume=resume)
    except Exception as error:
        (work / "failed.txt").write_text(traceback.format_exc(), encoding="utf-8")
        raise CellFailed(f"{cell.id}: {type(error).__name__}: {error}") from error
    payload = build_result(
        entry,
        result,
        all_cells=all_cells,
        wall_seconds=time.perf_counter() - start,
        resumed=resume,
        started_at=started_at,
        env=env,
    )
    # The run dir is deleted below: record it relative to the results dir, so the JSON holds no
    # machine path (output_dir is a volatile key: it never makes a cell stale).
    payload["config"]["output_dir"] = os.path.relpath(work, results_dir)
    G.atomic_write_json(G.result_path(results_dir, cell), payload)
    shutil.rmtree(work, ignore_errors=True)
    return payload


# ------------------------------------------------------------------------------ the grid


def selected_ids(entries: Sequence[G.PlanEntry], only: Sequence[str] | None) -> set[str]:
    """Cells matching ``--only``, plus the search cells that selected final cells depend on."""
    all_cells = [e.cell for e in entries]
    chosen = {e.cell.id for e in entries if G.matches(e.cell.id, only)}
    for e in entries:
        if e.cell.id in chosen:
            chosen.update(c.id for c in G.search_cells_of(e.cell, all_cells))
    return chosen


def describe(entry: G.PlanEntry) -> str:
    if entry.status == "blocked":
        return f"waits for {len(entry.waiting_for)} search cell(s)"
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
    shown_entries = [e for e in entries if e.cell.id in chosen]
    counts: dict[str, int] = {}
    print(f"{'#':>3}  {'status':8} {'est.min':>7}  cell")
    for k, entry in enumerate(shown_entries):
        counts[entry.status] = counts.get(entry.status, 0) + 1
        shown = "" if entry.status == "done" else f"{G.estimate_minutes(entry, measured):7.1f}"
        print(f"{k + 1:>3}  {entry.status:8} {shown:>7}  {entry.cell.id}  {describe(entry)}")
    print("cells: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    for block, left in sorted(G.compute_left(shown_entries, measured).items()):
        print(f"block {block}: about {left.minutes / 60:.1f} h of compute left (rough estimate)")


@contextlib.contextmanager
def runner_lock(results_dir: Path):
    """A shared lock on the results dir, held while a runner runs.

    Runners share it with each other (cells are claimed one by one with :func:`cell_lock`). It is
    shared, not exclusive, so that a runner from before cell locks existed (which takes it
    exclusively) and a current one never run on the same results dir at once. The OS releases
    it if the process dies.
    """
    import fcntl

    work = Path(results_dir) / G.WORK_DIRNAME
    work.mkdir(parents=True, exist_ok=True)
    with open(work / "lock", "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            raise SystemExit(
                f"a runner without cell locks holds {work / 'lock'}; not starting"
            ) from None
        yield


@contextlib.contextmanager
def cell_lock(results_dir: Path, cell: G.Cell):
    """Try to claim a cell for this process; yields True if claimed (released on exit or death).

    Lock files stay in ``.work/locks/``: deleting one while another runner opens it would let
    two runners hold "the" lock at once.
    """
    import fcntl

    locks = Path(results_dir) / G.WORK_DIRNAME / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    with open(locks / cell.stem, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            yield False
            return
        yield True


def cell_busy(results_dir: Path, cell: G.Cell) -> bool:
    """Whether another process is running this cell now."""
    with cell_lock(results_dir, cell) as claimed:
        return not claimed


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
    attempted: set[str] = set()
    ran: list[str] = []
    failed: list[str] = []
    with runner_lock(results_dir):
        env = environment()
        while max_cells is None or len(ran) + len(failed) < max_cells:
            entries = G.plan(blocks, results_dir, overrides=overrides, threads=threads)
            chosen = selected_ids(entries, only)
            todo = [
                e
                for e in entries
                if e.cell.id in chosen
                and e.status in ("pending", "partial", "stale")
                and e.cell.id not in attempted
            ]
            with contextlib.ExitStack() as stack:
                entry = None
                for candidate in todo:
                    if stack.enter_context(cell_lock(results_dir, candidate.cell)):
                        entry = candidate
                        break
                if entry is None:
                    blocked = [e for e in entries if e.cell.id in chosen and e.status == "blocked"]
                    unfinished = [e for e in entries if e.cell.id in chosen and e.status != "done"]
                    if blocked and any(cell_busy(results_dir, e.cell) for e in unfinished):
                        time.sleep(POLL_SECONDS)  # another runner's cell may unblock ours
                        continue
                    break
                # Another runner may have finished this cell between the plan and the claim.
                fresh = G.plan(blocks, results_dir, overrides=overrides, threads=threads)
                entry = next(e for e in fresh if e.cell.id == entry.cell.id)
                if entry.status not in ("pending", "partial", "stale"):
                    continue
                attempted.add(entry.cell.id)
                n_left = len(todo)
                log(f"cell {entry.cell.id} ({entry.status}; {describe(entry)}; {n_left} to do)")
                start = time.perf_counter()
                try:
                    payload = run_cell(entry, results_dir, [e.cell for e in fresh], env)
                except CellFailed as error:
                    failed.append(entry.cell.id)
                    log(f"  FAILED {error} (traceback in its run dir failed.txt; redone next time)")
                    continue
            ran.append(entry.cell.id)
            test = payload["test"]["f1"] if payload["test"] else None
            log(
                f"  done in {(time.perf_counter() - start) / 60:.1f} min: "
                f"val F1 {payload['validation']['f1']:.4f}"
                + (f", test F1 {test:.4f}" if test is not None else "")
            )
        entries = G.plan(blocks, results_dir, overrides=overrides, threads=threads)
    chosen = selected_ids(entries, only)
    blocked = [e.cell.id for e in entries if e.cell.id in chosen and e.status == "blocked"]
    left = [e.cell.id for e in entries if e.cell.id in chosen and e.status != "done"]
    log(
        f"ran {len(ran)} cell(s), {len(failed)} failed; {len(left)} selected cell(s) not done"
        + (f" ({len(blocked)} waiting for search cells)" if blocked else "")
    )
    return {"ran": ran, "failed": failed, "blocked": blocked, "left": left}


# -------------------------------------------------------------------------------- smoke


def load_report_module():
    """``report.py`` beside this file, under a name that cannot clash with other modules."""
    name = "gpner_accuracy_report"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("report.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


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
        report = load_report_module()
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


def spawn_workers(argv: Sequence[str], workers: int) -> int:
    """Run this script ``workers`` times side by side with ``argv`` and wait for all of them.

    Each child is tagged ``i/N`` (log lines, ``runner_workers`` in its results). Stopping the
    parent (Ctrl-C, SIGTERM) stops the children; their cells resume next time.
    """
    import signal

    log(f"starting {workers} workers: run.py {' '.join(argv)}")
    children = []

    def stop(signum, frame):  # noqa: ARG001
        for child in children:
            if child.poll() is None:
                child.terminate()
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        for i in range(1, workers + 1):
            env = {**os.environ, WORKER_ENV: f"{i}/{workers}"}
            children.append(subprocess.Popen([sys.executable, __file__, *argv], env=env))
        codes = [child.wait() for child in children]
    except KeyboardInterrupt:
        stop(signal.SIGINT, None)
    finally:
        signal.signal(signal.SIGTERM, previous)
    log(f"workers finished with exit codes {codes}")
    return max(codes)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--only",
        action="append",
        metavar="PATTERN",
        help="run only matching cell ids (substring, or a glob with * ? [); repeatable; "
        "the search cells a selected final cell needs are included",
    )
    parser.add_argument(
        "--block",
        action="append",
        type=int,
        metavar="N",
        help="only cells of priority block N (1-5); repeatable",
    )
    parser.add_argument("--dry-run", action="store_true", help="list cells in order and exit")
    parser.add_argument("--max-cells", type=int, default=None, help="stop after N cells")
    parser.add_argument(
        "--results", type=Path, default=G.DEFAULT_RESULTS, help="result JSON directory"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads per cell (train.num_threads): default 2, 1 with --smoke; "
        "0 = torch's default",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override for every cell (becomes part of each cell's config; use a "
        "separate --results dir for such runs)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="run N runners side by side (child processes; --threads defaults to 2 // N, "
        "--max-cells counts per worker)",
    )
    parser.add_argument("--smoke", action="store_true", help="2 tiny cells on synthetic data")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    default_threads = 1 if args.smoke else max(1, 2 // args.workers)
    threads = default_threads if args.threads is None else (args.threads or None)
    if args.smoke:
        keep = args.results if args.results != G.DEFAULT_RESULTS else None
        return smoke(keep, threads=threads)
    blocks = [b for b in G.main_blocks() if not args.block or b.number in args.block]
    if not blocks:
        parser.error(f"no block numbered {args.block}")
    if args.dry_run:
        import signal

        signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `--dry-run | head` ends quietly
        entries = G.plan(blocks, args.results, overrides=args.overrides, threads=threads)
        print_plan(entries, selected_ids(entries, args.only))
        return 0
    if args.workers > 1:
        child = ["--results", str(args.results), "--threads", str(threads or 0)]
        for pattern in args.only or ():
            child += ["--only", pattern]
        for number in args.block or ():
            child += ["--block", str(number)]
        for override in args.overrides:
            child += ["--set", override]
        if args.max_cells is not None:
            child += ["--max-cells", str(args.max_cells)]
        return spawn_workers(child, args.workers)
    log(f"results in {args.results}; threads {threads}; overrides {args.overrides or 'none'}")
    outcome = run_grid(
        blocks,
        args.results,
        only=args.only,
        max_cells=args.max_cells,
        overrides=args.overrides,
        threads=threads,
    )
    return 1 if outcome["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
