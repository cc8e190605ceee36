"""Speed and memory of the GlobalPointer head + loss (+ R-Drop divergence): gpner vs typical code.

For each configuration (head, mode, hidden size, length, optional max width) every
implementation (see steps.py) is timed side by side in this process, and its peak memory is
measured in a fresh subprocess. Results go to a JSON file, rewritten after every configuration,
so a long run can be read (or rendered with make_results.py) while it continues.

    python3 -m benchmarks.speed.bench_head --quick            # small shapes, a minute or two
    nohup nice -n 5 python3 -m benchmarks.speed.bench_head > benchmarks/speed/head.log 2>&1 &
    python3 -m benchmarks.speed.make_results                  # RESULTS.md from the JSON files

The default (full) run: B=16, C=10, D=64, hidden 768 and 256, L in {32, 64, 128, 256, 512},
both heads, modes headloss / rdrop for every implementation and rdrop_nokl for gpner's; then the
band (max_width=32) at L=512 and 2048. Every configuration also times the projection-shaped GEMM
of roofline.py in its rounds: each row gets its necessary FLOPs, its floor at that rate and its
time as a multiple of the floor. With ``--baseline SRC`` the fused path of another source tree
runs next to the current one. It takes about an hour on 2 cores.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path

# On a shared 2-core machine OpenMP's spin-waiting turns every parallel region into a scheduler
# quantum whenever another process holds a core; passive waiting keeps timings meaningful for
# every implementation alike. Set before torch starts its thread pool; recorded in the results.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from benchmarks.speed import measure, roofline  # noqa: E402
from benchmarks.speed.steps import Config, implementation, make_inputs, parity  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
IMPLS = ("reference", "logits", "fused")


def child(payload: dict) -> dict:
    """Peak memory of one implementation on one configuration (runs in a fresh process)."""
    torch.set_num_threads(payload["threads"])
    cfg = Config(**payload["config"])
    step = implementation(cfg, payload["impl"], baseline=payload.get("baseline"))
    return measure.peak_step_bytes(step, warmup=payload.get("warmup", 2))


def plan(args) -> list[tuple[Config, tuple[str, ...]]]:
    """(configuration, implementations) in run order: cheap and important first."""
    out = []
    for length in args.lengths:
        for hidden in args.hidden:
            for head in args.heads:
                for mode in args.modes:
                    impls = tuple(args.impls)
                    if length in args.compiled_lengths:
                        impls += ("fused_compiled",)
                    if mode == "rdrop_nokl":
                        impls = tuple(i for i in impls if i != "reference")
                    if args.baseline:
                        impls += ("fused_baseline",)
                    if not args.no_roofline:
                        impls += ("gemm",)
                    cfg = Config(
                        head=head,
                        mode=mode,
                        hidden=hidden,
                        length=length,
                        batch=args.batch,
                        types=args.types,
                        head_size=args.head_size,
                    )
                    out.append((cfg, impls))
    for length in args.band_lengths:
        for head in args.heads:
            cfg = Config(
                head=head,
                mode="rdrop",
                hidden=args.hidden[0],
                length=length,
                batch=args.batch,
                types=args.types,
                head_size=args.head_size,
            )
            banded = dataclasses.replace(cfg, max_width=args.band_width)
            extra = ("fused_baseline",) if args.baseline else ()
            extra += () if args.no_roofline else ("gemm",)
            if length not in args.lengths or "rdrop" not in args.modes:  # else already run
                full_impls = ("fused",) if length > args.reference_max_length else IMPLS
                out.append((cfg, full_impls + extra))
            out.append((banded, ("fused", "logits") + extra))
    return out


def divergence_plan(args) -> list[tuple[Config, tuple[str, ...]]]:
    """Per (length, hidden, head): headloss, rdrop_nokl and rdrop of each gpner implementation,
    interleaved in one session (the divergence's cost is a difference of these times)."""
    out = []
    for length in args.lengths:
        for hidden in args.hidden:
            for head in args.heads:
                cfg = Config(
                    head=head,
                    mode="rdrop",
                    hidden=hidden,
                    length=length,
                    batch=args.batch,
                    types=args.types,
                    head_size=args.head_size,
                )
                impls = [i for i in args.impls if i != "reference"]
                if length in args.compiled_lengths:
                    impls.append("fused_compiled")
                modes = ("headloss", "rdrop_nokl", "rdrop")
                out.append((cfg, tuple(f"{i}@{m}" for i in impls for m in modes)))
    return out


def roofline_fields(cfg: Config, impl: str, median_s: float, gemm_rate: float | None) -> dict:
    """Necessary FLOPs of the row's step, its floor at the GEMM rate, and time / floor."""
    if impl == "gemm":
        return {}
    mask = make_inputs(cfg).attention_mask
    flops = roofline.step_flops(
        cfg.head, cfg.mode, cfg.hidden, cfg.types, cfg.head_size, mask, cfg.max_width
    )
    out = {"flops": flops}
    if gemm_rate:
        out["floor_s"] = flops["total"] / gemm_rate
        out["x_floor"] = median_s / out["floor_s"]
    return out


def run_config(cfg: Config, impls: tuple[str, ...], args) -> list[dict]:
    rows = []
    if cfg.max_width is None and "reference" in impls:
        small = dataclasses.replace(cfg, batch=2, length=min(cfg.length, 64))
        check = parity(small, baseline=args.baseline if "fused_baseline" in impls else None)
        spread = max(check.values()) - min(check.values())
        if spread > 1e-3 * max(abs(v) for v in check.values()):
            raise RuntimeError(f"implementations disagree on {cfg.key()}: {check}")
    steps = {name: implementation(cfg, name, baseline=args.baseline) for name in impls}
    first = {}
    for name, step in steps.items():  # the first call includes any compilation
        start = time.perf_counter()
        step()
        first[name] = time.perf_counter() - start
    cpu: dict[str, list[float]] = {}
    times = measure.time_side_by_side(steps, args.repeats, args.warmup, cpu)
    del steps
    gemm_rate = None
    if "gemm" in times:
        gemm_s = measure.summary(times["gemm"])["median_s"]
        gemm_rate = (
            roofline.gemm_flops(cfg.batch, cfg.length, cfg.hidden, cfg.types, cfg.head_size)
            / gemm_s
        )
    for name in impls:
        row = {"config": dataclasses.asdict(cfg), "key": cfg.key(), "impl": name}
        if "@" in name:
            row["impl"], row["config"]["mode"] = name.split("@")
            row["key"] = Config(**row["config"]).key()
        row["loadavg"] = os.getloadavg()[0]
        row["unit_bytes"] = cfg.cells_bytes
        row.update(measure.summary(times[name]))
        row["cpu"] = measure.summary(cpu[name])
        row["first_call_s"] = first[name]
        if gemm_rate:
            row["gemm_flops_per_s"] = gemm_rate
        row.update(
            roofline_fields(Config(**row["config"]), row["impl"], row["median_s"], gemm_rate)
        )
        if not args.no_memory and name != "gemm":
            payload = {
                "config": dataclasses.asdict(cfg),
                "impl": name,
                "threads": args.threads,
                "baseline": args.baseline,
            }
            mem = measure.run_child("bench_head", payload)
            row.update(mem)
            if "peak_bytes" in mem:
                row["peak_units"] = mem["peak_bytes"] / cfg.cells_bytes
        rows.append(row)
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--quick", action="store_true", help="small shapes and few repeats")
    p.add_argument("--lengths", type=int, nargs="+", default=[32, 64, 128, 256, 512])
    p.add_argument("--hidden", type=int, nargs="+", default=[768, 256])
    p.add_argument("--heads", nargs="+", default=["global_pointer", "efficient_global_pointer"])
    p.add_argument("--modes", nargs="+", default=["headloss", "rdrop", "rdrop_nokl"])
    p.add_argument("--impls", nargs="+", default=list(IMPLS))
    p.add_argument("--band-lengths", type=int, nargs="*", default=[512, 2048])
    p.add_argument("--band-width", type=int, default=32)
    p.add_argument(
        "--compiled-lengths",
        type=int,
        nargs="*",
        default=[512],
        help="lengths that also run fused_compiled (backends.compiled_kernels; compiles ~30 s)",
    )
    p.add_argument(
        "--reference-max-length",
        type=int,
        default=512,
        help="longer configs skip the dense implementations (they need ~14 x 2.7 GB)",
    )
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--types", type=int, default=10)
    p.add_argument("--head-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--no-memory", action="store_true")
    p.add_argument(
        "--no-roofline",
        action="store_true",
        help="do not time the projection-shaped GEMM that sets each row's floor",
    )
    p.add_argument(
        "--baseline",
        metavar="COMMIT",
        help="a git commit (e.g. the one a change started from): its src/gpner is exported to a "
        "temporary directory and its fused path runs side by side as fused_baseline",
    )
    p.add_argument(
        "--divergence",
        action="store_true",
        help="only time headloss / rdrop_nokl / rdrop of gpner's implementations side by side "
        "(results/divergence.json; no memory)",
    )
    p.add_argument("--out", type=Path, default=RESULTS / "head.json")
    p.add_argument(
        "--merge",
        action="store_true",
        help="add this run to an existing --out file: its rows replace the rows of the same "
        "configurations, the others are kept; the file lists every run "
        "(command, code, times) and each row names its run (split a long benchmark into runs)",
    )
    p.add_argument(
        "--fill-memory",
        metavar="JSON",
        type=Path,
        help="measure again the peak memory of the rows of a results file whose memory "
        "subprocess failed (same procedure; the file records which rows and when)",
    )
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    if args.fill_memory:
        fill_memory(args.fill_memory, args)
        return
    if args.divergence:
        args.no_memory = True
        if args.out == RESULTS / "head.json":
            args.out = RESULTS / "divergence.json"
    if args.quick:
        args.lengths, args.hidden, args.band_lengths = [64, 128], [256], [256]
        args.compiled_lengths = [128] if 512 in args.compiled_lengths else args.compiled_lengths
        args.repeats, args.warmup, args.band_width = max(3, min(args.repeats, 3)), 1, 16
        if args.out in (RESULTS / "head.json", RESULTS / "divergence.json"):
            args.out = args.out.with_name(args.out.stem + "_quick.json")
    torch.set_num_threads(args.threads)
    data = {
        **measure.run_header("head"),
        "repeats": args.repeats,
        "warmup": args.warmup,
        "rows": [],
    }
    with contextlib.ExitStack() as stack:
        if args.baseline:
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="gpner-baseline-"))
            data["baseline"] = measure.export_source(args.baseline, Path(tmp))
            args.baseline = data["baseline"]["src"]
        if args.merge and args.out.exists():
            data = merge_start(json.loads(args.out.read_text()), data)
        run_plan(args, data)


