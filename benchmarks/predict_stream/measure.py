"""Peak memory of streaming ``gpner predict`` as the input grows (issue 19).

    python3 -m benchmarks.predict_stream.measure [--sizes 1000 100000 1000000] [--chunk-size 1024]
    python3 -m benchmarks.predict_stream.make_results

Trains a tiny char-Transformer model for 8 epochs on 200 synthetic sentences (seconds), writes input
files of the given numbers of lines (short Chinese sentences, every 50th line empty), and runs
``python -m gpner predict MODEL INPUT -o OUT --no-progress`` on each in a fresh process. The peak
resident set size of that process comes from ``os.wait4`` (the kernel's ``ru_maxrss`` of exactly
that child), with its wall and CPU time. Each output is checked: one record per input line, each
with its line's text. Results go to ``results/memory.json``; ``make_results.py`` renders
``RESULTS.md`` from it. The prediction processes run with ``OMP_NUM_THREADS=1`` (this is a memory
measurement; one thread keeps a shared machine's load out of it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SRC = ROOT / "src"

PEOPLE = ["张三", "李四", "王小明", "赵敏", "刘备", "诸葛亮", "马化腾"]
PLACES = ["北京", "上海", "广州", "深圳", "杭州", "成都", "南京"]
TEMPLATES = ["{p}在{l}工作。", "{p}去了{l}。", "{l}大学的{p}来了", "昨天{p}说{l}很好"]


def sentence(rng: random.Random) -> tuple[str, list[dict]]:
    p, l = rng.choice(PEOPLE), rng.choice(PLACES)
    text = rng.choice(TEMPLATES).format(p=p, l=l)
    spans = [
        {"start": text.index(p), "end": text.index(p) + len(p), "label": "PER"},
        {"start": text.index(l), "end": text.index(l) + len(l), "label": "LOC"},
    ]
    return text, spans


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}


def train_tiny(work: Path) -> str:
    rng = random.Random(0)
    for name, n in (("train", 200), ("dev", 40)):
        with open(work / f"{name}.jsonl", "w", encoding="utf-8") as f:
            for _ in range(n):
                text, spans = sentence(rng)
                f.write(json.dumps({"text": text, "spans": spans}, ensure_ascii=False) + "\n")
    sets = {
        "data.train": f'"{work / "train.jsonl"}"',
        "data.dev": f'"{work / "dev.jsonl"}"',
        "data.max_length": 32,
        "encoder.hidden_size": 32,
        "encoder.num_layers": 1,
        "encoder.num_heads": 2,
        "encoder.ffn_size": 64,
        "head.head_size": 16,
        "train.epochs": 8,
        "train.lr": 5e-3,
        "train.batch_size": 16,
        "train.progress": "false",
        "train.num_threads": 1,
        "output_dir": f'"{work / "run"}"',
    }
    argv = [sys.executable, "-m", "gpner", "train"]
    for key, value in sets.items():
        argv += ["--set", f"{key}={value}"]
    out = subprocess.run(argv, env=env(), check=True, capture_output=True, text=True).stdout
    return json.loads(out.splitlines()[-1])["checkpoint"]


def write_input(path: Path, lines: int) -> None:
    rng = random.Random(lines)
    with open(path, "w", encoding="utf-8") as f:
        for k in range(lines):
            f.write(("" if k % 50 == 0 else sentence(rng)[0]) + "\n")


def check_output(source: Path, output: Path) -> int:
    n = 0
    with open(source, encoding="utf-8") as a, open(output, encoding="utf-8") as b:
        for n, (line, record) in enumerate(zip(a, b), 1):  # noqa: B007
            if json.loads(record)["text"] != line.rstrip("\n"):
                raise AssertionError(f"{output}:{n}: not the record of input line {n}")
        if next(a, None) is not None or next(b, None) is not None:
            raise AssertionError(f"{output}: not one record per line of {source}")
    return n


def run_predict(checkpoint: str, source: Path, output: Path, chunk_size: int) -> dict:
    argv = [sys.executable, "-m", "gpner", "predict", checkpoint, str(source), "-o", str(output)]
    argv += ["--no-progress", "--chunk-size", str(chunk_size)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, env=env(), stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode()
    if proc.returncode != 0:
        raise RuntimeError(f"predict failed ({proc.returncode}): {err}")
    return {
        "command": " ".join(argv[1:]).replace(str(source.parent), "WORK"),
        "peak_rss_bytes": usage.ru_maxrss * 1024,  # Linux reports KiB
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 100_000, 1_000_000])
    parser.add_argument("--chunk-size", type=int, default=1024)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "memory.json")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="gpner-stream-") as tmp:
        work = Path(tmp)
        checkpoint = train_tiny(work)
        for lines in args.sizes:
            source, output = work / f"in{lines}.txt", work / f"out{lines}.jsonl"
            write_input(source, lines)
            row = {"lines": lines, "input_bytes": source.stat().st_size}
            row.update(run_predict(checkpoint, source, output, args.chunk_size))
            row["records_checked"] = check_output(source, output)
            row["output_bytes"] = output.stat().st_size
            rows.append(row)
            print(json.dumps(row), flush=True)
            source.unlink()
            output.unlink()
    import torch

    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    result = {
        "benchmark": "predict_stream",
        "chunk_size": args.chunk_size,
        "model": "char Transformer, hidden 32, 1 layer, head size 16, 2 labels, 8 epochs",
        "threads": 1,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "commit": commit,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
