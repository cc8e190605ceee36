"""Render benchmarks/speed/RESULTS.md from the measurement JSON files (no number typed by hand).

python3 benchmarks/speed/make_results.py [--head results/head.json] [--train results/train.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import encoder_sections  # run as a script, its own folder is on sys.path

HERE = Path(__file__).resolve().parent
NAMES = {
    "reference": "reference",
    "logits": "gpner logits",
    "fused": "gpner fused",
    "fused_compiled": "gpner fused, compiled kernels",
    "fused_baseline": "gpner fused, baseline commit",
    "gemm": "projection GEMM (rate)",
}
HEADS = {"global_pointer": "GP", "efficient_global_pointer": "EGP"}


def fmt_s(row: dict) -> str:
    return f"{row['median_s']:.3f} [{row['q1_s']:.3f}-{row['q3_s']:.3f}]"


def fmt_mem(row: dict) -> str:
    if "peak_bytes" not in row:
        return "n/a"
    return f"{row['peak_bytes'] / 2**20:.0f} MB ({row['peak_units']:.2f})"


def tree(src: dict) -> str:
    """`` (src/gpner tree T)`` when recorded: names the code across rebases."""
    return f" (src/gpner tree {src['src_tree']})" if src.get("src_tree") else ""


def fmt_floor(row: dict | None) -> str:
    return f"{row['x_floor']:.2f}" if row and "x_floor" in row else ""


def cpu_ratio(a: dict, b: dict, suffix: str = "x") -> str:
    """``a / b`` of the CPU-time medians, when both were recorded."""
    if "cpu" not in a or "cpu" not in b:
        return ""
    return f"{a['cpu']['median_s'] / b['cpu']['median_s']:.2f}{suffix}"


def noise(*rows: dict) -> float:
    """Relative spread of medians: the larger half-IQR / median of the rows compared."""
    return max((r["q3_s"] - r["q1_s"]) / 2 / r["median_s"] for r in rows)


def roofline_section(data: dict, ix: dict) -> list[str]:
    """Rate, necessary FLOPs, floor and time / floor per (head, mode, H, L); short-L targets."""
    rows = [r for r in data["rows"] if "floor_s" in r and r["config"]["mode"] != "rdrop_nokl"]
    if not rows:
        return []
    baseline = data.get("baseline")
    gemms = [r for r in data["rows"] if r["impl"] == "gemm"]
    rates = sorted(r["gemm_flops_per_s"] for r in gemms)
    impls = [
        i
        for i in ("reference", "logits", "fused", "fused_baseline")
        if i in {r["impl"] for r in rows}
    ]
    out = [
        "### Roofline: each step against the machine's matmul rate",
        "",
        "- Rate: one linear forward + backward (input and weight gradients) of the GlobalPointer "
        "projection's shape, x (B * L, H) times W (C * 2 * D, H), 6 * B * L * H * 2CD FLOPs, "
        "timed in the same interleaved rounds as the implementations of each row (so under the "
        f"same load). Across the rows it ran at {rates[0] / 1e9:.0f} to {rates[-1] / 1e9:.0f} "
        f"GFLOP/s (median {rates[len(rates) // 2] / 1e9:.0f}).",
        "- Necessary FLOPs (benchmarks/speed/roofline.py), with T real tokens and V valid cells "
        "(C * sum_b n_b (n_b + 1) / 2), per pass: projection forward + both gradients "
        "(GP 6 T H 2CD; EGP 6 T (H 2D + 2D 2C)), valid cells' scores forward + backward (GP "
        "6 D V; EGP 6 D V / C + 4 V), cross-entropy 7 V; per R-Drop step the divergence 16 V. "
        "Recomputation, RoPE, dropout and the gold cells are not counted.",
        "- Floor = necessary FLOPs / rate; *x floor* = measured step / floor (1.0 would be every "
        "FLOP at matmul speed and nothing else). In parentheses the same from CPU time: the "
        "GEMM's FLOPs per CPU-second of the process, and the step's CPU time over its necessary "
        "FLOPs' CPU time at that rate (robust to other jobs on the machine; blind to how well a "
        "step uses its threads).",
    ]
    if baseline:
        out.append(
            f"- *baseline* = the fused path of commit {baseline['short']} (the code before this "
            "round of speed work), imported from an export of that commit and timed in the same "
            "rounds."
        )
    out += [
        "",
        "| head | mode | H | L | GEMM rate, GFLOP/s (per CPU-s) | necessary GFLOP (projection "
        "share) | floor (ms) | "
        + " | ".join(f"{NAMES[i]}: ms, x floor (CPU)" for i in impls)
        + " |",
        "|---|---|---|---|---|---|---|" + "---|" * len(impls),
    ]
    seen = set()
    for r in rows:
        c = r["config"]
        key = (c["head"], c["mode"], c["hidden"], c["length"], c["max_width"])
        if key in seen:
            continue
        seen.add(key)
        f = r["flops"]
        cells = []
        gemm = ix.get((*key, "gemm"))
        cpu_rate = None
        if gemm and "cpu" in gemm:
            n = c["batch"] * c["length"] * c["hidden"] * 2 * c["types"] * c["head_size"]
            cpu_rate = 6 * n / gemm["cpu"]["median_s"]
        for impl in impls:
            x = ix.get((*key, impl))
            if not x:
                cells.append("")
                continue
            cell = f"{x['median_s'] * 1e3:.0f}, {x['x_floor']:.2f}"
            if cpu_rate and "cpu" in x:
                cell += f" ({x['cpu']['median_s'] * cpu_rate / f['total']:.2f})"
            cells.append(cell)
        width = f" W={c['max_width']}" if c["max_width"] else ""
        rate = f"{r['gemm_flops_per_s'] / 1e9:.0f}"
        if cpu_rate:
            rate += f" ({cpu_rate / 1e9:.0f})"
        out.append(
            f"| {HEADS[c['head']]}{width} | {c['mode']} | {c['hidden']} | {c['length']} "
            f"| {rate} | {f['total'] / 1e9:.2f} "
            f"({100 * f['projection'] / f['total']:.0f} %) | {r['floor_s'] * 1e3:.1f} | "
            + " | ".join(cells)
            + " |"
        )
    out.append("")
    # ---- targets at short lengths and no regression at long ones
    targets, bounds = [], []
    for length, want in ((128, 3.0), (64, 2.5)):
        for head in HEADS:
            ref = ix.get((head, "rdrop", 768, length, None, "reference"))
            fus = ix.get((head, "rdrop", 768, length, None, "fused"))
            gemm = ix.get((head, "rdrop", 768, length, None, "gemm"))
            if ref and fus:
                speed = ref["median_s"] / fus["median_s"]
                targets.append(
                    f"| fused R-Drop vs reference, {HEADS[head]}, H=768, L={length} "
                    f"| {speed:.2f}x | {cpu_ratio(ref, fus)} | >= {want}x {mark(speed >= want)} |"
                )
                if speed < want and gemm:
                    # What bounds it: the two passes' projection GEMMs (timed in the same
                    # rounds) are work every implementation does; the rest is the head's own.
                    proj = 2 * gemm["median_s"]
                    allowed = ref["median_s"] / want
                    bounds.append(
                        f"- {HEADS[head]}, H=768, L={length}: the reference takes "
                        f"{ref['median_s'] * 1e3:.0f} ms, so {want}x allows "
                        f"{allowed * 1e3:.0f} ms. The two passes' projection GEMMs alone (forward "
                        f"and both gradients, the GEMM row of the same rounds, twice) take "
                        f"{proj * 1e3:.0f} ms, which leaves {(allowed - proj) * 1e3:.0f} ms for "
                        f"dropout, RoPE, the cells, losses and divergence; the fused step spends "
                        f"{(fus['median_s'] - proj) * 1e3:.0f} ms on them "
                        f"({fus['median_s'] * 1e3:.0f} ms in all; the profiles below split it)."
                    )
    fus = ix.get(("global_pointer", "rdrop", 768, 128, None, "fused"))
    if fus and "x_floor" in fus:
        targets.append(
            f"| fused R-Drop time / floor, GP, H=768, L=128 | {fus['x_floor']:.2f} | "
            f"| <= 2 {mark(fus['x_floor'] <= 2)} |"
        )
    if baseline:
        for r in rows:
            c = r["config"]
            if r["impl"] != "fused" or c["length"] < 256 or c["max_width"]:
                continue
            old = ix.get((c["head"], c["mode"], c["hidden"], c["length"], None, "fused_baseline"))
            if not old:
                continue
            ratio = r["median_s"] / old["median_s"]
            tol = noise(r, old)
            targets.append(
                f"| fused / baseline time, {HEADS[c['head']]}, {c['mode']}, H={c['hidden']}, "
                f"L={c['length']} | {ratio:.2f} | {cpu_ratio(r, old, '')} "
                f"| <= 1 + noise ({1 + tol:.2f}) {mark(ratio <= 1 + tol)} |"
            )
    if targets:
        out += [
            "### Targets at short lengths (ratios from the same run)",
            "",
            "No regression at L >= 256 is read against the baseline commit timed in the same "
            "rounds; *noise* is the larger half interquartile range of the two, relative to its "
            "median. *CPU time*: the same ratio from the process CPU time of each step (all "
            "threads), less disturbed by other jobs on a shared machine but blind to how well a "
            "step uses its 2 threads; the targets are read on wall time.",
            "",
            "| target | measured (wall time) | same ratio in CPU time | goal |",
            "|---|---|---|---|",
            *targets,
            "",
        ]
        if bounds:
            out += ["What bounds the short-length targets that miss:", "", *bounds, ""]
    return out


def index(rows: list[dict]) -> dict:
    out = {}
    for r in rows:
        c = r["config"]
        out[(c["head"], c["mode"], c["hidden"], c["length"], c["max_width"], r["impl"])] = r
    return out


def mark(ok: bool) -> str:
    return "yes" if ok else "**no**"


def divergence_costs(data: dict | None) -> dict:
    """(head, hidden, length, impl) -> (rdrop - rdrop_nokl) / headloss, all from one session."""
    if not data:
        return {}
    ix = index(data["rows"])
    out = {}
    for (head, mode, hidden, length, width, impl), row in ix.items():
        if mode != "rdrop" or width:
            continue
        nokl = ix.get((head, "rdrop_nokl", hidden, length, width, impl))
        one = ix.get((head, "headloss", hidden, length, width, impl))
        if nokl and one:
            out[head, hidden, length, impl] = (
                (row["median_s"] - nokl["median_s"]) / one["median_s"],
                row,
                nokl,
                one,
            )
    return out


def divergence_section(data: dict) -> list[str]:
    costs = divergence_costs(data)
    out = [
        "### What the divergence adds (benchmarks/speed/bench_head.py --divergence)",
        "",
        f"- Command: `{data['command']}`; run {data['started']} to {data.get('finished', '?')}, "
        f"commit {data.get('source', {}).get('commit', '?')}.",
        "- `headloss`, `rdrop_nokl` and `rdrop` of each implementation timed side by side in one "
        f"session ({data['repeats']} interleaved repeats, medians): the divergence adds "
        "(`rdrop` - `rdrop_nokl`) / `headloss`, i.e. its share of the head + loss time of one "
        "pass. Target <= 25 %.",
        "",
        "| head | H | L | implementation | headloss (s) | rdrop_nokl (s) | rdrop (s) "
        "| divergence adds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (head, hidden, length, impl), (extra, r, nokl, one) in costs.items():
        out.append(
            f"| {HEADS[head]} | {hidden} | {length} | {NAMES[impl]} | {fmt_s(one)} "
            f"| {fmt_s(nokl)} | {fmt_s(r)} | {100 * extra:.0f} % {mark(extra <= 0.25)} |"
        )
    out.append("")
    return out


def run_lines(data: dict) -> list[str]:
    """Code and command of a results file, one line per run when runs were merged
    (``bench_head.py --merge``): every row names its run."""
    runs = data.get("runs") or [data]
    out = []
    for i, run in enumerate(runs):
        src = run.get("source", {})
        code = (
            f"commit {src.get('commit', '?')}{tree(src)}"
            + (" with uncommitted src changes" if src.get("src_dirty") else "")
            + f"; run {run['started']} to {run.get('finished', '?')}"
        )
        if len(runs) == 1:
            out += [f"- Code: {code}.", f"- Command: `{run['command']}`"]
        else:
            reps = (
                f"; {run['warmup']} warm-up steps, {run['repeats']} repeats"
                if "repeats" in run
                else ""
            )
            out.append(f"- Run {i + 1}: `{run['command']}`; {code}{reps}.")
    if len(runs) > 1:
        out.append(
            f"- The {len(runs)} runs' rows were merged into one file; ratios are only formed "
            "within a run (every row of a configuration comes from the same run)."
        )
    return out


def head_section(data: dict, div_data: dict | None = None) -> list[str]:
    rows = data["rows"]
    ix = index(rows)
    div = divergence_costs(div_data)
    out = []
    m = data["machine"]
    out += [
        "## Head, loss and divergence (benchmarks/speed/bench_head.py)",
        "",
        f"- Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; torch {m['torch']} "
        f"({m['cpu_capability']}), {m['torch_threads']} intra-op threads, "
        f"OMP_WAIT_POLICY={data.get('omp_wait_policy')}; Python {m['python']}.",
        *run_lines(data),
        (
            "- Timing: warm-up steps, then repeats (as listed per run) per "
            if len(data.get("runs") or []) > 1
            else f"- Timing: {data['warmup']} warm-up steps, then {data['repeats']} repeats per "
        )
        + "implementation, interleaved with a rotating order in one process; median "
        "[interquartile range] of the wall time of one step (forward + backward), in seconds.",
        "- Memory (where measured; n/a where a run used --no-memory): peak RSS of one step above "
        "the RSS just before it (VmHWM after a reset, in a fresh process per cell, after warm-up "
        "and malloc_trim); in parentheses, in units of one (B, C, L, L) float32 tensor.",
        "- Shapes: B=16, C=10, D=64; hidden states (B, L, H) require grad (the step includes the "
        "gradient into the encoder); 1/4 of the batch padded by up to L/4 tokens; L/16 gold spans "
        "per example, 1-16 tokens long. `rdrop` = two head passes over two dropouts (p=0.1) of "
        "the same hidden states, both cross-entropies and the divergence; `headloss` = one pass "
        "and its cross-entropy; `rdrop_nokl` = `rdrop` without the divergence.",
        "- Implementations: *reference* = typical public code (benchmarks/speed/reference.py: "
        "dense 0/1 labels built per step, additive 1e12 masks, concatenated logsumexp, "
        "everything (B, C, L, L)); *gpner logits* = gpner's heads returning (B, C, L, L) logits "
        "and its drop-in losses; *gpner fused* = `head.factors()` + `fused_rdrop_losses` / "
        "`fused_crossentropy` (no (B, C, L, L) tensor at all). All three compute the same loss "
        "(checked before each timing).",
        "",
    ]
    loads = [r["loadavg"] for r in rows if "loadavg" in r]
    if loads:
        # The benchmark itself keeps about `threads` cores busy; more than that means other jobs.
        shared = max(loads) > m["torch_threads"] + 0.5
        why = (
            "other jobs shared the machine: absolute times are inflated and noisy; the "
            "side-by-side ratios are what to read"
            if shared
            else "about the benchmark's own threads: no other job was running"
        )
        out += [
            f"- 1-minute load average during the run: {min(loads):.1f} to {max(loads):.1f} on "
            f"{m['cores']} cores ({why}).",
        ]
    out += [f"- {note}" for note in data.get("notes", [])]
    out.append("")
    # ---- targets at the longest full length
    lengths = sorted({r["config"]["length"] for r in rows if r["config"]["max_width"] is None})
    full_lengths = [
        n for n in lengths if any(k[1] == "rdrop" and k[3] == n and k[5] == "reference" for k in ix)
    ]
    if full_lengths:
        n = max(full_lengths)
        out += [
            f"### Targets at L={n} (ratios from the same run)",
            "",
            "R-Drop step (forward + backward), gpner fused vs the reference; *divergence adds* = "
            "(`rdrop` - `rdrop_nokl`) / `headloss` of the same implementation: the time the "
            "divergence adds to an R-Drop step, relative to the head + loss time of one pass "
            "(from the side-by-side divergence run below when there is one).",
            "",
            "| head | H | reference | gpner fused | speed-up (>= 3x) | peak memory fused / ref "
            "(<= 0.35) | divergence adds (<= 25 %) | gpner logits: speed-up, memory / ref |",
            "|---|---|---|---|---|---|---|---|",
        ]
        compiled_rows = []
        for head in HEADS:
            for hidden in sorted({r["config"]["hidden"] for r in rows}, reverse=True):
                get = {
                    (mode, impl): ix.get((head, mode, hidden, n, None, impl))
                    for mode in ("rdrop", "rdrop_nokl", "headloss")
                    for impl in NAMES
                }
                ref, fus = get["rdrop", "reference"], get["rdrop", "fused"]
                if not (ref and fus):
                    continue

                def adds(impl, get=get, head=head, hidden=hidden):
                    if (head, hidden, n, impl) in div:  # measured side by side: preferred
                        extra = div[head, hidden, n, impl][0]
                        return f"{100 * extra:.0f} % {mark(extra <= 0.25)}"
                    one, nokl = get["headloss", impl], get["rdrop_nokl", impl]
                    if not (one and nokl and get["rdrop", impl]):
                        return ""
                    extra = (get["rdrop", impl]["median_s"] - nokl["median_s"]) / one["median_s"]
                    return f"{100 * extra:.0f} % {mark(extra <= 0.25)}"

                speed = ref["median_s"] / fus["median_s"]
                mem = fus.get("peak_bytes", float("nan")) / ref.get("peak_bytes", float("nan"))
                log = get["rdrop", "logits"]
                logs = ""
                if log:
                    logm = log.get("peak_bytes", float("nan")) / ref.get("peak_bytes", float("nan"))
                    logs = f"{ref['median_s'] / log['median_s']:.1f}x, {logm:.2f}"
                # mem != mem: a NaN, this run measured no memory (--no-memory)
                mem_cell = "not measured" if mem != mem else f"{mem:.3f} {mark(mem <= 0.35)}"
                out.append(
                    f"| {HEADS[head]} | {hidden} | {ref['median_s']:.3f} s "
                    f"| {fus['median_s']:.3f} s | {speed:.1f}x {mark(speed >= 3)} "
                    f"| {mem_cell} | {adds('fused')} | {logs} |"
                )
                comp = get["rdrop", "fused_compiled"]
                if comp:
                    nan = float("nan")
                    cmem = comp.get("peak_bytes", nan) / ref.get("peak_bytes", nan)
                    compiled_rows.append(
                        f"| {HEADS[head]} | {hidden} | {comp['median_s']:.3f} s "
                        f"| {ref['median_s'] / comp['median_s']:.1f}x | {cmem:.3f} "
                        f"| {adds('fused_compiled')} | {comp['first_call_s']:.1f} s |"
                    )
        out.append("")
        if compiled_rows:
            out += [
                "With the optional compiled kernels (`with gpner.backends.compiled_kernels():`, "
                "or `train.compiled_kernels = true` in a training config: torch.compile of the "
                "block arithmetic; eager stays the default and the fallback):",
                "",
                "| head | H | gpner fused, compiled | speed-up vs reference | peak memory / ref "
                "| divergence adds | first R-Drop step (includes compiling) |",
                "|---|---|---|---|---|---|---|",
                *compiled_rows,
                "",
                "The first step's time includes compilation in that process (Inductor's on-disk "
                "cache makes later processes faster); it is not included in the medians.",
                "",
            ]
    out += roofline_section(data, ix)
    # ---- band
    band = [r for r in rows if r["config"]["max_width"]]
    if band:
        out += ["### Maximum span width (band layout)", ""]
        out += [
            "| head | L | W | implementation | R-Drop step (s) | peak memory | time vs full fused "
            "| memory vs full fused |",
            "|---|---|---|---|---|---|---|---|",
        ]
        seen = set()
        for r in band:
            c = r["config"]
            key = (c["head"], c["length"])
            if key in seen:
                continue
            seen.add(key)
            hidden = c["hidden"]
            full = ix.get((c["head"], "rdrop", hidden, c["length"], None, "fused"))
            cells = [
                ix.get((c["head"], "rdrop", hidden, c["length"], None, impl))
                for impl in ("reference", "logits", "fused")
            ]
            cells += [
                ix.get((c["head"], "rdrop", hidden, c["length"], c["max_width"], impl))
                for impl in ("fused", "logits")
            ]
            for cell in cells:
                if not cell:
                    continue
                w = cell["config"]["max_width"] or "-"
                vs_t = vs_m = ""
                if full:
                    vs_t = f"{cell['median_s'] / full['median_s']:.2f}x"
                    if "peak_bytes" in cell and "peak_bytes" in full:
                        vs_m = f"{cell['peak_bytes'] / full['peak_bytes']:.2f}x"
                out.append(
                    f"| {HEADS[c['head']]} | {c['length']} | {w} | {NAMES[cell['impl']]} "
                    f"| {fmt_s(cell)} | {fmt_mem(cell)} | {vs_t} | {vs_m} |"
                )
        out += [
            "",
            f"H={band[0]['config']['hidden']}. The dense implementations are not run where "
            "their (B, C, L, L) tensors would not fit (at L=2048 one is "
            f"{16 * 10 * 2048 * 2048 * 4 / 2**30:.1f} GiB and the reference needs over ten).",
            "",
        ]
    # ---- everything
    out += [
        "### All measurements",
        "",
        "*x floor*: the step's time over its floor (its necessary FLOPs at the GEMM rate "
        "measured in the same rounds, see the roofline above).",
        "",
        "| head | mode | H | L | W | implementation | step (s) | CPU time (s) | peak memory "
        "| speed-up vs reference (CPU time) | memory vs reference | x floor |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["impl"] == "gemm":
            continue
        c = r["config"]
        ref = ix.get((c["head"], c["mode"], c["hidden"], c["length"], None, "reference"))
        sp = mm = ""
        if ref and r is not ref:
            sp = f"{ref['median_s'] / r['median_s']:.1f}x"
            if "cpu" in r and "cpu" in ref:
                sp += f" ({cpu_ratio(ref, r)})"
            if "peak_bytes" in r and "peak_bytes" in ref:
                mm = f"{r['peak_bytes'] / ref['peak_bytes']:.2f}"
        out.append(
            f"| {HEADS[c['head']]} | {c['mode']} | {c['hidden']} | {c['length']} "
            f"| {c['max_width'] or '-'} | {NAMES[r['impl']]} | {fmt_s(r)} "
            f"| {fmt_s(r['cpu']) if 'cpu' in r else ''} | {fmt_mem(r)} "
            f"| {sp} | {mm} | {fmt_floor(r)} |"
        )
    out.append("")
    return out


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


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--head", type=Path, default=HERE / "results" / "head.json")
    p.add_argument("--train", type=Path, default=HERE / "results" / "train.json")
    p.add_argument("--divergence", type=Path, default=HERE / "results" / "divergence.json")
    p.add_argument("--step", type=Path, default=HERE / "results" / "step.json")
    p.add_argument("--parallel", type=Path, default=HERE / "results" / "parallel.json")
    p.add_argument("--step-bilstm", type=Path, default=HERE / "results" / "step_bilstm.json")
    p.add_argument("--versus", type=Path, default=HERE / "results" / "versus.json")
    p.add_argument("--loaded", type=Path, default=HERE / "results" / "loaded.json")
    p.add_argument("--profiles", type=Path, default=HERE / "profiles" / "summary.json")
    p.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    args = p.parse_args(argv)
    lines = [
        "# gpner speed benchmarks",
        "",
        "Generated by `python3 benchmarks/speed/make_results.py` from the JSON files in "
        "`benchmarks/speed/results/`; every number below comes from those files.",
        "",
    ]
    div = json.loads(args.divergence.read_text()) if args.divergence.exists() else None
    if args.head.exists():
        lines += head_section(json.loads(args.head.read_text()), div)
    if args.profiles.exists():
        lines += profile_section(json.loads(args.profiles.read_text()))
    if div:
        lines += divergence_section(div)
    if args.train.exists():
        lines += train_section(json.loads(args.train.read_text()))
    if args.step.exists():
        lines += step_section(json.loads(args.step.read_text()))
    if args.parallel.exists():
        lines += parallel_section(json.loads(args.parallel.read_text()))
    if args.step_bilstm.exists():  # the from-scratch encoder, packed and unpacked side by side
        lines += step_section(json.loads(args.step_bilstm.read_text()))
    if args.versus.exists():
        lines += encoder_sections.versus_section(json.loads(args.versus.read_text()))
    if args.loaded.exists():
        lines += encoder_sections.loaded_section(json.loads(args.loaded.read_text()))
    args.out.write_text("\n".join(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
