"""Resumable grids of training runs ("cells"), one result JSON per cell: the machinery shared by
``benchmarks/accuracy/run.py`` and any other runner of many ``gpner.training.train`` calls.

A runner describes its grid by *plan entries* (duck-typed: ``entry.cell.id``, ``entry.cell.stem``
(a file-name-safe id), ``entry.status`` and ``entry.config``) and a ``plan()`` callable that
recomputes them from the result files; this module does the rest:

* :func:`cell_status`: ``done`` when the cell's JSON holds the same config (up to volatile keys
  and fields added to gpner later with their old behaviour as default), ``stale`` when it holds
  another config, ``partial`` when a killed run left a checkpoint, else ``pending``;
* :func:`train_cell`: trains one cell in its run dir ``<results>/.work/<stem>/`` (a killed cell
  resumes from its last finished epoch with the trainer's exact ``resume=True``; a cell that
  raised, or a run dir from another config, starts over), writes the JSON atomically and removes
  the run dir;
* :func:`run_cells`: runs the unfinished cells of a plan in order; several runners (processes or
  ``--workers N``) share one results dir, each claiming a cell by an OS lock, and a runner whose
  remaining cells wait for another runner's cells polls until they can start;
* :func:`environment`: versions, the git commit and a hash of uncommitted ``src/`` changes,
  recorded in every result; :func:`add_arguments` / :func:`worker_argv` / :func:`spawn_workers`:
  the common command line; :func:`compute_left`: the dry run's time estimate per block.

Nothing here does work at import time.
"""

from __future__ import annotations

import contextlib
import copy
import fnmatch
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from gpner.atomic import atomic_write_json

ROOT = Path(__file__).resolve().parents[1]
WORK_DIRNAME = ".work"  # inside a results dir: run dirs of unfinished cells, the locks
WORKER_ENV = "GPNER_CELL_WORKER"  # "i/N" in a child of --workers N: tags its log lines
POLL_SECONDS = 30.0  # how often a runner with only blocked cells looks again
RUNNABLE = ("pending", "partial", "stale")
# Config keys that do not change what a cell computes (so they may differ between sittings).
# compiled_kernels only changes how the loss arithmetic is scheduled (same values up to rounding).
VOLATILE_KEYS: tuple[tuple[str, ...], ...] = (
    ("train", "num_threads"),
    ("train", "progress"),
    ("train", "compiled_kernels"),
    ("output_dir",),
)


# ------------------------------------------------------------------------------- logging


def worker() -> tuple[int, int]:
    """(this worker's number, how many workers): (1, 1) outside ``--workers``."""
    index, _, count = os.environ.get(WORKER_ENV, "1/1").partition("/")
    return int(index), int(count)


def log(message: str) -> None:
    stamp = datetime.now().strftime("%Y-%m-%d %H:%M:%S")
    index, count = worker()
    tag = f" w{index}" if count > 1 else ""
    print(f"[{stamp}{tag}] {message}", flush=True)


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def environment(root: Path = ROOT) -> dict[str, Any]:
    """Versions, the git commit and a hash of uncommitted changes under ``src/`` of ``root``.

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
                ["git", *args], cwd=root, capture_output=True, text=True, timeout=30
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


def run_environment(env: dict[str, Any] | None = None) -> dict[str, Any]:
    """:func:`environment` plus this process's thread and worker counts (they change the
    seconds per epoch, since concurrent runners share the cores)."""
    import torch

    return {
        **(env or environment()),
        "torch_threads": torch.get_num_threads(),
        "runner_workers": worker()[1],
    }


# ---------------------------------------------------------------------------- JSON files


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def load_results(results_dir: Path) -> list[dict[str, Any]]:
    """Every result JSON in a directory (unreadable files are skipped)."""
    out = []
    for path in sorted(Path(results_dir).glob("*.json")):
        payload = read_json(path)
        if payload is not None and "cell" in payload:
            out.append(payload)
    return out


def result_path(results_dir: Path, stem: str) -> Path:
    return Path(results_dir) / f"{stem}.json"


class StemFromId:
    """Mixin for a grid's cell class: ``stem``, its ``id`` with ``/`` as ``__`` (a file name)."""

    @property
    def stem(self) -> str:
        return self.id.replace("/", "__")  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------- cell status


