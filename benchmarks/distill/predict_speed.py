#!/usr/bin/env python3
"""Prediction speed of the distillation benchmark's teacher and students, side by side.

    nice python3 -m benchmarks.distill.predict_speed   # -> results/speed.json (report.py reads)

Runs ``benchmarks/speed/bench_predict.py``'s measurement (``bench_model``: the whole predict
pipeline on CLUENER dev at batch 32 and 1, torch and every onnxruntime form, with each form's dev
F1) on the teacher (``models/teacher``) and the seed-1 final student of each KD term and of the
from-scratch student, in one run, so the ratios compare like with like. A model not trained yet
is left out (and named in the JSON).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

from benchmarks.distill import distill_cells as G  # noqa: E402

HERE = Path(__file__).resolve().parent

SPEED = G.DEFAULT_RESULTS / "speed.json"


def models() -> dict[str, Path]:
    """Name -> kept model directory: the teacher and every seed-1 final student."""
    out = {"teacher": G.TEACHER_DIR}
    for term in ("scratch", *G.TERMS):
        out[f"student-{term}"] = G.MODELS / G.Cell("final", term).stem
    return out


def main(argv=None) -> int:
    import torch

    from benchmarks.speed import bench_predict as BP
    from gpner.data.paths import resolve
    from gpner.data.readers import read

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="default: torch's thread count")
    p.add_argument("--batch1-texts", type=int, default=None, help="texts at batch 1 (default all)")
    p.add_argument("--batch32-texts", type=int, default=None)
    p.add_argument("--fp32-budget", type=int, default=1, help="products -int8-cal keeps fp32")
    p.add_argument("--calibrate-texts", type=int, default=1024)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.threads = torch.get_num_threads()
    dev = read(resolve("cluener/dev.json"))
    calibration = [ex.text for ex in read(resolve("cluener/train.json"))[: args.calibrate_texts]]
    found = {k: v for k, v in models().items() if (v / "gpner.json").is_file()}
    data = {
        "started_at": G.CR.now(),
        "environment": G.CR.run_environment(),
        "threads": args.threads,
        "repeats": args.repeats,
        "dev_texts": len(dev),
        "missing": sorted(set(models()) - set(found)),
        "models": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name, directory in found.items():
            data["models"].append(
                BP.bench_model(name, str(directory), dev, calibration, args, Path(tmp))
            )
    data["finished_at"] = G.CR.now()
    from gpner.atomic import atomic_write_json

    atomic_write_json(SPEED, data)
    print(f"wrote {SPEED}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
