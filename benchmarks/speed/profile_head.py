"""The torch profiler's operator table of head steps (see steps.py), one text file per step.

    python3 -m benchmarks.speed.profile_head                      # fused GP/EGP rdrop, L=64, 128
    python3 -m benchmarks.speed.profile_head --lengths 128 --heads global_pointer --impls fused \
        reference --modes rdrop headloss

Each file in ``profiles/`` holds the command, the code's commit, the load, the step's median
time outside the profiler, and the operator table (self CPU time, sorted) over ``--steps``
profiled steps after warm-up. Self times are per operator; ``CPU total`` includes children
(e.g. ``SpanLosses`` is the whole blocked forward of the losses). ``profiles/summary.json``
sums the self times by kind of work (see ``KINDS``) for make_results.py.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see bench_head.py

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from benchmarks.speed import measure  # noqa: E402
from benchmarks.speed.steps import Config, implementation  # noqa: E402

PROFILES = Path(__file__).resolve().parent / "profiles"
# Kinds of work by operator name, in a head step: the projections are the only mm/addmm, the
# cells' matmuls (scores, dq, dk; the reference's einsum) the only bmm, dropout's random mask
# is bernoulli_. Everything else (elementwise passes, RoPE, masks, reductions, bookkeeping) is
# "other".
KINDS = {
    "aten::mm": "projection GEMMs",
    "aten::addmm": "projection GEMMs",
    "aten::bmm": "cell matmuls",
    "aten::bernoulli_": "dropout mask",
}


def kinds(prof) -> dict[str, float]:
    """Self CPU seconds per kind of work (and "total")."""
    out: dict[str, float] = {"total": 0.0}
    for event in prof.key_averages():
        seconds = event.self_cpu_time_total / 1e6
        kind = KINDS.get(event.key, "other")
        out[kind] = out.get(kind, 0.0) + seconds
        out["total"] += seconds
    return out


def profile_step(
    cfg: Config, impl: str, steps: int, warmup: int, rows: int, baseline: str | None = None
) -> tuple[str, dict]:
    step = implementation(cfg, impl, baseline=baseline)
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
    text = (
        f"median step outside the profiler: {statistics.median(times) * 1e3:.1f} ms "
        f"({steps} steps); table: {steps} profiled steps\n\n{table}\n"
    )
    return text, {"median_step_s": statistics.median(times), "steps": steps, **kinds(prof)}


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
    p.add_argument(
        "--baseline",
        metavar="COMMIT",
        help="for the fused_baseline implementation: the commit whose src/gpner it runs",
    )
    p.add_argument("--out", type=Path, default=PROFILES)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    with contextlib.ExitStack() as stack:
        baseline = None
        if args.baseline:
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="gpner-baseline-"))
            baseline = measure.export_source(args.baseline, Path(tmp))
        run(args, baseline)


def run(args, baseline: dict | None) -> None:
    header = measure.run_header("profile")
    m, src = header["machine"], header["source"]
    summary_path = args.out / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    for length in args.lengths:
        for hidden in args.hidden:
            for head in args.heads:
                for mode in args.modes:
                    cfg = Config(head=head, mode=mode, hidden=hidden, length=length)
                    for impl in args.impls:
                        load = os.getloadavg()[0]
                        body, sums = profile_step(
                            cfg,
                            impl,
                            args.steps,
                            args.warmup,
                            args.rows,
                            baseline["src"] if baseline else None,
                        )
                        tag = f"-{args.tag}" if args.tag else ""
                        path = args.out / f"{cfg.key()}-{impl}{tag}.txt"
                        summary[path.stem] = {
                            "config": cfg.key(),
                            "impl": impl,
                            "tag": args.tag,
                            "commit": baseline["short"]
                            if baseline and impl == "fused_baseline"
                            else src.get("commit"),
                            "src_dirty": src.get("src_dirty"),
                            "loadavg": load,
                            "threads": m["torch_threads"],
                            "command": header["command"],
                            "when": time.strftime("%Y-%m-%d %H:%M:%S"),
                            "self_cpu_s": sums,
                        }
                        measure.write_json(summary_path, summary)
                        path.parent.mkdir(parents=True, exist_ok=True)
                        code = (
                            f"# fused_baseline runs commit {baseline['short']}\n"
                            if baseline and impl == "fused_baseline"
                            else ""
                        )
                        path.write_text(
                            code + f"# {cfg.key()}, implementation {impl}, B={cfg.batch}, "
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
