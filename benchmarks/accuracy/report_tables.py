"""The tables of the v1 accuracy report (``report.py``): hyper-parameters, the alpha search,
the test results and the per-type F1."""

from __future__ import annotations

import statistics
from typing import Any

from benchmarks.accuracy import accuracy_grid as G
from benchmarks.accuracy.report_data import (
    VARIANT_NAMES,
    GridData,
    Stats,
    pts,
)
from benchmarks.tables import table


def _flat(prefix: str, node: Any) -> list[tuple[str, Any]]:
    if isinstance(node, dict):
        return [kv for k, v in node.items() for kv in _flat(f"{prefix}{k}.", v)]
    return [(prefix.rstrip("."), node)]


def hyper_table(data: GridData) -> list[str]:
    ref = next(e for e in data.entries if e.cell.stage == "final" and e.config is not None)
    config = G.config_to_dict(ref.config)
    skip = {"train.seed", "train.progress", "output_dir", "regularizer.kind"}
    # A config field added to gpner after every finished cell of the grid ran (at its default,
    # the old behaviour) is not a setting of these cells: leave it out, so the report of
    # finished cells does not change when the library grows.
    stored = [e.result["config"] for e in data.entries if e.status == "done"]
    if stored:
        ran_with = {k for c in stored for k, _ in _flat("", c)}
        skip |= {k for k, _ in _flat("", config) if k not in ran_with}
    skip |= {"regularizer.divergence", "regularizer.alpha", "regularizer.epsilon"}
    if config["data"]["validation_fraction"] > 0:
        config["data"]["dev"] = "unused: the validation split is carved from data.train"
    rows = [
        (f"`{k}`", f"`{v}`")
        for k, v in _flat("", {k: config[k] for k in ("data", "encoder", "head", "train")})
        if k not in skip
    ]
    rows += [
        (f"`{k}`", f"`{config['regularizer'][k.split('.')[1]]}`")
        for k in ("regularizer.xi", "regularizer.power_iterations")
    ]
    grid = data.grid
    rows += [
        ("seeds (final cells)", ", ".join(map(str, grid.seeds))),
        ("search: seed, epochs", f"{grid.search_seed}, {grid.search_epochs}"),
        ("R-Drop alpha grid", ", ".join(f"{a:g}" for a in grid.rdrop_alphas)),
        ("VAT alpha grid", ", ".join(f"{a:g}" for a in grid.vat_alphas)),
        ("VAT epsilon grid", ", ".join(f"{e:g}" for e in grid.vat_epsilons)),
        ("reported test set", grid.test_set),
    ]
    return table(["setting", "value"], rows)


def search_table(data: GridData) -> list[str]:
    rows = []
    chosen = {v: data.chosen(v) for v in data.variants}
    for e in data.search():
        val = e.result["validation"]["f1"] if e.status == "done" else None
        mark = ""
        if e.cell.variant != "baseline" and chosen.get(e.cell.variant) == (e.alpha, e.epsilon):
            mark = "**chosen**"
        rows.append(
            (
                VARIANT_NAMES[e.cell.variant] + (" (reference)" if e.cell.kind == "none" else ""),
                "–" if e.alpha is None else f"{e.alpha:g}",
                "–" if e.epsilon is None else f"{e.epsilon:g}",
                pts(val) if val is not None else f"({e.status})",
                mark,
            )
        )
    if not rows:
        return ["No search: every regularised variant of this grid has a single candidate."]
    return table(["variant", "alpha", "epsilon", "validation micro F1", ""], rows)


def results_table(data: GridData) -> list[str]:
    rows = []
    base_time = data.epoch_seconds("baseline").mean
    for v in data.variants:
        test = Stats(list(data.test_f1(v).values()))
        val = Stats(list(data.val_f1(v).values()))
        chosen = data.chosen(v)
        alpha = "–" if not chosen or chosen[0] is None else f"{chosen[0]:g}"
        eps = "–" if not chosen or chosen[1] is None else f"{chosen[1]:g}"
        if chosen is None:
            alpha = eps = "(search unfinished)"
        if v == "baseline":
            per_seed = mean_diff = better = "–"
        else:
            p = data.paired(v, "baseline")
            per_seed = ", ".join(f"s{s}: {pts(d, True)}" for s, d in zip(p.seeds, p.diffs)) or "–"
            st = p.stats
            mean_diff = pts(st.mean, True) if st.n else "–"
            if st.ci is not None:
                mean_diff += f" [{pts(st.ci[0], True)}, {pts(st.ci[1], True)}]"
            better = f"{p.wins}/{st.n}" if st.n else "–"
        t = data.epoch_seconds(v).mean
        cost = f"{t / base_time:.2f}x" if t is not None and base_time else "–"
        seconds = f"{t:.0f}" if t is not None else "–"
        rows.append(
            (
                VARIANT_NAMES[v],
                alpha,
                eps,
                test.n,
                test.mean_std(),
                val.mean_std(),
                per_seed,
                mean_diff,
                better,
                seconds,
                cost,
            )
        )
    header = [
        "variant",
        "alpha",
        "epsilon",
        "seeds",
        "test micro F1 (mean ± std)",
        "validation F1",
        "Δ test vs baseline per seed",
        "mean Δ [95 % CI]",
        "better seeds",
        "train s/epoch",
        "cost vs baseline",
    ]
    return table(header, rows)


def per_type_table(data: GridData) -> list[str]:
    labels: list[str] = []
    means: dict[str, dict[str, float]] = {}
    for v in data.variants:
        finals = [r for r in data.final(v).values() if r.get("test")]
        if not finals:
            continue
        per = {}
        for label in sorted({k for r in finals for k in r["test"]["per_type_f1"]}):
            per[label] = statistics.fmean(r["test"]["per_type_f1"].get(label, 0.0) for r in finals)
            if label not in labels:
                labels.append(label)
        means[v] = per
    if not means:
        return ["No finished final cells yet."]
    rows = [[VARIANT_NAMES[v]] + [pts(means[v].get(label)) for label in labels] for v in means]
    return table(["variant"] + labels, rows)
