"""The training, step, parallel and profile sections of benchmarks/speed/RESULTS.md
(``bench_train.py``, ``bench_step.py``, ``profile_head.py``)."""

from __future__ import annotations

from benchmarks.speed.results_format import NAMES, fmt_s, mark, tree


def train_section(data: dict) -> list[str]:
    m = data["machine"]
    src = data.get("source", {})
    out = [
        "## Whole training step and prediction (benchmarks/speed/bench_train.py)",
        "",
        f"- Machine: {m['cpu']}, {m['cores']} cores; torch {m['torch']}, "
        f"{m['torch_threads']} threads, OMP_WAIT_POLICY={data.get('omp_wait_policy')}.",
        f"- Code: commit {src.get('commit', '?')}{tree(src)}"
        + (" with uncommitted src changes" if src.get("src_dirty") else "")
        + f"; run {data['started']} to {data.get('finished', '?')}.",
        f"- Command: `{data['command']}`",
        f"- {data['description']}",
        "",
    ]
    out += [
        "| objective | implementation | step (s) | vs plain (same implementation) | target "
        "| train tokens/s |",
        "|---|---|---|---|---|---|",
    ]
    targets = {"rdrop": 2.1, "vat": 3.2}
    for r in data["train_rows"]:
        base = next(
            x for x in data["train_rows"] if x["impl"] == r["impl"] and x["objective"] == "plain"
        )
        ratio = r["median_s"] / base["median_s"]
        target = targets.get(r["objective"])
        tgt = f"<= {target}x {mark(ratio <= target)}" if target else ""
        out.append(
            f"| {r['objective']} | {r['impl']} | {fmt_s(r)} | {ratio:.2f}x | {tgt} "
            f"| {r['tokens_per_s']:.0f} |"
        )
    out.append("")
    if data.get("predict"):
        p = data["predict"]
        out += [
            "| prediction | value |",
            "|---|---|",
            f"| texts | {p['texts']} ({p['tokens']} tokens) |",
            f"| total time (median of {p['repeats']}) | {p['total_s']:.3f} s |",
            f"| model forward | {p['forward_s']:.3f} s |",
            f"| decoding (decode + spans_from_features) | {p['decode_s']:.3f} s "
            f"({100 * p['decode_share']:.1f} % of prediction; target <= 5 % "
            f"{mark(p['decode_share'] <= 0.05)}) |",
            f"| prediction tokens/s | {p['tokens_per_s']:.0f} |",
            "",
        ]
    for note in data.get("notes", []):
        out.append(f"- {note}")
    out.append("")
    return out


PARTS = ("encoder_forward", "head_forward", "head_backward", "encoder_backward", "optimizer")


