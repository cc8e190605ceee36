"""The README's main job, timed as a newcomer runs it, for the default and its alternatives.

Each variant clones the repository's committed HEAD into a fresh directory and runs the main-job
command from the README's first lines there (the pip install left out, as the target excludes
it), with the variant's ``--set`` overrides added to its ``gpner train``. ``gpner`` runs as
``python3 -m gpner`` on the clone's ``src`` so the clone's code runs whatever is installed.
Wall time covers train, evaluate and predict; the result (time, dev P/R/F1, the demo's spans and
which of its expected entities were found) goes to ``results/main_job__<variant>.json`` as soon
as the variant finishes, and ``MAIN_JOB.md`` is regenerated from every such file.

    PYTHONPATH=src nice python3 -m benchmarks.recipes.main_job default no-bigrams --machine "idle"
    PYTHONPATH=src python3 -m benchmarks.recipes.main_job --report  # MAIN_JOB.md, JSONs only

Data: where gpner finds it from this checkout (``GPNER_DATA``, else ``../shared/data``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import cellrunner as CR
from gpner.atomic import atomic_write_json
from gpner.data.paths import data_root

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
RESULTS = HERE / "results"
REPORT = HERE / "MAIN_JOB.md"

# variant -> (overrides of configs/quickstart.toml, what it is)
VARIANTS: dict[str, tuple[tuple[str, ...], str]] = {
    "default": ((), "the config as committed at the commit named"),
    "egp": (
        ("head.kind=efficient_global_pointer",),
        "the Efficient GlobalPointer head (its projection is 2 x 64 wide, not 10 types x 2 x 64)",
    ),
    "egp-8": (
        ("head.kind=efficient_global_pointer", "train.epochs=8"),
        "the Efficient GlobalPointer head, 8 epochs",
    ),
    "gp-8": (("train.epochs=8",), "8 epochs"),
    "no-bigrams": (
        ("encoder.bigrams=false", "train.lr=1e-2"),
        "the previous default: the BiLSTM without bigrams, lr 1e-2",
    ),
    "bigrams-lr1e-2": (("train.lr=1e-2",), "BiLSTM + bigrams at the previous lr 1e-2"),
}

# The demo's entities as CLUENER annotates such text (label, surface form).
EXPECTED = {
    "我在北京大学读书，喜欢看《三体》。": [("organization", "北京大学"), ("book", "《三体》")],
    "腾讯公司的马化腾今天访问了上海。": [
        ("company", "腾讯公司"),
        ("name", "马化腾"),
        ("address", "上海"),
    ],
}


def main_job_steps(readme: str) -> list[str]:
    """The README's main-job command split at ``&&``, without its pip install step."""
    lines = readme.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("# Main job"):
            steps = [s.strip() for s in lines[i + 1].split(" && ")]
            return [s for s in steps if "pip install" not in s]
    raise SystemExit("README.md: no '# Main job' line followed by the command")


