"""Names and number formats shared by the sections of benchmarks/speed/RESULTS.md
(``python3 -m benchmarks.speed.make_results``)."""

from __future__ import annotations

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