RUN_FIELDS = ("command", "source", "started", "finished", "baseline", "repeats", "warmup")


def merge_start(old: dict, new: dict) -> dict:
    """The file's data with ``new`` (a fresh run header, no rows yet) as its latest run."""
    if old.get("machine") != new["machine"]:
        raise SystemExit(f"--merge: results measured on another machine: {old.get('machine')}")
    if "runs" not in old:  # a single-run file: its header is run 0
        old["runs"] = [{k: old[k] for k in RUN_FIELDS if k in old}]
        for row in old["rows"]:
            row["run"] = 0
    run = {k: new[k] for k in RUN_FIELDS if k in new}
    old["runs"].append(run)
    old.update({k: v for k, v in run.items() if k != "finished"})
    return old


def fill_memory(path: Path, args) -> None:
    """Peak memory of the rows whose memory subprocess failed, measured as run_config does."""
    data = json.loads(path.read_text())
    with contextlib.ExitStack() as stack:
        baseline = None
        if data.get("baseline"):
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="gpner-baseline-"))
            baseline = measure.export_source(data["baseline"]["commit"], Path(tmp))["src"]
        filled = []
        for row in data["rows"]:
            if "error" not in row or row["impl"] == "gemm":
                continue
            payload = {
                "config": row["config"],
                "impl": row["impl"],
                "threads": data["machine"]["torch_threads"],
                "baseline": baseline,
            }
            mem = measure.run_child("bench_head", payload)
            if "peak_bytes" not in mem:
                print(f"{row['key']} {row['impl']}: {mem}", flush=True)
                continue
            del row["error"]
            row.update(mem)
            row["peak_units"] = mem["peak_bytes"] / Config(**row["config"]).cells_bytes
            row["memory_filled"] = time.strftime("%Y-%m-%d %H:%M:%S")
            filled.append(f"{row['key']} {row['impl']}")
            print(f"{row['key']} {row['impl']}: {row['peak_units']:.2f} units", flush=True)
    if filled:
        data.setdefault("notes", []).append(
            f"Peak memory of {len(filled)} rows measured again on "
            f"{time.strftime('%Y-%m-%d %H:%M')} (their first memory subprocess had failed): "
            + "; ".join(filled)
            + f"; command: `{measure.run_header('head')['command']}`."
        )
        measure.write_json(path, data)


def run_plan(args, data: dict) -> None:
    for cfg, impls in divergence_plan(args) if args.divergence else plan(args):
        start = time.perf_counter()
        rows = run_config(cfg, impls, args)
        if "runs" in data:  # --merge: these rows replace the earlier runs' of the same config
            run = len(data["runs"]) - 1
            for row in rows:
                row["run"] = run
            new = {r["key"] for r in rows}
            data["rows"] = [r for r in data["rows"] if r["key"] not in new]
            data["runs"][-1]["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
        data["rows"].extend(rows)
        data["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
        measure.write_json(args.out, data)
        line = "  ".join(
            f"{r['impl']} {r['median_s']:.3f}s/{r.get('peak_units', float('nan')):.2f}u"
            for r in rows
        )
        print(f"{cfg.key():55s} {line}   ({time.perf_counter() - start:.0f}s)", flush=True)


if __name__ == "__main__":
    main()
