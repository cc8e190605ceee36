"""The roofline section of benchmarks/speed/RESULTS.md: what bounds each head step."""

from __future__ import annotations

from benchmarks.speed.results_format import HEADS, NAMES, cpu_ratio, mark, noise


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