def step_section(data: dict) -> list[str]:
    m = data["machine"]
    src = data.get("source", {})
    out = [
        "## Where a training step's time goes (benchmarks/speed/bench_step.py breakdown)",
        "",
        f"- Machine: {m['cpu']}, {m['cores']} cores; torch {m['torch']}, {m['torch_threads']} "
        f"threads, OMP_WAIT_POLICY={data.get('omp_wait_policy')}.",
        f"- Code: commit {src.get('commit', '?')}{tree(src)}"
        + (" with uncommitted src changes" if src.get("src_dirty") else "")
        + f"; run {data['started']} to {data.get('finished', '?')}.",
        f"- Command: `{data['command']}`",
        "- Each training step (objective, backward, gradient clipping, AdamW) on CLUENER batches "
        "of the config's size is cut into its parts: the encoder's output goes to the head as a "
        "fresh leaf, so the head's backward stops there and the encoder's runs from the leaf's "
        "gradient; optimizer = zero_grad + clipping + AdamW step. The uncut step and the GEMM "
        "(forward and both gradients of the encoder's largest linear layer at the batches' "
        "shape: the machine's matmul rate for this model) run in the same interleaved rounds; "
        f"medians over {data['repeats']} rounds. FLOPs: torch's FlopCounterMode over the parts "
        "(matmul-like operations only: linear, bmm, attention); achieved = those FLOPs / the "
        "uncut step's median time.",
        "",
        "| model | objective | batches (B, L) | step (s) | encoder fwd + bwd | head fwd + bwd "
        "| optimizer | parts' sum / step | counted GFLOP / step (encoder, head) | achieved "
        "GFLOP/s | GEMM rate GFLOP/s | achieved / rate | load |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in data["configs"]:
        shapes = c["batch_shapes"]
        lengths = sorted(b[1] for b in shapes)
        batch = f"{shapes[0][0]} x {lengths[0]}-{lengths[-1]}"
        for kind, r in c["objectives"].items():
            parts, total = r["parts_s"], r["cut_total_s"]

            def share(*names, parts=parts, total=total):
                return f"{100 * sum(parts[n] for n in names) / total:.0f} %"

            f = r["flops"]
            enc = f["encoder_forward"] + f["encoder_backward"]
            head = f["head_forward"] + f["head_backward"]
            out.append(
                f"| {c['model']} ({c['parameters'] / 1e6:.1f} M) | {kind} | {batch} "
                f"| {fmt_s(r['step'])} | {share('encoder_forward', 'encoder_backward')} "
                f"| {share('head_forward', 'head_backward')} | {share('optimizer')} "
                f"| {total / r['step']['median_s']:.2f} "
                f"| {(enc + head) / 1e9:.2f} ({enc / 1e9:.2f}, {head / 1e9:.2f}) "
                f"| {r['achieved_flops_per_s'] / 1e9:.1f} | {c['gemm_flops_per_s'] / 1e9:.0f} "
                f"({' x '.join(map(str, c['gemm_shape']))}) | {100 * r['share_of_rate']:.0f} % "
                f"| {c['loadavg']:.1f} |"
            )
    out += [
        "",
        "Shares are of the cut step's parts (medians); *parts' sum / step* compares their sum "
        "with the uncut step (median [interquartile range] in the step column, seconds). *load* "
        "is the 1-minute load average at the end of each model's rounds, on "
        f"{m['cores']} cores.",
        "",
    ]
    return out


def parallel_section(data: dict) -> list[str]:
    m = data["machine"]
    src = data.get("source", {})
    names = {
        "threads": "1 process, 2 threads",
        "processes": "torchrun, 2 processes x 1 thread",
        "threads_passive": "1 process, 2 threads, OMP_WAIT_POLICY=PASSIVE",
    }
    out = [
        "## One process with 2 threads or 2 processes with 1 thread (bench_step.py parallel)",
        "",
        f"- Machine: {m['cpu']}, {m['cores']} cores; torch {m['torch']}.",
        f"- Code: commit {src.get('commit', '?')}{tree(src)}"
        + (" with uncommitted src changes" if src.get("src_dirty") else "")
        + f"; run {data['started']} to {data.get('finished', '?')}.",
        f"- Command: `{data['command']}`",
        "- The same `gpner train` run (one epoch capped at the given steps, global batch 32, a "
        "one-text dev set) as one process with `train.num_threads=2`, as `torchrun "
        "--nproc_per_node=2` with `train.num_threads=1` (each process takes half of every global "
        "batch; gradients all-reduced), and as one process with 2 threads and "
        "OMP_WAIT_POLICY=PASSIVE (the first two in the environment users have); the layouts "
        f"rotate run by run, {data['repeats']} runs each. Throughput: the run's own "
        "`examples_per_second` (the training loop only, first steps included), median.",
        "",
        "| config | steps per run | " + " | ".join(names.values()) + " | faster | load |",
        "|---|---|" + "---|" * len(names) + "---|---|",
    ]
    for c in data["configs"]:
        cells = []
        for key in names:
            runs = c["runs"].get(key, [])
            if not runs:
                cells.append("")
                continue
            values = sorted(r["examples_per_second"] for r in runs)
            cells.append(f"{c[key]:.1f} ex/s [{values[0]:.1f}-{values[-1]:.1f}]")
        best = max((k for k in names if k in c), key=lambda k: c[k])
        ratio = c["processes"] / c["threads"]
        loads = [r["loadavg"] for runs in c["runs"].values() for r in runs]
        out.append(
            f"| {c['config']} | {c['steps']} | " + " | ".join(cells) + f" | {names[best]} "
            f"(processes / threads {ratio:.2f}x) | {min(loads):.1f}-{max(loads):.1f} |"
        )
    out += [
        "",
        "Throughputs in examples per second, median [range]; *load*: 1-minute load average "
        f"after each run, on {m['cores']} cores.",
        "",
    ]
    return out


PROFILE_KINDS = ("projection GEMMs", "dropout mask", "cell matmuls", "other")


def profile_section(summary: dict) -> list[str]:
    """Self CPU time by kind of work, from benchmarks/speed/profiles/summary.json."""
    entries = sorted(summary.values(), key=lambda e: (e["config"], e["impl"]))
    if not entries:
        return []
    commands = sorted({e["command"] for e in entries})
    out = [
        "### Where a step's time goes (torch profiler, benchmarks/speed/profiles/)",
        "",
        "Self CPU time of every operator over the profiled steps, summed by kind of work: the "
        "projections are the only mm/addmm of a head step, the cells' matmuls (scores, dq, dk; "
        "the reference's einsum) its only bmm, dropout's random mask is bernoulli_; *other* is "
        "every elementwise pass, RoPE, mask, reduction and bookkeeping. The full operator "
        "tables are the text files next to the summary. Command"
        + ("s" if len(commands) > 1 else "")
        + ": "
        + ", ".join(f"`{c}`" for c in commands)
        + ".",
        "",
        "| configuration | implementation (commit) | step outside the profiler (ms) | "
        + " | ".join(PROFILE_KINDS)
        + " | load |",
        "|---|---|---|" + "---|" * len(PROFILE_KINDS) + "---|",
    ]
    for e in entries:
        sums = e["self_cpu_s"]
        total = sums["total"]
        shares = " | ".join(f"{100 * sums.get(k, 0.0) / total:.0f} %" for k in PROFILE_KINDS)
        name = NAMES.get(e["impl"], e["impl"])
        out.append(
            f"| {e['config']} | {name} ({e['commit']}) | {sums['median_step_s'] * 1e3:.0f} "
            f"| {shares} | {e['loadavg']:.1f} |"
        )
    out += ["", f"{entries[0]['threads']} threads; *load*: 1-minute load average.", ""]
    return out
