"""The sentences of the v1 accuracy report (``report.py``), each computed from the numbers:
paired comparisons and the verdict on the claim."""

from __future__ import annotations

from dataclasses import dataclass

from benchmarks.accuracy.report_data import (
    REG_NAMES,
    VARIANT_NAMES,
    GridData,
    Paired,
    Stats,
    pts,
)


def compare_sentence(a: str, b: str, p: Paired) -> str:
    """A templated sentence on the paired differences a - b (test micro F1)."""
    name_a, name_b = VARIANT_NAMES[a], VARIANT_NAMES[b]
    if not p.diffs:
        return f"{name_a} vs {name_b}: no paired seeds finished yet."
    st = p.stats
    if st.mean > 0:
        verb = "is better than"
    elif st.mean < 0:
        verb = "is worse than"
    else:
        verb = "ties with"
    text = (
        f"{name_a} {verb} {name_b} by {pts(abs(st.mean))} F1 points on average "
        f"({p.wins} of {st.n} paired seed(s) better, {p.losses} worse"
    )
    ci = st.ci
    if ci is None:
        text += "; one seed gives no interval)."
    else:
        where = "excludes" if ci[0] > 0 or ci[1] < 0 else "includes"
        text += f"; 95 % t-interval of the mean difference [{pts(ci[0], True)}, "
        text += f"{pts(ci[1], True)}] {where} zero)."
    return text


@dataclass
class Verdict:
    reg: str
    gp_vs_base: Paired
    soft_vs_base: Paired
    soft_vs_gp: Paired

    @property
    def available(self) -> bool:
        return bool(self.gp_vs_base.diffs and self.soft_vs_gp.diffs)

    def _parts(self) -> list[tuple[Paired, int, str, str]]:
        """(difference, the sign the claim predicts, its minuend, its subtrahend)."""
        return [
            (self.gp_vs_base, +1, "gp_kl", "the baseline"),
            (self.soft_vs_gp, -1, "softmax_kl", "gp_kl"),
        ]

    @staticmethod
    def _status(p: Paired, sign: int) -> str:
        """'yes' / 'no' when the 95 % interval excludes zero on the claimed / other side,
        'unclear' when it includes zero, 'direction' with one seed (no interval)."""
        ci = p.stats.ci
        if ci is None:
            return "direction"
        if ci[0] > 0 or ci[1] < 0:
            return "yes" if (ci[0] > 0) == (sign > 0) else "no"
        return "unclear"

    @property
    def label(self) -> str:
        """holds / partly holds / unresolved / does not hold, by the 95 % intervals of the two
        paired differences (gp_kl − baseline > 0, softmax_kl − gp_kl < 0); with one seed, by
        their signs, and the label says so."""
        if not self.available:
            return "not measured yet"
        statuses = [self._status(p, sign) for p, sign, _, _ in self._parts()]
        if "direction" in statuses:
            agree = [p.stats.mean * sign > 0 for p, sign, _, _ in self._parts()]
            label = "holds" if all(agree) else "partly holds" if any(agree) else "does not hold"
            # One paired seed shows a direction, not a result: say so in the label itself.
            return label + " in direction only (1 paired seed)"
        if statuses == ["yes", "yes"]:
            return "holds"
        if "yes" in statuses:
            return "partly holds"
        if "no" in statuses:
            return "does not hold"
        return "unresolved (within seed noise)"

    @property
    def detail(self) -> str:
        if not self.available:
            return ""
        parts = []
        for p, sign, a, b in self._parts():
            status = self._status(p, sign)
            side = "better than" if p.stats.mean > 0 else "worse than"
            if status in ("yes", "no"):
                parts.append(f"{a} is {side} {b} (95 % interval excludes zero)")
            elif status == "unclear":
                parts.append(f"{a} is {side} {b} on average, within seed noise")
            else:
                parts.append(f"{a} is {side} {b} on one seed (no interval)")
        return "; ".join(parts)

    @property
    def text(self) -> str:
        return f"**{self.label}** ({self.detail})" if self.detail else self.label


def verdicts(data: GridData) -> list[Verdict]:
    out = []
    for reg in ("rdrop", "vat"):
        gp, soft = f"{reg}-gp_kl", f"{reg}-softmax_kl"
        if gp in data.variants and soft in data.variants and "baseline" in data.variants:
            out.append(
                Verdict(
                    reg,
                    data.paired(gp, "baseline"),
                    data.paired(soft, "baseline"),
                    data.paired(soft, gp),
                )
            )
    return out


def words(data: GridData) -> list[str]:
    lines = []
    base = Stats(list(data.test_f1("baseline").values()))
    if base.std is not None:
        lines.append(
            f"For scale: the baseline's test micro F1 is {base.mean_std()} over {base.n} seeds, "
            f"so its seed-to-seed standard deviation is {pts(base.std)} points."
        )
    for v in verdicts(data):
        reg = REG_NAMES[v.reg]
        if not any(p.diffs for p in (v.gp_vs_base, v.soft_vs_base, v.soft_vs_gp)):
            lines.append(f"**{reg}.** No paired seeds finished yet.")
            continue
        lines.append(
            f"**{reg}.** Verdict here on the claim that {reg} with gp_kl improves on the "
            f"baseline and softmax_kl does worse: {v.text}."
        )
        lines.append(compare_sentence(f"{v.reg}-gp_kl", "baseline", v.gp_vs_base))
        lines.append(compare_sentence(f"{v.reg}-softmax_kl", f"{v.reg}-gp_kl", v.soft_vs_gp))
        lines.append(compare_sentence(f"{v.reg}-softmax_kl", "baseline", v.soft_vs_base))
    for variant in data.variants:
        if variant == "baseline" or not data.grid.searched(variant):
            continue
        chosen = data.chosen(variant)
        if chosen is None:
            continue
        alpha, eps = chosen
        grid_alphas = [a for a, _ in data.grid.candidates(variant)]
        if alpha in (min(grid_alphas), max(grid_alphas)):
            edge = "smallest" if alpha == min(grid_alphas) else "largest"
            lines.append(
                f"{VARIANT_NAMES[variant]}: the chosen alpha {alpha:g} is the {edge} value of "
                "its grid, so the best alpha may lie outside the grid."
            )
        if eps is not None and len(set(data.grid.vat_epsilons)) > 1:
            eps_grid = data.grid.vat_epsilons
            if eps in (min(eps_grid), max(eps_grid)):
                edge = "smallest" if eps == min(eps_grid) else "largest"
                lines.append(
                    f"{VARIANT_NAMES[variant]}: the chosen epsilon {eps:g} is the {edge} value "
                    "of its grid."
                )
    base_time = data.epoch_seconds("baseline").mean
    for variant in data.variants:
        if variant == "baseline":
            continue
        t = data.epoch_seconds(variant).mean
        if t is not None and base_time:
            lines.append(
                f"{VARIANT_NAMES[variant]} took {t / base_time:.2f}x the baseline's training "
                "time per epoch."
            )
    return lines
