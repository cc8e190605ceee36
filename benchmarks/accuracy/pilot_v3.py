"""Pilot of design v3 (issue 30): what one epoch of a cell costs on this machine, for a plain and
an R-Drop cell, as one 2-thread process (layout ``1x2``) or as two 1-thread processes side by
side (``2x1``). From the repository root::

    PYTHONPATH=src python3 -m benchmarks.accuracy.pilot_v3 --steps 60 --repeats 2

Each run is the v3 cell's own ``gpner train`` (the design's config and overrides, seed 101),
one epoch capped at ``--steps`` steps, validation on the design's 10 % split. An epoch's time is
extrapolated from the run's training rate to the full epoch's steps, plus the run's validation
time; cell-epochs per hour of a layout = processes x 60 / epoch minutes. Writes
``results-v3/pilot.json``; its minutes per plain epoch and R-Drop cost are what
``run_v3 --dry-run --epoch-minutes M --rdrop-cost R`` takes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import cellrunner as CR
from benchmarks.accuracy import design_v3 as D
from gpner.atomic import atomic_write_json

KINDS = {"plain": D.Cell("search", "baseline", 101), "rdrop": D.Cell("search", "rdrop-gp_kl", 101)}


def _command(cell: D.Cell, steps: int, threads: int, out: Path) -> list[str]:
    sets = D.overrides(D.V3, cell, 1 / 64 if cell.kind == "rdrop" else None)
    sets += ["train.epochs=1"]
    sets += [f"train.max_steps_per_epoch={steps}", "train.progress=false"]
    sets += [f"train.num_threads={threads}"]
    argv = [sys.executable, "-m", "gpner", "train", D.V3.base_config, "--output-dir", str(out)]
    for item in sets:
        argv += ["--set", item]
    return argv


def _epoch(out: Path, full_steps: int) -> dict:
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    train = record["seconds"] * full_steps / record["steps"]
    return {
        "steps": record["steps"],
        "train_seconds": record["seconds"],
        "eval_seconds": record["eval_seconds"],
        "epoch_minutes": (train + record["eval_seconds"]) / 60,
    }


def run(layout: str, kind: str, steps: int, full_steps: int, tmp: Path) -> dict:
    processes, threads = (1, 2) if layout == "1x2" else (2, 1)
    env = {**os.environ, "PYTHONPATH": str(CR.ROOT / "src")}
    outs = [tmp / f"{layout}-{kind}-{k}-{time.monotonic_ns()}" for k in range(processes)]
    procs = [
        subprocess.Popen(_command(KINDS[kind], steps, threads, o), env=env, cwd=CR.ROOT,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for o in outs
    ]  # fmt: skip
    for p in procs:
        _, err = p.communicate()
        if p.returncode:
            raise SystemExit(f"pilot run failed:\n{err[-2000:]}")
    epochs = [_epoch(o, full_steps) for o in outs]
    minutes = statistics.mean(e["epoch_minutes"] for e in epochs)
    return {
        "layout": layout,
        "kind": kind,
        "processes": epochs,
        "epoch_minutes": minutes,
        "cell_epochs_per_hour": processes * 60 / minutes,
        "loadavg": os.getloadavg()[0],
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", type=Path, default=D.DEFAULT_RESULTS / "pilot.json")
    p.add_argument("--machine", default="not recorded", help="what else ran meanwhile")
    args = p.parse_args(argv)
    # the design's training split: 90 % of CLUENER train (10,748 texts), batch 32
    full_steps = math.ceil(round(10748 * 0.9) / 32)
    data = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "steps": args.steps,
        "full_steps": full_steps,
        "environment": CR.environment(CR.ROOT),
        "machine": args.machine,
        "runs": [],
    }
    with tempfile.TemporaryDirectory(prefix="gpner-pilot-") as tmp:
        for rep in range(args.repeats):
            order = [(l, k) for l in ("1x2", "2x1") for k in ("plain", "rdrop")]
            for layout, kind in order[rep % 2 :] + order[: rep % 2]:
                r = run(layout, kind, args.steps, full_steps, Path(tmp))
                data["runs"].append(r)
                print(f"{layout} {kind}: {r['epoch_minutes']:.2f} min/epoch per process, "
                      f"{r['cell_epochs_per_hour']:.0f} cell-epochs/h (load {r['loadavg']:.1f})",
                      flush=True)  # fmt: skip
                atomic_write_json(args.out, data)
    summary = {}
    for layout in ("1x2", "2x1"):
        for kind in ("plain", "rdrop"):
            rows = [r for r in data["runs"] if r["layout"] == layout and r["kind"] == kind]
            summary[f"{layout}/{kind}"] = {
                "epoch_minutes": statistics.median(r["epoch_minutes"] for r in rows),
                "cell_epochs_per_hour": statistics.median(r["cell_epochs_per_hour"] for r in rows),
            }
    for layout in ("1x2", "2x1"):
        s = summary
        s[f"{layout}/rdrop_cost"] = (
            s[f"{layout}/rdrop"]["epoch_minutes"] / s[f"{layout}/plain"]["epoch_minutes"]
        )
    data["summary"] = summary
    data["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    atomic_write_json(args.out, data)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
