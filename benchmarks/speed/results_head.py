"""The head and divergence sections of benchmarks/speed/RESULTS.md (``bench_head.py``)."""

from __future__ import annotations

from benchmarks.speed.results_format import (
    HEADS,
    NAMES,
    cpu_ratio,
    divergence_costs,
    fmt_floor,
    fmt_mem,
    fmt_s,
    index,
    mark,
    tree,
)
from benchmarks.speed.results_roofline import roofline_section


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
