#!/usr/bin/env python3
"""Which from-scratch model learns CLUENER fastest: one JSON per variant, a generated table.

    python3 benchmarks/recipes/explore.py --list              # the variants and their status
    nice -n 5 python3 benchmarks/recipes/explore.py tf bilstm # train these (1 thread each)
    python3 benchmarks/recipes/explore.py --report            # EXPLORE.md from explore/*.json

A variant is a base config plus ``--set`` overrides (``VARIANTS``). Every variant trains a fixed
number of epochs (the comparison is by dev F1 at that budget and by examples/s measured side by
side, two 1-thread processes at a time), on CLUENER train, evaluated on CLUENER dev every epoch.
A variant whose JSON exists with the same config is skipped; delete the JSON to redo it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
RESULTS = HERE / "explore"
REPORT = HERE / "EXPLORE.md"

# The budget every variant gets, and how it is run (threads per process).
COMMON = ["train.num_threads=1", "train.progress=false"]
TF = ["encoder.kind=char_transformer"]
LSTM = ["encoder.kind=bilstm", "encoder.num_layers=1"]
BIGRAMS = ["encoder.bigrams=true"]

# name -> (base config, overrides, why). The base is the main job's config as it was before
# this exploration (2-layer char Transformer, width 256, FFN 512, lr 2e-3, batch 32).
BASE = "benchmarks/recipes/explore_base.toml"
VARIANTS: dict[str, tuple[str, list[str], str]] = {
    "tf-256x2": (BASE, TF, "the main job's model before this exploration"),
    "tf-256x2-bigram": (BASE, TF + BIGRAMS, "+ char bigrams"),
    "tf-128x2": (BASE, TF + ["encoder.hidden_size=128", "encoder.ffn_size=256"], "narrower"),
    "tf-256x4": (BASE, TF + ["encoder.num_layers=4"], "deeper"),
    "tf-256x1": (BASE, TF + ["encoder.num_layers=1"], "shallower"),
    "lstm-256x1": (BASE, LSTM, "a BiLSTM instead"),
    "lstm-256x1-bigram": (BASE, LSTM + BIGRAMS, "BiLSTM + char bigrams"),
}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def variant_config(name: str):
    from gpner.config import load_config

    base, overrides, _ = VARIANTS[name]
    return load_config(ROOT / base, COMMON + overrides)


def _identity(config_dict: dict[str, Any]) -> dict[str, Any]:
    """The config minus what does not change the result (where it ran, progress bars)."""
    from gpner.config import config_from_dict, config_to_dict

    data = config_to_dict(config_from_dict(json.loads(json.dumps(config_dict))))
    data.pop("output_dir", None)
    data["train"].pop("progress", None)
    return data


def result_path(name: str) -> Path:
    return RESULTS / f"{name}.json"


def is_done(name: str) -> bool:
    from gpner.config import config_to_dict

    path = result_path(name)
    if not path.is_file():
        return False
    stored = json.loads(path.read_text(encoding="utf-8"))
    return _identity(stored["config"]) == _identity(config_to_dict(variant_config(name)))


def run(name: str) -> dict[str, Any]:
    import torch

    import gpner
    from gpner.config import config_to_dict
    from gpner.model import atomic_save  # noqa: F401  (imported: the code this run uses)
    from gpner.training import train

    config = variant_config(name)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix=f"explore-{name}-") as tmp:
        config.output_dir = tmp
        start = time.perf_counter()
        result = train(config)
        wall = time.perf_counter() - start
        model = gpner.load(Path(tmp) / "best.pt")
        params = sum(p.numel() for p in model.parameters())
    history = result.history
    return {
        "schema": 1,
        "variant": name,
        "why": VARIANTS[name][2],
        "base": VARIANTS[name][0],
        "overrides": VARIANTS[name][1],
        "config": config_to_dict(config),
        "parameters": params,
        "dev_f1_per_epoch": [h["dev"]["micro"]["f1"] for h in history],
        "best": {"f1": result.best_f1, "epoch": result.best_epoch},
        "best_micro": next(h for h in history if h["epoch"] == result.best_epoch)["dev"]["micro"],
        "train_seconds": sum(h["seconds"] for h in history),
        "eval_seconds": sum(h.get("eval_seconds", 0.0) for h in history),
        "wall_seconds": wall,
        "examples_per_second": sum(h["examples_per_second"] for h in history) / len(history),
        "history": history,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "finished_at": _now(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
    }


def report() -> str:
    rows = []
    for path in sorted(RESULTS.glob("*.json")):
        r = json.loads(path.read_text(encoding="utf-8"))
        rows.append(r)
    order = {name: k for k, name in enumerate(VARIANTS)}
    rows.sort(key=lambda r: order.get(r["variant"], len(order)))
    lines = [
        "# From-scratch CLUENER models: which learns fastest",
        "",
        "Generated by `python3 benchmarks/recipes/explore.py --report` from `explore/*.json`; "
        "rerun a variant with `nice -n 5 python3 benchmarks/recipes/explore.py NAME` (delete its "
        "JSON first). Every variant trains on CLUENER train with one torch thread per process, "
        "two processes side by side on 2 cores, and is scored on CLUENER dev after every epoch. "
        "Minutes are training time (evaluation excluded); examples/s is the mean over epochs.",
        "",
        "| variant | what | params | epochs | dev F1 per epoch | best dev F1 | train min | ex/s |",
        "|---|---|---:|---:|---|---:|---:|---:|",
    ]
    for r in rows:
        curve = " ".join(f"{f:.3f}" for f in r["dev_f1_per_epoch"])
        lines.append(
            f"| `{r['variant']}` | {r['why']} | {r['parameters'] / 1e6:.2f} M "
            f"| {r['config']['train']['epochs']} | {curve} | **{r['best']['f1']:.4f}** "
            f"| {r['train_seconds'] / 60:.1f} | {r['examples_per_second']:.0f} |"
        )
    lines += ["", "Overrides of each variant (on top of its base config):", ""]
    for r in rows:
        over = " ".join(f"`{o}`" for o in r["overrides"]) or "(none)"
        lines.append(f"- `{r['variant']}` ({r['base']}): {over}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("variants", nargs="*", help="variants to train (default: none)")
    parser.add_argument("--list", action="store_true", help="list the variants and their status")
    parser.add_argument("--report", action="store_true", help=f"write {REPORT.name}")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT / "src"))
    if args.list:
        for name in VARIANTS:
            print(f"{'done   ' if is_done(name) else 'pending'} {name}: {VARIANTS[name][2]}")
    unknown = [n for n in args.variants if n not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; known: {sorted(VARIANTS)}")
    for name in args.variants:
        if is_done(name):
            print(f"{name}: done (delete {result_path(name)} to redo it)")
            continue
        print(f"{name}: training", flush=True)
        result = run(name)
        RESULTS.mkdir(parents=True, exist_ok=True)
        tmp = result_path(name).with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, result_path(name))
        print(f"{name}: dev F1 {result['best']['f1']:.4f}", flush=True)
    if args.report:
        REPORT.write_text(report(), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
