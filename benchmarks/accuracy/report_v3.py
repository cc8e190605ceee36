"""``REPORT-v3.md`` from the result JSONs of design v3 (issue 30; ``design_v3.py``)::

    python3 -m benchmarks.accuracy.report_v3 [--results DIR] [--out FILE]

The design and the family of claims are written before any result; with partial data the report
lists the pending cells and draws no verdict on a claim whose paired seeds are incomplete.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.accuracy import design_v3 as D
from benchmarks.accuracy import paired as P

DEFAULT_OUT = D.HERE / "REPORT-v3.md"


def _alpha(a: float | None) -> str:
    return "-" if a is None else D.alpha_label(a).replace("_", "/")


def _pt(x: float | None, signed: bool = False, digits: int = 2) -> str:
    """A fraction in points (x100), or "-"."""
    if x is None:
        return "-"
    return f"{100 * x:+.{digits}f}" if signed else f"{100 * x:.{digits}f}"


def _p(p: float | None) -> str:
    return "-" if p is None else ("< 0.0001" if p < 1e-4 else f"{p:.4f}")


def final_f1(payload: dict[str, Any]) -> float:
    return payload["test"]["micro"]["f1"]


@dataclass
class Claim:
    label: str
    a: str
    b: str
    test: P.PairedTest
    complete: bool
    adjusted: float | None = None
    verdict: str = ""

    @property
    def text(self) -> str:
        return f"{self.a} > {self.b}"


def claims(design: D.Design, finals: dict[str, dict[int, float]]) -> list[Claim]:
    """The 7 claims with their one-sided paired tests, Holm-adjusted over the whole family.

    A claim whose paired seeds are incomplete gets no verdict. While some are incomplete, the
    complete ones are adjusted with p = 1 for the others: Holm's adjusted p-values never fall
    when a raw p-value rises, so that is an upper bound and a "holds" cannot be undone by the
    pending claims.
    """
    seeds = set(design.final_seeds)
    out = []
    for label, a, b in D.CLAIMS:
        complete = all(seeds <= set(finals.get(v, {})) for v in (a, b))
        out.append(Claim(label, a, b, P.paired(finals.get(a, {}), finals.get(b, {})), complete))
    raw = [c.test.p_greater if c.complete else 1.0 for c in out]
    pending = sum(not c.complete for c in out)
    for c, adjusted in zip(out, P.holm(raw)):
        if not c.complete:
            c.verdict = f"no verdict: {c.test.n} of {len(seeds)} paired seeds"
            continue
        c.adjusted = adjusted
        if adjusted < P.LEVEL:
            c.verdict = "**holds**"
        elif pending:
            c.verdict = f"not shown so far ({pending} claim(s) pending)"
        else:
            c.verdict = "unresolved"
    return out


def _design_section(design: D.Design) -> list[str]:
    grid = ", ".join(_alpha(a) for a in sorted(design.alphas))
    return [
        "## Pre-registered design",
        "",
        "Fixed in issue 30 before the first result; `benchmarks/accuracy/design_v3.py`.",
        "",
        f"- **Data.** CLUENER. Validation: a seeded 10 % of `{design.train_file}` carved by the "
        "library (`data.validation_fraction = 0.1`, `data.split_seed = 0`), the same split in "
        f"every cell. Test: the CLUENER dev file (`{design.test_set}`), scored once per final "
        "cell from its best validation epoch; search cells never read it. CLUENER's test labels "
        "are not public, so these are dev-file scores, not leaderboard scores.",
        f"- **Model.** `{design.base_config}`'s encoder, head and optimiser (char BiLSTM with "
        f"char bigrams, GlobalPointer), at most {design.epochs} epochs (the learning rate "
        f"decays over them), early stopping with patience {design.patience}, the best "
        "validation epoch kept.",
        "- **Variants (5).** `baseline`; `rdrop-none` (two dropout passes, CE averaged, no "
        "divergence: R-Drop with alpha 0); R-Drop with `gp_kl`, `softmax_kl` and "
        "`softmax_kl_all`.",
        f"- **Alpha search.** Grid {{{grid}}} for each divergence at search seeds "
        f"{', '.join(map(str, design.search_seeds))} (disjoint from the final seeds), at the "
        "final budget; the chosen alpha has the best mean validation F1 over both seeds (ties: "
        "the smaller alpha). When it is an edge of the searched grid, one more factor of 4 past "
        f"it is searched (down to {_alpha(design.alpha_min)}, up to {_alpha(design.alpha_max)}) "
        "until it has searched neighbours on both sides. `baseline` and `rdrop-none` also run "
        "at the search seeds.",
        f"- **Finals.** Seeds {design.final_seeds[0]}-{design.final_seeds[-1]} per variant at "
        "the chosen alpha, paired by seed.",
        "- **Every cell runs one library commit** (the runner refuses to mix commits).",
        "",
        "### The family of claims",
        "",
        "Exactly these 7 one-sided claims on test micro F1, each a paired-by-seed one-sided "
        "t-test, Holm-corrected together at a family-wise level of 0.05. Anything else in this "
        "report (alpha curves, validation scores, learning curves, the regulariser's strength) is "
        "exploratory.",
        "",
        *[f"{k + 1}. ({label}) {a} > {b}" for k, (label, a, b) in enumerate(D.CLAIMS)],
        "",
        '(d) is the article\'s "softmax KL does worse", read as baseline > softmax_kl.',
        "",
    ]


def _verdicts(cs: list[Claim]) -> list[str]:
    lines = [
        "## Verdicts",
        "",
        "Differences in test micro F1 points, a − b, paired by seed. The bounds are one-sided "
        "95 % t-bounds **not adjusted for multiplicity** (the verdicts use the Holm-adjusted "
        "p-values): *lower* says the mean gain is above it; *rules out* says a mean gain above it "
        "is excluded, the largest difference the data rule out for a claim not shown.",
        "",
        "| claim | pairs | mean Δ | sd | wins | one-sided p | Holm p | lower (unadj.) "
        "| rules out (unadj.) | verdict |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in cs:
        t = c.test
        rules_out = "-" if not c.complete or "holds" in c.verdict else f"> {_pt(t.bound('upper'))}"
        lines.append(
            f"| ({c.label}) {c.text} | {t.n} | {_pt(t.mean, True)} | {_pt(t.sd)} | "
            f"{t.wins}/{t.n} | {_p(t.p_greater)} | {_p(c.adjusted)} | "
            f"{_pt(t.bound('lower'), True)} | {rules_out} | {c.verdict} |"
        )
    return [*lines, ""]


def _alpha_section(design: D.Design, results: dict[str, dict]) -> list[str]:
    found = D.searches(design, results)
    search = [p for p in results.values() if p["stage"] == "search"]
    seeds = design.search_seeds
    lines = [
        "## Alpha searches (validation micro F1)",
        "",
        "Both search seeds and their mean, in points; `rdrop-none` is the alpha → 0 end of "
        "every curve. Exploratory.",
        "",
        "| | " + " | ".join(f"s{s}" for s in seeds) + " | mean |",
        "|---|" + "---|" * (len(seeds) + 1),
    ]

    def row(name: str, picked: list[dict]) -> str:
        by = {p["seed"]: p["validation"]["f1"] for p in picked}
        mean = statistics.fmean(by.values()) if len(by) == len(seeds) else None
        cells = " | ".join(_pt(by.get(s)) for s in seeds)
        return f"| {name} | {cells} | {_pt(mean)} |"

    for ref in ("baseline", "rdrop-none"):
        lines.append(row(ref, [p for p in search if p["variant"] == ref]))
    for d in D.DIVERGENCES:
        s = found[d]
        for a in s.alphas:
            mark = " ←" if a == s.chosen else ""
            picked = [p for p in search if p["variant"] == "rdrop-" + d and p["alpha"] == a]
            lines.append(row(f"{d} α={_alpha(a)}{mark}", picked))
    lines.append("")
    for d in D.DIVERGENCES:
        s = found[d]
        chosen = f"α = {_alpha(s.chosen)} ({s.note})" if s.chosen is not None else s.note
        lines.append(f"- {d}: {chosen}")
    return [*lines, ""]


def _finals(results: dict[str, dict], variant: str) -> list[dict]:
    return [p for p in results.values() if p["stage"] == "final" and p["variant"] == variant]


def _mean(payloads: list[dict], value) -> float:
    return statistics.fmean(value(p) for p in payloads)


def _median(probes: list[dict], key: str) -> str:
    if not probes:
        return "-"
    return f"{statistics.median(q['median_' + key] for q in probes):.3g}"


def _finals_section(design: D.Design, results: dict[str, dict]) -> list[str]:
    seeds = design.final_seeds
    lines = [
        "## Finals (test micro F1, points)",
        "",
        "| variant | α | " + " | ".join(f"s{s}" for s in seeds) + " | mean ± sd | val F1 "
        "| best epoch | epochs run | minutes | α·D share | ∣∇CE∣ | ∣∇αD∣ |",
        "|---|---|" + "---|" * (len(seeds) + 8),
    ]
    for v in D.VARIANTS:
        got = {p["seed"]: p for p in _finals(results, v)}
        if not got:
            lines.append(f"| {v} | - | " + " | ".join("-" for _ in seeds) + " |" + " - |" * 8)
            continue
        f1s = [final_f1(p) for p in got.values()]
        sd = statistics.stdev(f1s) if len(f1s) > 1 else None
        ps = list(got.values())
        probes = [p["probe"] for p in ps if p.get("probe") and "error" not in p["probe"]]
        alpha = _alpha(ps[0]["alpha"])
        lines.append(
            f"| {v} | {alpha} | "
            + " | ".join(_pt(final_f1(got[s])) if s in got else "-" for s in seeds)
            + f" | {_pt(statistics.fmean(f1s))} ± {_pt(sd)} "
            f"| {_pt(_mean(ps, lambda p: p['validation']['f1']))} "
            f"| {_mean(ps, lambda p: p['validation']['best_epoch']):.1f} "
            f"| {_mean(ps, lambda p: p['epochs_run']):.1f} "
            f"| {_mean(ps, lambda p: p['timing']['wall_seconds']) / 60:.1f} "
            f"| {_median(probes, 'share')} | {_median(probes, 'ce_grad_norm')} "
            f"| {_median(probes, 'divergence_grad_norm')} |"
        )
    return [
        *lines,
        "",
        "Means over the finished seeds. *α·D share*, *∣∇CE∣*, *∣∇αD∣*: the probe (`probe.py`) on "
        "each final's best checkpoint, 8 training batches in training mode with its own seed: "
        "the divergence's share of the loss and the gradient norm of each term over all "
        "parameters, medians over batches, then over seeds.",
        "",
    ]


def _curves(design: D.Design, results: dict[str, dict]) -> list[str]:
    epochs = range(1, design.epochs + 1)
    lines = [
        "## Learning curves (finals, mean validation micro F1 by epoch)",
        "",
        "Points; in brackets the number of finals that reached the epoch, when not all did.",
        "",
        "| variant | " + " | ".join(str(e) for e in epochs) + " |",
        "|---|" + "---|" * len(epochs),
    ]
    for v in D.VARIANTS:
        curves = [p["validation"]["per_epoch"] for p in _finals(results, v)]
        row = []
        for e in epochs:
            got = [c[e - 1] for c in curves if len(c) >= e]
            cell = _pt(statistics.fmean(got), digits=1) if got else "-"
            row.append(cell + (f" ({len(got)})" if got and len(got) < len(curves) else ""))
        lines.append(f"| {v} | " + " | ".join(row) + " |")
    return [*lines, ""]


def _status(entries: list[D.Entry], results: dict[str, dict]) -> list[str]:
    done = [e for e in entries if e.status == "done"]
    left = [e for e in entries if e.status != "done"]
    commits = D.commits(results)
    machines = sorted(
        {f"{p['machine']['cpu_model']}, layout {p['machine']['layout']}" for p in results.values()}
    )
    lines = [
        f"**Status:** {len(done)} of {len(entries)} planned cells finished "
        f"({sum(e.cell.stage == 'final' for e in done)} of "
        f"{sum(e.cell.stage == 'final' for e in entries)} finals); library commit "
        + (", ".join(f"`{c}`" for c in commits) if commits else "none yet")
        + (f"; {'; '.join(machines)}" if machines else "")
        + ".",
        "",
    ]
    if left:
        lines += [f"{len(left)} cell(s) pending: listed at the end.", ""]
    return lines


def _pending(entries: list[D.Entry]) -> list[str]:
    left = [e for e in entries if e.status != "done"]
    if not left:
        return []
    return ["## Pending cells", "", *[f"- `{e.cell.id}` ({e.status})" for e in left], ""]


def build_report(results_dir: Path, out: Path, design: D.Design = D.V3) -> Path:
    results = D.load_results(results_dir)
    D.check_commits(results, None)
    entries = D.plan(design, results_dir)
    finals: dict[str, dict[int, float]] = {}
    for p in results.values():
        if p["stage"] == "final":
            finals.setdefault(p["variant"], {})[p["seed"]] = final_f1(p)
    lines = [
        "# Accuracy v3: does the GlobalPointer divergence help R-Drop? (CLUENER, char BiLSTM)",
        "",
        f"Generated by `benchmarks/accuracy/report_v3.py` from `{Path(results_dir).name}/`; "
        "do not edit by hand. The earlier design: `REPORT.md` (v1).",
        "",
        *_status(entries, results),
        *_design_section(design),
        *_verdicts(claims(design, finals)),
        *_alpha_section(design, results),
        *_finals_section(design, results),
        *_curves(design, results),
        *_pending(entries),
    ]
    out = Path(out)
    out.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=D.DEFAULT_RESULTS)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    try:
        print(build_report(args.results, args.out))
    except D.DesignError as error:
        print(f"report_v3: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
