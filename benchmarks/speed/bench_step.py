"""Where a whole training step's time goes, and how best to use this machine's cores.

``breakdown``: for each config (default: the char BiLSTM of configs/quickstart.toml and
m3e-small of configs/cluener_m3e.toml, both at their batch size 32 on CLUENER), one training step
per batch (objective, backward, clipping, AdamW) is cut into encoder forward, head forward
(factors + fused losses), head backward, encoder backward and optimizer (zero_grad, gradient
clipping, AdamW step): the encoder's output is handed to the head as a fresh leaf, so the head's
backward stops there and the encoder's runs as a second ``backward`` from the leaf's gradient.
The uncut step and a GEMM of the encoder's largest linear layer at the batches' shape (forward and
both gradients: the machine's matmul rate for this model) run in the same interleaved rounds.
FLOPs per part are counted once with ``torch.utils.flop_counter.FlopCounterMode`` (matmul-like
operations: linear, bmm, attention; elementwise work is not counted); the achieved rate of the
whole step is those FLOPs over the uncut step's median time.

``parallel``: the same short training run (``gpner train``, one epoch capped at ``--steps``
steps, a one-text dev set), as one process with 2 intra-op threads (``threads``), as 2
``torchrun`` processes with 1 thread each (``processes``; data parallel: each process takes half
of every global batch), and as one process with 2 threads and ``OMP_WAIT_POLICY=PASSIVE``
(``threads_passive``; the first two run in the environment users have, without it), rotating
run by run; training throughput from the run's own metrics.jsonl (``examples_per_second``: the
training loop only).

``--recurrence packed unpacked`` runs the breakdown's BiLSTM layers both ways in the same rounds
(:func:`gpner.backends.packed_recurrence`).

``loaded``: the same short ``gpner train`` run on 2 fixed threads, 1 fixed thread and the
default (threads that follow the free cores, :mod:`gpner.threads`), alone, beside a busy
single-thread process and beside a second default ``gpner train``; training examples/s.

``versus``: the same short ``gpner train`` run as ``parallel``'s one-process layout, with this
checkout's library and with ``--baseline``'s (a temporary git worktree), alternating run by run;
training tokens/s from each run's metrics.jsonl, and the per-pair ratios.

    python3 -m benchmarks.speed.bench_step breakdown
    python3 -m benchmarks.speed.bench_step breakdown --configs configs/quickstart.toml \
        --recurrence packed unpacked
    python3 -m benchmarks.speed.bench_step parallel
    python3 -m benchmarks.speed.bench_step loaded --configs configs/quickstart.toml
    python3 -m benchmarks.speed.bench_step versus --baseline 7d770f8 \
        --configs configs/cluener_char.toml
    python3 -m benchmarks.speed.make_results
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see bench_head.py (breakdown only)

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from benchmarks.speed import measure  # noqa: E402
from gpner import regularizers as R  # noqa: E402
from gpner.backends import packed_recurrence  # noqa: E402
from gpner.config import load_config  # noqa: E402
from gpner.data.batching import LengthBucketSampler, collate, encode_examples  # noqa: E402
from gpner.data.paths import resolve  # noqa: E402
from gpner.data.readers import read  # noqa: E402
from gpner.model import build_model, build_tokenizer  # noqa: E402
from gpner.training import build_optimizer  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
RESULTS = HERE / "results"
CONFIGS = ["configs/quickstart.toml", "configs/cluener_m3e.toml"]
PARTS = ("encoder_forward", "head_forward", "head_backward", "encoder_backward", "optimizer")


class _Cut:
    """Stands in for ``model.encoder``: the encoder's output goes on as a detached leaf (kept
    with the real output for the encoder's own backward); its forward time, and with ``flops``
    its FLOPs, are added up."""

    def __init__(self, encoder: nn.Module, flops: dict | None):
        self.encoder = encoder
        self.flops = flops
        self.pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.seconds = 0.0

    def __call__(self, *args, **kwargs):
        start = time.perf_counter()
        with _counted(self.flops, "encoder_forward"):
            out = self.encoder(*args, **kwargs)
        self.seconds += time.perf_counter() - start
        leaf = out.detach().requires_grad_()
        self.pairs.append((out, leaf))
        return leaf


@contextlib.contextmanager
def _counted(flops: dict | None, part: str):
    """Adds the FLOPs run inside the block to ``flops[part]`` (nothing when ``flops`` is None);
    nested counters each count what runs inside them."""
    if flops is None:
        yield
        return
    mode = FlopCounterMode(display=False)
    with mode:
        yield
    flops[part] = flops.get(part, 0) + mode.get_total_flops()


def _optimizer_step(model, optimizer) -> None:
    nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def cut_step(model, objective, optimizer, batch, clock: dict, flops: dict | None = None) -> None:
    """One training step timed (and with ``flops`` FLOP-counted) by part; adds into ``clock``."""
    cut = _Cut(model.encoder, flops)
    # An instance attribute shadows the registered submodule for the objective's calls only.
    model.__dict__["encoder"] = cut
    try:
        start = time.perf_counter()
        with _counted(flops, "forward"):
            loss, _ = objective(model, batch)
        forward = time.perf_counter() - start
    finally:
        del model.__dict__["encoder"]
    clock["encoder_forward"] += cut.seconds
    clock["head_forward"] += forward - cut.seconds
    start = time.perf_counter()
    with _counted(flops, "head_backward"):
        loss.backward()
    clock["head_backward"] += time.perf_counter() - start
    start = time.perf_counter()
    with _counted(flops, "encoder_backward"):
        torch.autograd.backward([o for o, _ in cut.pairs], [leaf.grad for _, leaf in cut.pairs])
    clock["encoder_backward"] += time.perf_counter() - start
    start = time.perf_counter()
    _optimizer_step(model, optimizer)
    clock["optimizer"] += time.perf_counter() - start


def largest_linear(module: nn.Module) -> tuple[int, int]:
    """(out, in) of the encoder's largest linear map: an ``nn.Linear``, or an LSTM's input
    projection (``weight_ih_l*``: all gates of all time steps in one matmul, the LSTM's one
    GEMM of the batch's shape; its recurrent matmuls are one small product per step)."""
    shapes = [tuple(m.weight.shape) for m in module.modules() if isinstance(m, nn.Linear)]
    for m in module.modules():
        if isinstance(m, nn.LSTM):
            shapes += [tuple(w.shape) for n, w in m.named_parameters() if n.startswith("weight_ih")]
    if not shapes:
        raise ValueError(f"{type(module).__name__} has no linear layer to time as its GEMM")
    out_features, in_features = max(shapes, key=lambda s: s[0] * s[1])
    return out_features, in_features


def gemm_step(rows: int, out_features: int, in_features: int):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(rows, in_features, generator=g).requires_grad_()
    w = (torch.randn(out_features, in_features, generator=g) * in_features**-0.5).requires_grad_()
    grad = torch.randn(rows, out_features, generator=g)

    def step():
        x.grad = w.grad = None
        torch.nn.functional.linear(x, w).backward(grad)

    return step


def _recurrence(objective, recurrence: str):
    """The objective with its BiLSTM layers run ``packed`` (the definition, step by step) or
    ``unpacked`` (the default): the same arithmetic."""

    def run(model, batch):
        with packed_recurrence(recurrence == "packed"):
            return objective(model, batch)

    run.unwrapped = objective
    return run


def load_batches(config, count: int, examples: int):
    train = list(read(resolve(config.data.train)))
    random.Random(0).shuffle(train)
    train = train[:examples]
    labels = sorted({s.label for ex in train for s in ex.spans})
    texts = [ex.text for ex in train]
    tokenizer = build_tokenizer(config, texts)
    torch.manual_seed(0)
    model = build_model(config, labels, tokenizer, texts)  # texts: a bigram vocabulary
    features, _ = encode_examples(
        train, tokenizer, model.label2id, config.data.max_length, config.data.stride
    )
    sampler = LengthBucketSampler([len(f.input_ids) for f in features], config.train.batch_size)
    batches = [collate([features[k] for k in idx], tokenizer.pad_id) for idx in sampler]
    full = [b for b in batches if b.input_ids.shape[0] == config.train.batch_size]
    return model, labels, full[:count]


def breakdown(args) -> dict:
    data = {**measure.run_header("step"), "repeats": args.repeats, "configs": []}
    for path in args.configs:
        config = load_config(ROOT / path, args.set)
        model, labels, batches = load_batches(config, args.batches, args.examples)
        model.train()
        optimizer = build_optimizer(model, config)  # the trainer's
        objectives = {
            (kind if len(args.recurrence) == 1 else f"{kind}/{rec}"): _recurrence(
                R.build_objective(kind), rec
            )
            for kind in args.objectives
            for rec in args.recurrence
        }
        tokens = sum(int(b.input_ids.numel()) for b in batches)
        real_tokens = sum(int(b.attention_mask.sum()) for b in batches)
        out_f, in_f = largest_linear(model.encoder)
        gemm = gemm_step(tokens // len(batches), out_f, in_f)
        gemm_flops = 6 * (tokens // len(batches)) * out_f * in_f
        # FLOPs per part, counted once over the batches (deterministic shapes). The packed
        # BiLSTM runs its matmuls as ops the counter sees; the fused recurrent kernel of the
        # unpacked run does the same arithmetic in one op it does not, so counts run packed.
        counted = {}
        for kind, objective in objectives.items():
            flops: dict[str, int] = {}
            clock = dict.fromkeys(PARTS, 0.0)
            with packed_recurrence():
                for batch in batches:
                    cut_step(model, objective.unwrapped, optimizer, batch, clock, flops)
            flops["head_forward"] = flops.pop("forward") - flops["encoder_forward"]
            counted[kind] = {k: v / len(batches) for k, v in flops.items()}

        samples: dict[str, list] = {f"{k}/step": [] for k in objectives}
        parts: dict[str, list] = {k: [] for k in objectives}
        samples["gemm"] = []
        for rep in range(args.warmup + args.repeats):
            order = list(objectives)
            order = order[rep % len(order) :] + order[: rep % len(order)]
            for kind in order:
                clock = dict.fromkeys(PARTS, 0.0)
                for batch in batches:
                    cut_step(model, objectives[kind], optimizer, batch, clock)
                start = time.perf_counter()
                for batch in batches:  # the uncut step, as gpner.training runs it
                    loss, _ = objectives[kind](model, batch)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    _optimizer_step(model, optimizer)
                step_s = (time.perf_counter() - start) / len(batches)
                start = time.perf_counter()
                gemm()
                gemm_s = time.perf_counter() - start
                if rep >= args.warmup:
                    parts[kind].append({k: v / len(batches) for k, v in clock.items()})
                    samples[f"{kind}/step"].append(step_s)
                    samples["gemm"].append(gemm_s)
        gemm_rate = gemm_flops / statistics.median(samples["gemm"])
        enc = config.encoder
        name = enc.path if enc.kind == "hf" else f"char_{enc.kind} H={enc.hidden_size}"
        entry = {
            "config": path,
            "model": name,
            "encoder": enc.kind,
            "parameters": sum(p.numel() for p in model.parameters()),
            "head": config.head.kind,
            "types": len(labels),
            "batch_shapes": [list(b.input_ids.shape) for b in batches],
            "gemm_shape": [tokens // len(batches), in_f, out_f],
            "gemm_flops_per_s": gemm_rate,
            "loadavg": os.getloadavg()[0],
            "objectives": {},
        }
        for kind in objectives:
            step = measure.summary(samples[f"{kind}/step"])
            medians = {p: statistics.median(s[p] for s in parts[kind]) for p in PARTS}
            total_flops = sum(counted[kind].values())
            entry["objectives"][kind] = {
                "step": step,
                "parts_s": medians,
                "cut_total_s": sum(medians.values()),
                "flops": counted[kind],
                "achieved_flops_per_s": total_flops / step["median_s"],
                "tokens_per_s": real_tokens / len(batches) / step["median_s"],
                "share_of_rate": total_flops / step["median_s"] / gemm_rate,
            }
        data["configs"].append(entry)
        data["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
        measure.write_json(args.out, data)
        for kind, row in entry["objectives"].items():
            shares = ", ".join(
                f"{p} {100 * row['parts_s'][p] / row['cut_total_s']:.0f}%" for p in PARTS
            )
            print(
                f"{path} {kind}: step {row['step']['median_s'] * 1e3:.1f} ms ({shares}); "
                f"{row['achieved_flops_per_s'] / 1e9:.1f} GFLOP/s of {gemm_rate / 1e9:.0f}",
                flush=True,
            )
    return data


# ------------------------------------------------------------------------------- parallel


def train_run(
    config: str, layout: str, steps: int, out_dir: Path, extra: list[str], src: Path | None = None
) -> dict:
    sets = [
        "train.epochs=1",
        f"train.max_steps_per_epoch={steps}",
        "train.progress=false",
        "data.dev_limit=1",
        *extra,
    ]
    if layout != "auto":  # auto: the default, threads that follow the free cores
        sets.append(f"train.num_threads={1 if layout in ('processes', 'threads1') else 2}")
    argv = ["-m", "gpner", "train", str(ROOT / config), "--output-dir", str(out_dir)]
    for item in sets:
        argv += ["--set", item]
    env = {**os.environ, "PYTHONPATH": str(src or ROOT / "src")}
    env.pop("OMP_WAIT_POLICY", None)  # as users run it (this script sets it for itself)
    if layout == "threads_passive":
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    if layout != "processes":  # one process: threads, threads1, threads_passive, auto
        cmd = [sys.executable, *argv]
    else:
        env["OMP_NUM_THREADS"] = "1"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2"]
        cmd += ["--standalone", *argv]
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    record = json.loads((out_dir / "metrics.jsonl").read_text().splitlines()[0])
    return {
        "examples_per_second": record["examples_per_second"],
        "tokens_per_second": record["tokens_per_second"],
        "train_seconds": record["seconds"],
        "steps": record["steps"],
        "threads": record.get("threads"),  # at the epoch's end (recorded since gpner.threads)
        "wall_s": wall,
        "loadavg": os.getloadavg()[0],
    }


def parallel(args) -> dict:
    data = {**measure.run_header("parallel"), "repeats": args.repeats, "configs": []}
    layouts = ("threads", "processes", "threads_passive")
    for path in args.configs:
        steps = args.steps.get(path, args.steps["default"])
        runs: dict[str, list] = {k: [] for k in layouts}
        with tempfile.TemporaryDirectory(prefix="gpner-parallel-") as tmp:
            for rep in range(args.repeats):
                order = layouts[rep % 3 :] + layouts[: rep % 3]
                for layout in order:
                    out = Path(tmp) / f"{layout}-{rep}"
                    runs[layout].append(train_run(path, layout, steps, out, args.set))
                    r = runs[layout][-1]
                    print(
                        f"{path} {layout}: {r['examples_per_second']:.1f} ex/s "
                        f"({r['train_seconds']:.1f} s, load {r['loadavg']:.1f})",
                        flush=True,
                    )
        entry = {"config": path, "steps": steps, "runs": runs}
        for layout in layouts:
            entry[layout] = statistics.median(r["examples_per_second"] for r in runs[layout])
        data["configs"].append(entry)
        data["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
        measure.write_json(args.out, data)
    return data


# -------------------------------------------------------------------------------- loaded

LOADED_LAYOUTS = ("threads", "threads1", "auto")  # 2 threads fixed, 1 fixed, the default


@contextlib.contextmanager
def _competitor(kind: str, tmp: Path):
    """Another busy process for the block: ``busy`` (one thread spinning in Python), ``train``
    (a second ``gpner train`` of the same config with default settings), or ``none``."""
    if kind == "none":
        yield
        return
    if kind == "busy":
        cmd = [sys.executable, "-c", "while True: pass"]
    else:
        cmd = [sys.executable, "-m", "gpner", "train", str(ROOT / "configs/quickstart.toml")]
        cmd += ["--output-dir", str(tmp / "competitor"), "--set", "train.progress=false"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    env.pop("OMP_WAIT_POLICY", None)
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        time.sleep(10 if kind == "train" else 1)  # the competitor is training when we start
        yield
    finally:
        proc.kill()
        proc.wait()


def loaded(args) -> dict:
    """The same short ``gpner train`` run on 2 fixed threads, 1 fixed thread and the default
    (threads that follow the free cores), alone and beside each competitor."""
    data = {**measure.run_header("loaded"), "repeats": args.repeats, "configs": []}
    for path in args.configs:
        steps = args.steps.get(path, args.steps["default"])
        runs: dict[str, dict[str, list]] = {}
        with tempfile.TemporaryDirectory(prefix="gpner-loaded-") as tmp:
            for load in args.loads:
                runs[load] = {k: [] for k in LOADED_LAYOUTS}
                for rep in range(args.repeats):
                    order = LOADED_LAYOUTS[rep % 3 :] + LOADED_LAYOUTS[: rep % 3]
                    with _competitor(load, Path(tmp)):
                        for layout in order:
                            out = Path(tmp) / f"{load}-{layout}-{rep}"
                            runs[load][layout].append(train_run(path, layout, steps, out, args.set))
                            r = runs[load][layout][-1]
                            print(f"{path} beside {load}: {layout} {r['examples_per_second']:.1f} "
                                  f"ex/s ({r['train_seconds']:.1f} s)", flush=True)  # fmt: skip
        entry = {"config": path, "steps": steps, "runs": runs}
        entry["median"] = {
            load: {k: statistics.median(r["examples_per_second"] for r in v) for k, v in by.items()}
            for load, by in runs.items()
        }
        data["configs"].append(entry)
        data["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
        measure.write_json(args.out, data)
    return data


# -------------------------------------------------------------------------------- versus


@contextlib.contextmanager
def _worktree(rev: str):
    """A detached checkout of ``rev`` in a temporary folder (removed on exit)."""
    with tempfile.TemporaryDirectory(prefix="gpner-versus-") as tmp:
        path = Path(tmp) / "tree"
        subprocess.run(
            ["git", "worktree", "add", "--detach", "-q", str(path), rev], cwd=ROOT, check=True
        )
        try:
            yield path
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=ROOT)


def versus(args) -> dict:
    """The same short ``gpner train`` run with this checkout's library and with ``--baseline``'s,
    alternating run by run (one process, ``--layout``'s fixed threads)."""
    data = {**measure.run_header("versus"), "repeats": args.repeats, "configs": []}
    data["layout"] = args.layout
    rev = subprocess.run(
        ["git", "rev-parse", "--short", args.baseline], cwd=ROOT, capture_output=True, text=True,
        check=True,
    ).stdout.strip()  # fmt: skip
    data["baseline"] = rev
    with _worktree(rev) as tree, tempfile.TemporaryDirectory(prefix="gpner-versus-") as tmp:
        for path in args.configs:
            steps = args.steps.get(path, args.steps["default"])
            runs: dict[str, list] = {"baseline": [], "current": []}
            for rep in range(args.repeats):
                order = ["baseline", "current"] if rep % 2 == 0 else ["current", "baseline"]
                for side in order:
                    src = tree / "src" if side == "baseline" else ROOT / "src"
                    out = Path(tmp) / f"{side}-{rep}"
                    runs[side].append(train_run(path, args.layout, steps, out, args.set, src))
                    r = runs[side][-1]
                    print(
                        f"{path} {side}: {r['tokens_per_second']:.0f} tokens/s "
                        f"({r['train_seconds']:.1f} s, load {r['loadavg']:.1f})",
                        flush=True,
                    )
            entry = {"config": path, "steps": steps, "runs": runs}
            for side, rows in runs.items():
                entry[side] = statistics.median(r["tokens_per_second"] for r in rows)
            ratios = [c["tokens_per_second"] / b["tokens_per_second"] for b, c in zip(
                runs["baseline"], runs["current"], strict=True
            )]  # fmt: skip
            entry["paired_ratios"] = ratios
            data["configs"].append(entry)
            data["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
            measure.write_json(args.out, data)
    return data


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("what", choices=["breakdown", "parallel", "versus", "loaded"])
    p.add_argument(
        "--loads",
        nargs="+",
        choices=["none", "busy", "train"],
        default=["none", "busy", "train"],
        help="loaded: what runs beside (none, a busy 1-thread process, a default gpner train)",
    )
    p.add_argument("--baseline", default="HEAD", help="versus: the commit to compare with")
    p.add_argument(
        "--layout",
        choices=["threads", "threads1"],
        default="threads",
        help="versus: 2 threads (as users run it on an idle machine) or 1 (robust to other load)",
    )
    p.add_argument("--configs", nargs="+", default=CONFIGS)
    p.add_argument("--set", action="append", default=[], help="config override for every run")
    p.add_argument("--objectives", nargs="+", default=["none", "rdrop"])
    p.add_argument(
        "--recurrence",
        nargs="+",
        choices=["unpacked", "packed"],
        default=["unpacked"],
        help="breakdown: how BiLSTM layers run (both: side by side in the same rounds)",
    )
    p.add_argument("--batches", type=int, default=8, help="breakdown: batches per round")
    p.add_argument("--examples", type=int, default=4000, help="breakdown: texts to batch from")
    p.add_argument("--repeats", type=int, default=None, help="default: 7 breakdown, 3 parallel")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="parallel: training steps per run (default: 80 char, 25 m3e-small)",
    )
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.what == "breakdown":
        args.repeats = args.repeats or 7
        args.out = args.out or RESULTS / "step.json"
        breakdown(args)
        return
    args.repeats = args.repeats or (3 if args.what == "parallel" else 5)
    args.out = args.out or RESULTS / f"{args.what}.json"
    fixed = {"default": args.steps or 80}
    if args.steps is None:
        fixed["configs/cluener_m3e.toml"] = 25
    args.steps = fixed
    {"parallel": parallel, "versus": versus, "loaded": loaded}[args.what](args)


if __name__ == "__main__":
    main()
