"""Run design v3 of the divergence experiment (issue 30; the design: ``design_v3.py``),
resumably, every cell on one pinned library commit. From the repository root::

    PYTHONPATH=src python3 -m benchmarks.accuracy.run_v3 --dry-run --epoch-minutes 0.6
    PYTHONPATH=src python3 -m benchmarks.accuracy.run_v3 --pin COMMIT --layout 2x1 --commit-results
    PYTHONPATH=src python3 -m benchmarks.accuracy.report_v3          # REPORT-v3.md

* **Pinned.** ``--pin COMMIT`` makes (or reuses) a git worktree of that commit under ``.pins/``
  (ignored by git) and runs every cell there: ``python3 -m gpner train`` / ``evaluate`` and the
  probe, with ``PYTHONPATH`` = that worktree's ``src`` and ``GPNER_DATA`` = this checkout's data
  root. The commit is recorded in every result JSON, and the runner refuses to start when the
  results dir holds a cell of another commit.
* **Resumable.** A finished cell (its JSON in ``results-v3/``, written atomically) is skipped; a
  killed cell resumes from its last finished epoch (``gpner train --resume-if-exists`` on its run
  dir ``results-v3/.work/<cell>/``); a cell that failed starts over. ``--commit-results`` commits
  each finished cell's JSON (that file only) in the checkout that holds it, right away.
* **Layout.** ``--layout 1x2``: one runner with 2 torch threads; ``--layout 2x1``: two runners
  side by side with 1 thread each, sharing the results dir (each cell claimed by an OS lock,
  ``benchmarks/cellrunner.py``). Each JSON records its threads and layout.
* **Dry run.** Every cell with its status and estimated minutes, the alpha extensions still
  possible, and the design's hours: from ``--epoch-minutes`` (a plain epoch, training + validation,
  as one runner of the layout runs it) and ``--rdrop-cost``, or measured from finished cells
  (``--pilot DIR`` and the results dir).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import cellrunner as CR
from benchmarks.accuracy import design_v3 as D
from gpner.atomic import atomic_write_json

PINS = CR.ROOT / ".pins"
LAYOUTS = {"1x2": (1, 2), "2x1": (2, 1)}  # layout -> (runner processes, threads each)


def git(repo: Path, *args: str) -> str:
    out = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise D.DesignError(f"git {' '.join(args)} in {repo}: {out.stderr.strip()}")
    return out.stdout.strip()


def pinned_checkout(repo: Path, rev: str, pins: Path = PINS) -> tuple[Path, str]:
    """(worktree, full commit) of ``rev``: ``pins/<commit[:12]>``, made with ``git worktree add
    --detach`` when missing; an existing one must sit clean at that commit."""
    commit = git(repo, "rev-parse", "--verify", f"{rev}^{{commit}}")
    path = Path(pins) / commit[:12]
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        git(repo, "worktree", "add", "--detach", str(path), commit)
    if git(path, "rev-parse", "HEAD") != commit:
        raise D.DesignError(f"{path} is not at {commit}; remove it (git worktree remove)")
    if git(path, "status", "--porcelain", "--untracked-files=no"):
        raise D.DesignError(f"{path} has local changes; remove it (git worktree remove --force)")
    return path, commit


def cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


class Runner:
    """Runs the cells of ``design`` from ``checkout`` (the pinned commit ``commit``)."""

    def __init__(self, design, checkout, commit, results, *, layout="1x2", commit_results=False):
        from gpner.data.paths import data_root

        self.design, self.checkout, self.commit = design, Path(checkout), commit
        self.results, self.layout = Path(results), layout
        self.threads = LAYOUTS[layout][1]
        self.commit_results = commit_results
        self.env = {
            **os.environ,
            "PYTHONPATH": str(self.checkout / "src"),
            "GPNER_DATA": str(data_root().resolve()),
            "OMP_NUM_THREADS": str(self.threads),
            "MKL_NUM_THREADS": str(self.threads),
        }
        self._library: dict[str, Any] | None = None

    def library(self) -> dict[str, Any]:
        """The pinned commit and the versions its cells run with (asked once, in its env)."""
        if self._library is None:
            code = (
                "import json, platform, torch, gpner; print(json.dumps({'python': "
                "platform.python_version(), 'torch': torch.__version__, 'gpner': "
                "gpner.__version__, 'gpner_file': gpner.__file__}))"
            )
            info = json.loads(self._run([sys.executable, "-c", code]).stdout.splitlines()[-1])
            if not Path(info.pop("gpner_file")).is_relative_to(self.checkout):
                raise D.DesignError(f"the cells would not import gpner from {self.checkout}")
            self._library = {"commit": self.commit, **info}
        return self._library

    def _run(self, argv: list[str], log: Path | None = None) -> subprocess.CompletedProcess:
        err = open(log, "a", encoding="utf-8") if log else subprocess.PIPE  # noqa: SIM115
        try:
            out = subprocess.run(
                argv,
                cwd=self.checkout,
                env=self.env,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
            )
        finally:
            if log:
                err.close()
        if out.returncode != 0:
            raise CR.CellFailed(f"{' '.join(argv[2:5])}... exited {out.returncode}")
        return out

    def run_cell(self, entry: D.Entry) -> dict[str, Any]:
        """Train (or resume) one cell, evaluate and probe it, write its JSON; returns it."""
        cell, design = entry.cell, self.design
        work = self.results / D.WORK_DIRNAME / cell.stem
        the_spec = D.spec(design, cell, entry.alpha)
        marker = CR.read_json(work / "cell.json")
        if work.exists() and (
            marker is None or marker.get("spec") != the_spec or (work / "failed.txt").exists()
        ):
            CR.log(f"  wiping the old run dir {work}")
            shutil.rmtree(work)
        if not work.exists():
            work.mkdir(parents=True)
            marker = {"spec": the_spec, "started_at": CR.now(), "sittings": []}
        sets = D.overrides(design, cell, entry.alpha)
        run_sets = [*sets, "train.progress=false", f"train.num_threads={self.threads}"]
        set_args = [x for s in run_sets for x in ("--set", s)]
        start = time.perf_counter()
        try:
            summary = self._train(work, set_args)
            test_start = time.perf_counter()
            test = self._evaluate(work) if cell.stage == "final" else None
            test_seconds = time.perf_counter() - test_start if test else None
            probe = self._probe(work, set_args) if cell.stage == "final" and entry.alpha else None
        except Exception as error:  # noqa: BLE001  (any failure: the cell starts over next time)
            (work / "failed.txt").write_text(f"{type(error).__name__}: {error}", encoding="utf-8")
            raise CR.CellFailed(f"{cell.id}: {error} (log: {work / 'train.log'})") from error
        finally:
            marker["sittings"].append(round(time.perf_counter() - start, 3))
            atomic_write_json(work / "cell.json", marker)
        payload = self.payload(entry, summary, test, probe, marker, sets)
        payload["timing"]["test_eval_seconds"] = test_seconds
        path = CR.result_path(self.results, cell.stem)
        atomic_write_json(path, payload)
        shutil.rmtree(work, ignore_errors=True)
        if self.commit_results:
            commit_file(path, f"accuracy v3: cell {cell.id} ({summarize(payload)})")
        return payload

    def _train(self, work: Path, set_args: list[str]) -> dict[str, Any]:
        import torch

        argv = [sys.executable, "-m", "gpner", "train", self.design.base_config]
        out = self._run(
            [*argv, "--output-dir", str(work), "--resume-if-exists", *set_args], work / "train.log"
        )
        summary = json.loads(out.stdout.strip().splitlines()[-1])
        state = torch.load(work / "last.pt", map_location="cpu", weights_only=True)
        summary["history"] = state["history"]  # every epoch, across sittings
        summary["config"] = json.loads((work / "best" / "gpner.json").read_text())["config"]
        return summary

    def _evaluate(self, work: Path) -> dict[str, Any]:
        argv = [sys.executable, "-m", "gpner", "evaluate", str(work / "best"), self.design.test_set]
        return json.loads(self._run(argv, work / "train.log").stdout)

    def _probe(self, work: Path, set_args: list[str]) -> dict[str, Any]:
        """The probe (``probe.py`` of the pinned commit) on the best checkpoint; an error is
        recorded, not raised, so that a finished training is never lost to it."""
        start = time.perf_counter()
        argv = [sys.executable, "-m", "benchmarks.accuracy.probe", self.design.base_config]
        argv += [str(work / "best"), *set_args, "--out", str(work / "probe.json")]
        try:
            self._run(argv, work / "train.log")
        except CR.CellFailed as error:
            CR.log(f"  probe failed: {error}")
            return {"error": str(error)}
        out = CR.read_json(work / "probe.json") or {"error": "no probe.json"}
        out["seconds"] = time.perf_counter() - start
        return out

    def payload(self, entry, summary, test, probe, marker, sets) -> dict[str, Any]:
        cell, history = entry.cell, summary["history"]
        best = next(h for h in history if h["epoch"] == summary["best_epoch"])
        config = summary["config"]
        config["output_dir"] = f"{D.WORK_DIRNAME}/{cell.stem}"  # deleted; no machine path
        shares = None
        if cell.kind == "rdrop":
            a = entry.alpha
            shares = [
                a * h["train_reg"] / (h["train_ce"] + a * h["train_reg"])
                if h.get("train_ce")
                else 0.0
                for h in history
            ]
        train_seconds = sum(h["seconds"] for h in history)
        eval_seconds = sum(h.get("eval_seconds", 0.0) for h in history)
        processes, threads = LAYOUTS[self.layout]
        return {
            "schema": 1,
            "design": self.design.name,
            "cell": cell.id,
            "stage": cell.stage,
            "variant": cell.variant,
            "seed": cell.seed,
            "kind": cell.kind,
            "divergence": cell.divergence,
            "alpha": entry.alpha,
            "spec": D.spec(self.design, cell, entry.alpha),
            "library": self.library(),
            "command": ["gpner", "train", self.design.base_config, *sets],
            "data": {
                "train": self.design.train_file,
                "validation": list(self.design.data),
                "test": self.design.test_set if cell.stage == "final" else None,
            },
            "config": config,
            "validation": {
                "f1": summary["best_dev_f1"],
                "best_epoch": summary["best_epoch"],
                "per_epoch": [h["dev"]["micro"]["f1"] for h in history],
                "micro": best["dev"]["micro"],
            },
            "epochs_run": len(history),
            "stopped_early": summary["stopped_early"],
            "divergence_share_per_epoch": shares,  # epoch means of alpha*D / (CE + alpha*D)
            "test": test,
            "probe": probe,
            "history": history,
            "timing": {
                "train_seconds": train_seconds,
                "eval_seconds": eval_seconds,
                "epoch_seconds": (train_seconds + eval_seconds) / max(1, len(history)),
                "wall_seconds": sum(marker["sittings"]),
                "sittings": len(marker["sittings"]),
            },
            "machine": {
                "threads": threads,
                "layout": self.layout,
                "runner_processes": processes,
                "cpu_model": cpu_model(),
                "cpu_count": os.cpu_count(),
                "platform": platform.platform(),
            },
            "started_at": marker["started_at"],
            "finished_at": CR.now(),
        }


def commit_file(path: Path, message: str, tries: int = 5) -> bool:
    """``git add`` + ``git commit`` of ``path`` alone in the checkout that holds it (retried
    while another runner holds the index lock); False (logged) if it did not work."""
    repo = Path(path).parent
    for attempt in range(tries):
        add = subprocess.run(["git", "-C", str(repo), "add", "--", str(path)], capture_output=True)
        done = (
            add.returncode == 0
            and subprocess.run(
                ["git", "-C", str(repo), "commit", "-q", "-m", message, "--", str(path)],
                capture_output=True,
            ).returncode
            == 0
        )
        if done:
            return True
        time.sleep(1 + attempt)
    CR.log(f"  could not commit {path}: commit it by hand")
    return False


def summarize(payload: dict[str, Any]) -> str:
    text = f"val F1 {payload['validation']['f1']:.4f} @ {payload['validation']['best_epoch']}"
    text += f" of {payload['epochs_run']}"
    return text + (f", test F1 {payload['test']['micro']['f1']:.4f}" if payload["test"] else "")


def describe(entry: D.Entry) -> str:
    if entry.status == "blocked":
        return f"waits for {entry.waiting_for}"
    alpha = "" if entry.alpha is None else f"alpha {D.alpha_label(entry.alpha).replace('_', '/')}"
    done = summarize(entry.result) if entry.status == "done" else ""
    return ", ".join(x for x in (alpha, done) if x)


def print_dry_run(design: D.Design, entries, results, rates: D.Rates | None, layout: str) -> None:
    def minutes(cell: D.Cell) -> float | None:
        return rates.minutes(cell) if rates else None

    print(f"{'#':>3}  {'status':8} {'est.min':>7}  cell")
    for k, e in enumerate(entries):
        m = minutes(e.cell) if e.status != "done" else None
        shown = "" if e.status == "done" else ("?" if m is None else f"{m:.1f}")
        print(f"{k + 1:>3}  {e.status:8} {shown:>7}  {e.cell.id}  {describe(e)}")
    found = D.searches(design, results)
    possible = [
        D.Cell("search", "rdrop-" + d, seed, a)
        for d in D.DIVERGENCES
        for a in D.possible_alphas(design, found[d])
        for seed in design.search_seeds
    ]
    for c in possible:
        m = minutes(c)
        print(f"  +  {'possible':8} {'?' if m is None else f'{m:.1f}':>7}  {c.id}  (extension)")
    counts: dict[str, int] = {}
    for e in entries:
        counts[e.status] = counts.get(e.status, 0) + 1
    print("cells: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    if rates is None:
        print("no time estimate: pass --epoch-minutes, or --pilot DIR with finished cells")
        return
    left = sum(rates.minutes(e.cell) for e in entries if e.status != "done") / 60
    more = sum(rates.minutes(c) for c in possible) / 60
    processes = LAYOUTS[layout][0]
    print(f"per-epoch times: {rates.source}")
    print(
        f"left: {left:.1f} cell-hours without extensions, {left + more:.1f} with every possible "
        f"alpha extension ({len(possible)} cells); wall-clock with layout {layout} "
        f"({processes} runner(s)): {left / processes:.1f}-{(left + more) / processes:.1f} h"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=D.DEFAULT_RESULTS)
    parser.add_argument("--pin", metavar="COMMIT", help="the library commit every cell runs")
    parser.add_argument(
        "--layout",
        choices=sorted(LAYOUTS),
        default="1x2",
        help="1x2: one runner, 2 threads; 2x1: two runners, 1 thread each",
    )
    parser.add_argument(
        "--commit-results",
        action="store_true",
        help="git-commit each finished cell's JSON (that file only) at once",
    )
    parser.add_argument("--dry-run", action="store_true", help="list the cells and the hours")
    parser.add_argument(
        "--epoch-minutes",
        type=float,
        default=None,
        help="dry run: minutes of a plain epoch (training + validation)",
    )
    parser.add_argument(
        "--rdrop-cost",
        type=float,
        default=2.0,
        help="dry run: an R-Drop epoch's cost in plain epochs (default 2)",
    )
    parser.add_argument(
        "--epochs",
        type=float,
        default=None,
        help="dry run: epochs per cell (default: the design's maximum)",
    )
    parser.add_argument(
        "--pilot",
        type=Path,
        action="append",
        default=[],
        help="dry run: result JSONs to measure epoch times and counts from",
    )
    parser.add_argument(
        "--only",
        action="append",
        metavar="PATTERN",
        help="run only matching cell ids (substring or glob); repeatable",
    )
    parser.add_argument("--max-cells", type=int, default=None, help="stop after N cells")
    args = parser.parse_args(argv)
    design = D.V3
    try:
        results = D.load_results(args.results)
        D.check_commits(results, None)
        if args.dry_run:
            entries = D.plan(design, args.results)
            rates = None
            if args.epoch_minutes is not None:
                rates = D.given_rates(
                    args.epoch_minutes, args.rdrop_cost, args.epochs or design.epochs
                )
            else:
                pilots = [p for d in args.pilot for p in D.load_results(d).values()]
                rates = D.measured_rates(pilots + list(results.values()), args.rdrop_cost)
            print_dry_run(design, entries, results, rates, args.layout)
            return 0
        if not args.pin:
            parser.error("--pin COMMIT is required to run cells (a dry run needs none)")
        checkout, commit = pinned_checkout(CR.ROOT, args.pin)
        D.check_commits(results, commit)
        processes = LAYOUTS[args.layout][0]
        if processes > 1 and CR.worker()[1] == 1:
            # The children get the resolved commit: a --pin HEAD must not move under them.
            child = [*(argv if argv is not None else sys.argv[1:]), "--pin", commit]
            return CR.spawn_workers(None, child, processes, module=__spec__.name, cwd=CR.ROOT)
        runner = Runner(
            design,
            checkout,
            commit,
            args.results,
            layout=args.layout,
            commit_results=args.commit_results,
        )
        runner.library()
        CR.log(f"design v3: results in {args.results}; commit {commit}; layout {args.layout}")

        def plan() -> list[D.Entry]:
            D.check_commits(D.load_results(args.results), commit)  # another runner's cells too
            return D.plan(design, args.results)

        outcome = CR.run_cells(
            plan,
            args.results,
            lambda entry, fresh, env: runner.run_cell(entry),
            selected=lambda entries: CR.selected_ids(entries, args.only),
            max_cells=args.max_cells,
            describe=describe,
            summarize=summarize,
            env=runner.library,
        )
    except D.DesignError as error:
        print(f"run_v3: {error}", file=sys.stderr)
        return 2
    return 1 if outcome["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