def identity(config: Any, volatile_keys: Sequence[Sequence[str]] = VOLATILE_KEYS) -> dict:
    """A config (``Config`` or dict) as a dict without the keys that do not change the result.

    A stored dict is first completed with the current defaults, so that a config field added to
    gpner after a cell finished (its default being the old behaviour) does not make the cell
    stale; a dict the current Config cannot read is compared as it is (and so differs).
    """
    from gpner.config import config_from_dict, config_to_dict

    if isinstance(config, dict):
        with contextlib.suppress(ValueError, TypeError, KeyError):
            config = config_from_dict(copy.deepcopy(config))
    data = copy.deepcopy(config if isinstance(config, dict) else config_to_dict(config))
    for path in volatile_keys:
        node = data
        for key in path[:-1]:
            node = node.get(key, {})
        node.pop(path[-1], None)
    regularizer = data.get("regularizer", {})
    if regularizer.get("kind") == "none":
        # Without a regulariser its weights are never read, so a changed default (alpha went from
        # 1 to 1/64) must not make finished unregularised cells stale.
        data["regularizer"] = {"kind": "none"}
    return json.loads(json.dumps(data))  # tuples -> lists, as in a JSON file


def cell_status(results_dir: Path, stem: str, config: Any) -> tuple[str, dict | None]:
    """(status, stored result): ``done`` (same config), ``stale`` (a JSON from another config),
    ``partial`` (a killed run left a checkpoint) or ``pending``."""
    stored = read_json(result_path(results_dir, stem))
    if stored is not None and identity(stored.get("config", {})) == identity(config):
        return "done", stored
    if stored is not None:
        return "stale", None
    if (Path(results_dir) / WORK_DIRNAME / stem / "last.pt").is_file():
        return "partial", None
    return "pending", None


def matches(cell_id: str, patterns: Sequence[str] | None) -> bool:
    """``--only``: a glob (with * ? [) matched against the whole id, else a substring."""
    if not patterns:
        return True
    for pattern in patterns:
        if any(ch in pattern for ch in "*?["):
            if fnmatch.fnmatchcase(cell_id, pattern):
                return True
        elif pattern in cell_id:
            return True
    return False


def selected_ids(
    entries: Sequence[Any],
    only: Sequence[str] | None,
    depends_on: Callable[[Any, list[Any]], Iterable[Any]] | None = None,
) -> set[str]:
    """Ids of the cells matching ``--only``, plus the cells they depend on
    (``depends_on(cell, all_cells)``)."""
    all_cells = [e.cell for e in entries]
    chosen = {e.cell.id for e in entries if matches(e.cell.id, only)}
    if depends_on is not None:
        for e in entries:
            if e.cell.id in chosen:
                chosen.update(c.id for c in depends_on(e.cell, all_cells))
    return chosen


# ------------------------------------------------------------------------------- one cell


class CellFailed(RuntimeError):
    pass


def prepare_run_dir(cell_id: str, config: Any, work: Path) -> bool:
    """Make a cell's run dir; True if it holds a checkpoint of the same config to resume from."""
    from gpner.config import config_to_dict

    if work.exists():
        marker = read_json(work / "cell.json")
        same = marker is not None and identity(marker.get("config", {})) == identity(config)
        if same and not (work / "failed.txt").exists() and (work / "last.pt").is_file():
            return True
        why = "it failed" if (work / "failed.txt").exists() else "no checkpoint or other config"
        log(f"  wiping the old run dir {work} ({why})")
        shutil.rmtree(work)
    work.mkdir(parents=True)
    atomic_write_json(
        work / "cell.json", {"cell": cell_id, "config": config_to_dict(config), "started_at": now()}
    )
    return False


@dataclass(frozen=True)
class Sitting:
    """How one cell's training went in this sitting, for the result JSON."""

    wall_seconds: float
    resumed: bool
    started_at: str


def train_cell(
    cell_id: str,
    stem: str,
    config: Any,
    results_dir: Path,
    build: Callable[[Any, Sitting], dict[str, Any]],
) -> dict[str, Any]:
    """Train one cell in ``config.output_dir`` (resuming a killed run) and write its result
    JSON ``build(train_result, sitting)``; returns it."""
    from gpner.training import train

    work = Path(config.output_dir)
    resume = prepare_run_dir(cell_id, config, work)
    marker = read_json(work / "cell.json") or {}
    started_at = marker.get("started_at", now())
    start = time.perf_counter()
    try:
        result = train(config, resume=resume)
    except Exception as error:
        (work / "failed.txt").write_text(traceback.format_exc(), encoding="utf-8")
        raise CellFailed(f"{cell_id}: {type(error).__name__}: {error}") from error
    payload = build(result, Sitting(time.perf_counter() - start, resume, started_at))
    # The run dir is deleted below: record it relative to the results dir, so the JSON holds no
    # machine path (output_dir is a volatile key: it never makes a cell stale).
    payload["config"]["output_dir"] = os.path.relpath(work, results_dir)
    atomic_write_json(result_path(results_dir, stem), payload)
    shutil.rmtree(work, ignore_errors=True)
    return payload


