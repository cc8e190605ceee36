"""Timing and peak-memory measurement helpers shared by the speed benchmarks.

Timing: implementations of one configuration run side by side in one process, after warm-up,
interleaved repeat by repeat (the order rotates), so machine load hits them alike; the result is
the median and the interquartile range of the per-step wall times.

Memory: each (configuration, implementation) runs in a fresh subprocess; after warm-up the
allocator's free memory is returned to the OS (``malloc_trim``), the peak-RSS mark is reset
(``/proc/self/clear_refs``), and the peak of one more step is ``VmHWM - VmRSS(before)``.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from gpner.atomic import atomic_write_json

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent  # the repository


def _status_kib(key: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{key}:\s+(\d+)\s+kB", text, re.M).group(1))


def release_free_memory() -> None:
    gc.collect()
    with contextlib.suppress(OSError):  # not glibc: nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def peak_step_bytes(step: Callable[[], object], warmup: int = 2) -> dict:
    """Peak resident memory of one ``step()`` above the resident memory just before it."""
    for _ in range(warmup):
        step()
    release_free_memory()
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current VmRSS
    before = _status_kib("VmRSS")
    step()
    peak = _status_kib("VmHWM")
    return {"peak_bytes": (peak - before) * 1024, "baseline_bytes": before * 1024}


def time_side_by_side(
    steps: dict[str, Callable[[], object]],
    repeats: int,
    warmup: int,
    cpu: dict[str, list[float]] | None = None,
) -> dict[str, list[float]]:
    """Per-step wall times of each implementation, interleaved with a rotating order.

    ``cpu``, when given, receives the per-step CPU times of this process (all its threads) in
    the same order: less disturbed than wall time by other jobs on a shared machine, though
    blind to how well a step uses its threads.
    """
    names = list(steps)
    for name in names:
        for _ in range(warmup):
            steps[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    if cpu is not None:
        cpu.update({name: [] for name in names})
    for rep in range(repeats):
        order = names[rep % len(names) :] + names[: rep % len(names)]
        for name in order:
            start, start_cpu = time.perf_counter(), time.process_time()
            steps[name]()
            times[name].append(time.perf_counter() - start)
            if cpu is not None:
                cpu[name].append(time.process_time() - start_cpu)
    return times


def summary(samples: list[float]) -> dict:
    q = statistics.quantiles(samples, n=4) if len(samples) >= 2 else [samples[0]] * 3
    return {
        "median_s": statistics.median(samples),
        "q1_s": q[0],
        "q3_s": q[2],
        "min_s": min(samples),
        "repeats": len(samples),
        "samples_s": samples,
    }


def run_child(module: str, payload: dict, timeout: float = 3600) -> dict:
    """Run ``python -m benchmarks.speed.<module> --child '<json>'`` in a fresh process from the
    repository root; parse its last line."""
    cmd = [sys.executable, "-m", f"benchmarks.speed.{module}", "--child", json.dumps(payload)]
    env = dict(os.environ)
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=HERE.parents[1]
    )
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def machine() -> dict:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = 0
    with contextlib.suppress(OSError, AttributeError):
        mem = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
    return {
        "cpu": cpu or platform.processor(),
        "cores": os.cpu_count(),
        "memory_gib": round(mem / 2**20, 1),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "python": platform.python_version(),
    }


def source_state() -> dict:
    """The commit and whether gpner's sources differ from it (and where gpner was imported)."""
    import gpner

    root = HERE.parent.parent
    path = Path(gpner.__file__).parent
    if path.is_relative_to(root):  # this checkout's tree: say which, not where it lives
        path = path.relative_to(root)
    out = {"gpner_path": str(path)}
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        out["commit"] = subprocess.check_output(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"], text=True
        ).strip()
        # The tree of src/gpner names the measured code across rebases (commit ids change when
        # a branch lands; the tree id stays while the sources do).
        out["src_tree"] = subprocess.check_output(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD:src/gpner"], text=True
        ).strip()
        diff = subprocess.check_output(
            ["git", "-C", str(root), "diff", "--stat", "HEAD", "--", "src"], text=True
        )
        out["src_dirty"] = bool(diff.strip())
    return out


def export_source(commit: str, into: Path) -> dict:
    """``src/gpner`` of ``commit`` written under ``into`` (``git archive``); where it is and which
    commit it is (full and short hash)."""
    root = HERE.parent.parent
    full = subprocess.check_output(
        ["git", "-C", str(root), "rev-parse", "--verify", f"{commit}^{{commit}}"], text=True
    ).strip()
    archive = subprocess.run(
        ["git", "-C", str(root), "archive", full, "src/gpner"], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return {"commit": full, "short": full[:7], "src": str(into / "src")}


def command_line() -> str:
    """This process's command as typed from the repository root: ``python3 -m package.module``
    for a module run with ``-m`` (no path of this machine), else ``python3 script args``."""
    script = Path(sys.argv[0])
    args = [shlex.quote(a) for a in sys.argv[1:]]
    try:
        module = script.resolve().relative_to(ROOT).with_suffix("")
    except ValueError:
        return "python3 " + " ".join([shlex.quote(sys.argv[0]), *args])
    return "python3 -m " + " ".join([".".join(module.parts), *args])


def run_header(benchmark: str) -> dict:
    """What every results file starts with: the benchmark, its command line, machine, OpenMP
    wait policy, source state and start time."""
    return {
        "benchmark": benchmark,
        "command": command_line(),
        "machine": machine(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "source": source_state(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def write_json(path: Path, data: dict) -> None:
    atomic_write_json(path, data, ensure_ascii=True)