def run_variant(name: str, machine: str, at: str | None = None) -> dict:
    overrides, what = VARIANTS[name]
    environment = CR.environment(ROOT)  # versions and the commit the clone is made of
    with tempfile.TemporaryDirectory(prefix="gpner-main-job-") as tmp:
        clone = Path(tmp) / "gpner"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        if at is not None:  # an earlier commit, to time it beside this one
            subprocess.run(["git", "-C", str(clone), "checkout", "-q", at], check=True)
            environment["git_commit"] = subprocess.run(
                ["git", "-C", str(clone), "rev-parse", "HEAD"],
                capture_output=True, text=True, check=True,
            ).stdout.strip()  # fmt: skip
        steps = main_job_steps((clone / "README.md").read_text(encoding="utf-8"))
        gpner = f"{sys.executable} -m gpner "
        steps = [re.sub(r"(^|\| )gpner ", lambda m: m.group(1) + gpner, s) for s in steps]
        sets = "".join(f" --set {o}" for o in overrides)
        steps = [s + sets if " gpner train " in s else s for s in steps]
        env = {**os.environ, "PYTHONPATH": str(clone / "src"), "GPNER_DATA": str(data_root())}
        outputs = []
        start = time.perf_counter()
        for step in steps:
            done = subprocess.run(
                ["bash", "-c", step], cwd=clone, env=env, capture_output=True, text=True
            )
            if done.returncode:
                raise SystemExit(f"{name}: `{step}` failed:\n{done.stderr[-2000:]}")
            outputs.append(done.stdout)
        seconds = time.perf_counter() - start
    evaluated = json.loads(outputs[-2])  # evaluate prints the metrics as one JSON document
    predicted = [json.loads(line) for line in outputs[-1].splitlines() if line.strip()]
    found = {r["text"]: {(s["label"], s["text"]) for s in r["spans"]} for r in predicted}
    if set(found) != set(EXPECTED):
        raise SystemExit(f"{name}: the README's demo sentences are not EXPECTED's: {list(found)}")
    return {
        "variant": name,
        "what": what,
        "overrides": list(overrides),
        "commit": environment["git_commit"],
        "steps": [s.replace(sys.executable, "python3") for s in steps],  # no machine path
        "seconds": seconds,
        "dev": evaluated["micro"],
        "demo": predicted,
        "expected_found": sum(e in found.get(t, ()) for t, es in EXPECTED.items() for e in es),
        "expected": sum(len(es) for es in EXPECTED.values()),
        "machine": machine,
        "environment": environment,
        "finished_at": CR.now(),
    }


def report() -> str:
    rows = []
    for path in sorted(RESULTS.glob("main_job__*.json")):
        r = json.loads(path.read_text(encoding="utf-8"))
        spans = "; ".join(f"{s['text']} ({s['label']})" for rec in r["demo"] for s in rec["spans"])
        sets = " ".join(f"`{o}`" for o in r["overrides"]) or "–"
        rows.append(
            f"| `{r['variant']}` | {r['what']} | {sets} | {r['dev']['precision']:.4f} "
            f"| {r['dev']['recall']:.4f} | **{r['dev']['f1']:.4f}** | {r['seconds']:.0f} "
            f"| {r['expected_found']} of {r['expected']} | {spans or '–'} "
            f"| {r['commit'][:7]} | {r['machine']} |"
        )
    return "\n".join(
        [
            "# The main job: default and alternatives, timed as typed",
            "",
            "Generated by `python3 -m benchmarks.recipes.main_job --report` from "
            "`results/main_job__*.json`. Each row is the README's main job (train "
            "`configs/quickstart.toml` with the row's overrides, evaluate on CLUENER dev, "
            "predict the two demo sentences) run in a fresh clone of the commit named, pip "
            "install excluded, on 2 CPU cores. Seconds are wall time of the three commands. "
            "Demo: how many of the five entities the sentences hold (北京大学, 《三体》, 腾讯公司, "
            "马化腾, 上海) were predicted with their CLUENER label, and every span predicted.",
            "",
            "| variant | what | overrides | P | R | F1 | seconds | demo entities | demo spans "
            "| commit | machine |",
            "|---|---|---|---:|---:|---:|---:|---|---|---|---|",
            *rows,
            "",
        ]
    )


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("variants", nargs="*", help=f"any of {', '.join(VARIANTS)}")
    p.add_argument("--machine", default="not recorded", help="what else ran meanwhile")
    p.add_argument(
        "--at",
        metavar="REV",
        help="run the variants in a clone checked out at REV (results/main_job__<variant>__"
        "<commit>.json), e.g. the commit before a change, to time both in one session",
    )
    p.add_argument("--report", action="store_true", help="only regenerate MAIN_JOB.md")
    args = p.parse_args(argv)
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    RESULTS.mkdir(exist_ok=True)
    for name in [] if args.report else args.variants:
        result = run_variant(name, args.machine, args.at)
        suffix = f"__{result['commit'][:7]}" if args.at else ""
        out = RESULTS / f"main_job__{name}{suffix}.json"
        atomic_write_json(out, result)
        print(
            f"{name}: dev F1 {result['dev']['f1']:.4f}, {result['seconds']:.0f} s, demo "
            f"{result['expected_found']}/{result['expected']}",
            flush=True,
        )
    REPORT.write_text(report(), encoding="utf-8")


if __name__ == "__main__":
    main()