def train_entry(
    entry: Any, results_dir: Path, build: Callable[[Any, Sitting], dict[str, Any]]
) -> dict[str, Any]:
    """:func:`train_cell` for a plan entry (its cell's id and stem, its config)."""
    return train_cell(entry.cell.id, entry.cell.stem, entry.config, results_dir, build)


def metrics_summary(metrics: dict[str, Any] | None) -> dict[str, Any] | None:
    """The evaluation block of a result JSON from the trainer's metrics dict."""
    if metrics is None:
        return None
    return {
        "f1": metrics["micro"]["f1"],
        "micro": metrics["micro"],
        "macro": metrics["macro"],
        "per_type_f1": {k: v["f1"] for k, v in metrics["per_type"].items()},
        "per_type": metrics["per_type"],
        "support": metrics["support"],
    }


def timing(history: Sequence[dict[str, Any]], sitting: Sitting) -> dict[str, Any]:
    """The timing block of a result JSON from the trainer's per-epoch history."""
    train_seconds = sum(h["seconds"] for h in history)
    return {
        "wall_seconds": sitting.wall_seconds,  # this sitting only (see "resumed")
        "resumed": sitting.resumed,
        "train_seconds": train_seconds,  # all epochs, across sittings
        "eval_seconds": sum(h.get("eval_seconds", 0.0) for h in history),
        "train_seconds_per_epoch": train_seconds / max(1, len(history)),
        "steps": sum(h["steps"] for h in history),
        "examples_per_second": statistics.fmean(h["examples_per_second"] for h in history),
        "tokens_per_second": statistics.fmean(h["tokens_per_second"] for h in history),
    }


# ---------------------------------------------------------------------------------- locks


