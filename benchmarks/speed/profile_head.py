"""The torch profiler's operator table of head steps (see steps.py), one text file per step.

    python3 benchmarks/speed/profile_head.py                      # fused GP/EGP rdrop, L=64, 128
    python3 benchmarks/speed/profile_head.py --lengths 128 --heads global_pointer --impls fused \
        reference --modes rdrop headloss

Each file in ``profiles/`` holds the command, the code's commit, the load, the step's median
time outside the profiler, and the operator table (self CPU time, sorted) over ``--steps``
profiled steps after warm-up. Self times are per operator; ``CPU total`` includes children
(e.g. ``_SpanLosses`` is the whole blocked forward of the losses).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see bench_head.py

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

import measure  # noqa: E402
from steps import Config, implementation  # noqa: E402

PROFILES = Path(__file__).resolve().parent / "profiles"


def profile_step(cfg: Config, impl: str, steps: int, warmup: int, rows: int) -> str:
    step = implementation(cfg, impl)
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)
    return (
        f"median step outside the profiler: {statistics.median(times) * 1e3:.1f} ms "
        f"({steps} steps); table: {steps} profiled steps\n\n{table}\n"
    )


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--lengths", type=int, nargs="+", default=[64, 128])
    p.add_argument("--hidden", type=int, nargs="+", default=[768])
    p.add_argument("--heads", nargs="+", default=["global_pointer", "efficient_global_pointer"])
    p.add_argument("--modes", nargs="+", default=["rdrop"])
    p.add_argument("--impls", nargs="+", default=["fused"])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rows", type=int, default=45, help="operators listed")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--tag", default="", help="suffix of the file names (e.g. 'before')")
    p.add_argument("--out", type=Path, default=PROFILES)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    header = measure.run_header("profile")
    m, src = header["machine"], header["source"]
    for length in args.lengths:
        for hidden in args.hidden:
            for head in args.heads:
                for mode in args.modes:
                    cfg = Config(head=head, mode=mode, hidden=hidden, length=length)
                    for impl in args.impls:
                        load = os.getloadavg()[0]
                        body = profile_step(cfg, impl, args.steps, args.warmup, args.rows)
                        tag = f"-{args.tag}" if args.tag else ""
                        path = args.out / f"{cfg.key()}-{impl}{tag}.txt"
                        path.parent.mkdir(parents=True, exist_ok=True)
                        path.write_text(
                            f"# {cfg.key()}, implementation {impl}, B={cfg.batch}, "
                            f"C={cfg.types}, D={cfg.head_size}\n"
                            f"# command: {header['command']}\n"
                            f"# commit {src.get('commit', '?')}"
                            + (" with uncommitted src changes" if src.get("src_dirty") else "")
                            + f"; {time.strftime('%Y-%m-%d %H:%M:%S')}; {m['cpu']}, "
                            f"{m['torch_threads']} threads, torch {m['torch']}, "
                            f"OMP_WAIT_POLICY={header['omp_wait_policy']}; "
                            f"1-minute load average {load:.2f} on {m['cores']} cores\n" + body
                        )
                        print(path, body.splitlines()[0], flush=True)


if __name__ == "__main__":
    main()
