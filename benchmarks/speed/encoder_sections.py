"""RESULTS.md sections of the from-scratch encoder's speed (issue: time to a useful model):
the training run against an earlier commit (``bench_step.py versus``) and under a competing load
(``bench_step.py loaded``). Called by ``make_results.py``; reads only the JSONs."""

from __future__ import annotations

import statistics

LAYOUT_NAMES = {
    "threads": "2 threads (fixed)",
    "threads1": "1 thread (fixed)",
    "auto": "default: threads that follow the free cores",
}
LOAD_NAMES = {
    "none": "nothing else",
    "busy": "a busy single-thread process",
    "train": "a second default `gpner train` (quickstart)",
}


def _header(data: dict, title: str) -> list[str]:
    m, src = data["machine"], data.get("source", {})
    return [
        f"## {title}",
        "",
        f"- Machine: {m['cpu']}, {m['cores']} cores; torch {m['torch']}.",
        f"- Code: commit {src.get('commit', '?')}"
        + (" with uncommitted src changes" if src.get("src_dirty") else "")
        + f"; run {data['started']} to {data.get('finished', '?')}.",
        f"- Command: `{data['command']}`",
    ]


def versus_section(data: dict) -> list[str]:
    out = _header(data, "The training run against an earlier commit (bench_step.py versus)")
    out += [
        f"- The same `gpner train` run (one epoch capped at the given steps, batch 32, a one-text "
        f"dev set, {1 if data.get('layout') == 'threads1' else 2} fixed thread(s)) with the "
        f"library of commit {data['baseline']} and with this "
        "checkout's, alternating run by run. Throughput: the run's own `tokens_per_second` "
        "(real tokens, the training loop only, first steps included), median [range].",
        "",
        f"| config | steps per run | {data['baseline']} tokens/s | this commit tokens/s "
        "| ratio of medians | paired ratios |",
        "|---|---|---|---|---|---|",
    ]
    for c in data["configs"]:

        def cell(side: str, c=c) -> str:
            values = [r["tokens_per_second"] for r in c["runs"][side]]
            return f"{statistics.median(values):.0f} [{min(values):.0f}-{max(values):.0f}]"

        ratios = ", ".join(f"{r:.2f}" for r in c["paired_ratios"])
        out.append(
            f"| {c['config']} | {c['steps']} | {cell('baseline')} | {cell('current')} "
            f"| **{c['current'] / c['baseline']:.2f}x** | {ratios} |"
        )
    return [*out, ""]


def loaded_section(data: dict) -> list[str]:
    out = _header(data, "Training beside other work (bench_step.py loaded)")
    out += [
        "- The same short `gpner train` run on 2 fixed threads, on 1 fixed thread and with the "
        "default (`train.num_threads` unset: threads that follow the free cores, "
        "`gpner.threads`), alone and beside each competitor, which starts before and runs "
        "throughout. Training examples/s (the run's own), median over the repeats; the threads "
        "column is what the default ran at the end of its epoch.",
        "",
        "| config | beside | "
        + " | ".join(LAYOUT_NAMES[k] for k in LAYOUT_NAMES)
        + " | default's threads | default / best fixed |",
        "|---|---|" + "---|" * (len(LAYOUT_NAMES) + 2),
    ]
    for c in data["configs"]:
        for load, by in c["runs"].items():
            med = c["median"][load]
            best = max(med["threads"], med["threads1"])
            threads = sorted({r["threads"] for r in by["auto"]})
            out.append(
                f"| {c['config']} | {LOAD_NAMES[load]} | "
                + " | ".join(f"{med[k]:.1f}" for k in LAYOUT_NAMES)
                + f" | {', '.join(map(str, threads))} | {med['auto'] / best:.2f} |"
            )
    return [*out, ""]