@contextlib.contextmanager
def runner_lock(results_dir: Path):
    """A shared lock on the results dir, held while a runner runs.

    Runners share it with each other (cells are claimed one by one with :func:`cell_lock`). It is
    shared, not exclusive, so that a runner from before cell locks existed (which takes it
    exclusively) and a current one never run on the same results dir at once. The OS releases
    it if the process dies.
    """
    import fcntl

    work = Path(results_dir) / WORK_DIRNAME
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
def cell_lock(results_dir: Path, stem: str):
    """Try to claim a cell for this process; yields True if claimed (released on exit or death).

    Lock files stay in ``.work/locks/``: deleting one while another runner opens it would let
    two runners hold "the" lock at once.
    """
    import fcntl

    locks = Path(results_dir) / WORK_DIRNAME / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    with open(locks / stem, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            yield False
            return
        yield True


def cell_busy(results_dir: Path, stem: str) -> bool:
    """Whether another process is running this cell now."""
    with cell_lock(results_dir, stem) as claimed:
        return not claimed


# ---------------------------------------------------------------------------------- a grid


def run_cells(
    plan: Callable[[], Sequence[Any]],
    results_dir: Path,
    run_one: Callable[[Any, Sequence[Any], dict[str, Any]], dict[str, Any]],
    *,
    selected: Callable[[Sequence[Any]], set[str]] | None = None,
    only: Sequence[str] | None = None,
    max_cells: int | None = None,
    describe: Callable[[Any], str] = lambda entry: "",
    summarize: Callable[[dict[str, Any]], str] = lambda payload: "",
    poll_seconds: float | None = None,
    env: Callable[[], dict[str, Any]] = environment,
) -> dict[str, list[str]]:
    """Run the unfinished selected cells of ``plan()`` in order until all are done,
    ``max_cells`` ran, or nothing is left that can run (cells with status ``blocked`` wait for
    others). ``run_one(entry, fresh_entries, env)`` trains one cell and returns its JSON.
    The selected cells: ``selected(entries)``, else those matching ``only`` (:func:`selected_ids`).

    Returns ``{"ran", "failed", "blocked", "left"}`` (cell ids).
    """
    results_dir = Path(results_dir)
    poll = POLL_SECONDS if poll_seconds is None else poll_seconds

    def chosen_of(entries: Sequence[Any]) -> set[str]:
        return selected(entries) if selected is not None else selected_ids(entries, only)

    attempted: set[str] = set()
    ran: list[str] = []
    failed: list[str] = []
    with runner_lock(results_dir):
        sitting_env = env()
        while max_cells is None or len(ran) + len(failed) < max_cells:
            entries = plan()
            chosen = chosen_of(entries)
            todo = [
                e
                for e in entries
                if e.cell.id in chosen and e.status in RUNNABLE and e.cell.id not in attempted
            ]
            with contextlib.ExitStack() as stack:
                entry = None
                for candidate in todo:
                    if stack.enter_context(cell_lock(results_dir, candidate.cell.stem)):
                        entry = candidate
                        break
                if entry is None:
                    blocked = [e for e in entries if e.cell.id in chosen and e.status == "blocked"]
                    unfinished = [e for e in entries if e.cell.id in chosen and e.status != "done"]
                    if blocked and any(cell_busy(results_dir, e.cell.stem) for e in unfinished):
                        time.sleep(poll)  # another runner's cell may unblock ours
                        continue
                    break
                # Another runner may have finished this cell between the plan and the claim.
                fresh = plan()
                entry = next(e for e in fresh if e.cell.id == entry.cell.id)
                if entry.status not in RUNNABLE:
                    continue
                attempted.add(entry.cell.id)
                log(f"cell {entry.cell.id} ({entry.status}; {describe(entry)}; {len(todo)} to do)")
                start = time.perf_counter()
                try:
                    payload = run_one(entry, fresh, sitting_env)
                except CellFailed as error:
                    failed.append(entry.cell.id)
                    log(f"  FAILED {error} (traceback in its run dir failed.txt; redone next time)")
                    continue
            ran.append(entry.cell.id)
            log(f"  done in {(time.perf_counter() - start) / 60:.1f} min: {summarize(payload)}")
        entries = plan()
    chosen = chosen_of(entries)
    blocked = [e.cell.id for e in entries if e.cell.id in chosen and e.status == "blocked"]
    left = [e.cell.id for e in entries if e.cell.id in chosen and e.status != "done"]
    log(
        f"ran {len(ran)} cell(s), {len(failed)} failed; {len(left)} selected cell(s) not done"
        + (f" ({len(blocked)} waiting for search cells)" if blocked else "")
    )
    return {"ran": ran, "failed": failed, "blocked": blocked, "left": left}


# ---------------------------------------------------------------------------- estimates


@dataclass(frozen=True)
class ComputeLeft:
    """Rough cell time (summed wall time of cells as measured here) still needed by one
    block's unfinished cells."""

    minutes: float
    cells: int
    measured: bool  # False: some cell's estimate rests on a prior, not on a measured time


def compute_left(
    entries: Sequence[Any],
    estimate: Callable[[Any], tuple[float, bool]],
    block_of: Callable[[Any], int] = lambda entry: entry.cell.block,
) -> dict[int, ComputeLeft]:
    """Block -> :class:`ComputeLeft` for blocks with unfinished entries; ``estimate(entry)`` is
    (minutes, whether they rest on measured times)."""
    minutes: dict[int, float] = {}
    counts: dict[int, int] = {}
    measured: dict[int, bool] = {}
    for e in entries:
        if e.status == "done":
            continue
        block = block_of(e)
        cell_minutes, from_data = estimate(e)
        minutes[block] = minutes.get(block, 0.0) + cell_minutes
        counts[block] = counts.get(block, 0) + 1
        measured[block] = measured.get(block, True) and from_data
    return {b: ComputeLeft(minutes[b], counts[b], measured[b]) for b in minutes}


def median_by(
    entries: Sequence[Any], key: Callable[[Any], Any], value: Callable[[dict], float | None]
) -> dict[Any, float]:
    """Median of ``value(result)`` over finished entries, grouped by ``key(entry)``."""
    found: dict[Any, list[float]] = {}
    for e in entries:
        if e.status == "done" and e.result is not None:
            v = value(e.result)
            if v is not None:
                found.setdefault(key(e), []).append(v)
    return {k: statistics.median(v) for k, v in found.items()}


# ------------------------------------------------------------------------- command line


def add_arguments(parser: Any, default_results: Path) -> None:
    """The options every cell runner shares (see :func:`worker_argv` and :func:`threads_of`)."""
    parser.add_argument(
        "--only",
        action="append",
        metavar="PATTERN",
        help="run only matching cell ids (substring, or a glob with * ? [); repeatable; "
        "the cells a selected cell depends on are included",
    )
    parser.add_argument("--dry-run", action="store_true", help="list cells in order and exit")
    parser.add_argument("--max-cells", type=int, default=None, help="stop after N cells")
    parser.add_argument(
        "--results", type=Path, default=default_results, help="result JSON directory"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads per cell (train.num_threads): default 2 // workers, "
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


def add_kind_argument(parser: Any, choices: Sequence[str], default: Sequence[str]) -> None:
    """``--kind``: which kinds of cells a runner runs (repeatable; see :func:`kind_argv`)."""
    parser.add_argument(
        "--kind",
        action="append",
        choices=choices,
        help=f"which cells (repeatable; default: {', '.join(default)})",
    )


def kind_argv(kinds: Sequence[str]) -> list[str]:
    """The ``--kind`` options of a ``--workers`` child."""
    return [x for kind in kinds for x in ("--kind", kind)]


def grid_options(args: Any, threads: int | None) -> dict[str, Any]:
    """The common keyword arguments of a runner's ``run_grid`` from its command line."""
    return {
        "only": args.only,
        "max_cells": args.max_cells,
        "overrides": args.overrides,
        "threads": threads,
    }


def threads_of(args: Any, default: int | None = None) -> int | None:
    """``train.num_threads`` for the cells: ``--threads`` (0 = torch's default, None), else
    ``default``, else 2 // workers (at least 1)."""
    if args.workers < 1:
        raise SystemExit("--workers must be at least 1")
    if args.threads is not None:
        return args.threads or None
    return default if default is not None else max(1, 2 // args.workers)


def worker_argv(args: Any, threads: int | None, extra: Sequence[str] = ()) -> list[str]:
    """The command line of one ``--workers`` child (common options plus ``extra``)."""
    child = ["--results", str(args.results), "--threads", str(threads or 0)]
    for pattern in args.only or ():
        child += ["--only", pattern]
    for override in args.overrides:
        child += ["--set", override]
    if args.max_cells is not None:
        child += ["--max-cells", str(args.max_cells)]
    return child + list(extra)


def quiet_broken_pipe() -> None:
    """Let ``--dry-run | head`` end quietly (the default SIGPIPE action instead of a traceback)."""
    import signal

    signal.signal(signal.SIGPIPE, signal.SIG_DFL)


def print_cells(
    entries: Sequence[Any], only: Sequence[str] | None, describe: Callable[[Any], str]
) -> None:
    """``--dry-run``: the cells matching ``--only`` in run order, with status and description."""
    quiet_broken_pipe()
    chosen = selected_ids(entries, only)
    for k, e in enumerate(x for x in entries if x.cell.id in chosen):
        print(f"{k + 1:>3}  {e.status:8} {e.cell.id}  {describe(e)}")


def spawn_module_workers(args: Any, threads: int | None, extra: Sequence[str], module: str) -> int:
    """``--workers N``: run ``python -m module`` N times from the repository root with the
    common options (:func:`worker_argv`) plus ``extra``; the highest exit code."""
    child = worker_argv(args, threads, extra)
    return spawn_workers(None, child, args.workers, module=module, cwd=ROOT)


def spawn_workers(
    script: str | Path | None,
    argv: Sequence[str],
    workers: int,
    *,
    module: str | None = None,
    cwd: Path | None = None,
) -> int:
    """Run ``script`` (or ``python -m module`` in ``cwd``) ``workers`` times side by side with
    ``argv`` and wait for all of them.

    Each child is tagged ``i/N`` (log lines, ``runner_workers`` in its results). Stopping the
    parent (Ctrl-C, SIGTERM) stops the children; their cells resume next time.
    """
    import signal

    program = ["-m", module] if module else [str(script)]
    shown = f"-m {module}" if module else Path(script).name
    log(f"starting {workers} workers: {shown} {' '.join(argv)}")
    children: list[subprocess.Popen] = []
    codes: list[int] = []

    def stop(signum, frame):  # noqa: ARG001
        for child in children:
            if child.poll() is None:
                child.terminate()
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        for i in range(1, workers + 1):
            env = {**os.environ, WORKER_ENV: f"{i}/{workers}"}
            children.append(subprocess.Popen([sys.executable, *program, *argv], env=env, cwd=cwd))
        codes = [child.wait() for child in children]
    except KeyboardInterrupt:
        stop(signal.SIGINT, None)
    finally:
        signal.signal(signal.SIGTERM, previous)
    log(f"workers finished with exit codes {codes}")
    return max(codes)
