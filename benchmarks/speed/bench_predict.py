#!/usr/bin/env python3
"""Prediction speed and parity: torch eager against onnxruntime fp32 and int8, side by side.

For each trained model given (a model directory), in one run:

1. export it to ONNX in a temporary directory: the standard fp32 graph, the same graph with
   onnxruntime's transformer fusions (``gpner.export.fuse_onnx``), and gpner's int8 (fused,
   then dynamic quantisation with per-channel weight scales; ``gpner.quantize``) in three
   forms: every product that reads a GELU kept fp32, only the one chosen on training texts
   (``--calibrate``), and none;
2. parity on the dev set: the largest |logit difference| over valid cells between torch and
   each onnxruntime graph (every dev batch), whether every text gets identical spans, and the
   dev micro F1 of every backend;
3. speed of :func:`gpner.inference.predict_examples` (tokenization, windowing, model, decoding:
   the whole pipeline) at batch sizes 32 and 1, the backends interleaved repeat by repeat
   (rotating order, ``measure.time_side_by_side``), medians over repeats, as texts/s and content
   tokens/s; and, to see what bounds the end-to-end ratio, the model call alone on the same
   batches, timed the same way.

    nice python3 -m benchmarks.speed.bench_predict --model char=runs/quickstart/best \\
        --model m3e-small=runs/cluener_m3e/best              # -> results/predict.json, PREDICT.md
    python3 -m benchmarks.speed.bench_predict --report      # PREDICT.md from the JSON only

Both backends use the same number of intra-op threads (``--threads``, default torch's), and
``OMP_WAIT_POLICY=PASSIVE`` as the other speed benchmarks (see README.md).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from benchmarks.speed import measure  # noqa: E402

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "predict.json"
REPORT = HERE / "PREDICT.md"
BACKENDS = (
    "torch",
    "onnxruntime",
    "onnxruntime-fused",
    "onnxruntime-int8",
    "onnxruntime-int8-cal",
    "onnxruntime-int8-all",
)
# onnxruntime: the standard-ONNX export; -fused: with onnxruntime's transformer fusions (fp32);
# -int8: gpner's int8 (fused, then dynamic int8 with per-channel weight scales, the products
# that read a GELU kept fp32: `gpner export --int8`); -int8-cal: only --fp32-budget of them,
# chosen on the --calibrate training texts (`gpner export --int8 --calibrate`); -int8-all:
# every product int8
# the F1 condition of each backend's target: fp32 gives every text the same spans, int8 <= 0.3
FP32 = ("onnxruntime", "onnxruntime-fused")


def _load_avg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _batches(model, examples, batch_size: int):
    """The (input_ids, attention_mask) batches predict_examples builds for ``examples``."""
    from gpner.data.batching import batches_by_length, collate, encode_examples
    from gpner.data.spans import Example

    features, _ = encode_examples(
        [Example(ex.text, []) for ex in examples],
        model.tokenizer,
        model.label2id,
        model.config.data.max_length,
        model.config.data.stride,
    )
    out = []
    for index in batches_by_length([len(f.input_ids) for f in features], batch_size):
        batch = collate([features[k] for k in index], model.tokenizer.pad_id)
        out.append((batch.input_ids, batch.attention_mask))
    tokens = sum(len(f.input_ids) for f in features)
    return out, tokens


def parity(torch_model, runtime, examples, predictions=None) -> dict:
    """Largest logit difference on valid cells, masks equal, spans identical per text
    (``predictions``: the torch model's on ``examples``, if already computed)."""
    from gpner.inference import predict_examples

    low = torch.finfo(torch.float32).min
    worst, masks_equal, cells = 0.0, True, 0
    batches, _ = _batches(torch_model, examples, 32)
    for ids, mask in batches:
        with torch.no_grad():
            expected = torch_model(ids, mask)
        got = runtime(ids, mask)
        valid = expected > low
        masks_equal &= bool(torch.equal(got > low, valid))
        cells += int(valid.sum())
        worst = max(worst, float((got[valid] - expected[valid]).abs().max()))
    a = predictions if predictions is not None else predict_examples(torch_model, examples, 32)
    b = predict_examples(runtime, examples, 32)
    differ = sum([s for s, _ in x] != [s for s, _ in y] for x, y in zip(a, b))
    return {
        "max_abs_logit_diff": worst,
        "valid_cells": cells,
        "masks_equal": masks_equal,
        "texts_with_different_spans": differ,
        "texts": len(examples),
        "spans": sum(len(x) for x in a),
    }


def speed(models: dict, examples, batch_size: int, repeats: int) -> dict:
    """End-to-end predict and the model call alone, each backend side by side."""
    from gpner.inference import predict_examples

    reference = models["torch"]
    batches, tokens = _batches(reference, examples, batch_size)

    def predict_step(model):
        return lambda: predict_examples(model, examples, batch_size)

    def model_step(model):
        if isinstance(model, torch.nn.Module):

            def step():
                with torch.no_grad():
                    for ids, mask in batches:
                        model(ids, mask)

            return step
        return lambda: [model(ids, mask) for ids, mask in batches]

    end_to_end = measure.time_side_by_side(
        {k: predict_step(m) for k, m in models.items()}, repeats, warmup=1
    )
    model_only = measure.time_side_by_side(
        {k: model_step(m) for k, m in models.items()}, repeats, warmup=1
    )
    out = {"batch_size": batch_size, "texts": len(examples), "tokens": tokens, "backends": {}}
    for name in models:
        e2e = measure.summary(end_to_end[name])
        call = measure.summary(model_only[name])
        out["backends"][name] = {
            "predict": e2e,
            "model_call": call,
            "texts_per_s": len(examples) / e2e["median_s"],
            "tokens_per_s": tokens / e2e["median_s"],
            "ms_per_text": 1000 * e2e["median_s"] / len(examples),
            "model_share": call["median_s"] / e2e["median_s"],
        }
    base = out["backends"]["torch"]
    for row in out["backends"].values():
        row["speedup_predict"] = base["predict"]["median_s"] / row["predict"]["median_s"]
        row["speedup_model_call"] = base["model_call"]["median_s"] / row["model_call"]["median_s"]
    return out


def skip_layernorm_check(threads: int, repeats: int, shape=(32, 38, 512)) -> dict:
    """One residual Add + LayerNormalization, as onnxruntime's fused SkipLayerNormalization
    kernel and as the two standard operators (sessions with no graph rewrites), timed side by
    side: why :data:`gpner.ort.DISABLED_OPTIMIZERS` turns that fusion off. ``shape``: a
    batch of 32 CLUENER texts through m3e-small (B, L, H)."""
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from gpner.ort import session_options

    hidden = shape[-1]
    params = [
        numpy_helper.from_array(np.ones(hidden, np.float32), "gamma"),
        numpy_helper.from_array(np.zeros(hidden, np.float32), "beta"),
    ]
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(shape)) for n in "xsy"]
    graphs = {
        "fused SkipLayerNormalization": [
            helper.make_node(
                "SkipLayerNormalization",
                ["x", "s", "gamma", "beta"],
                ["y"],
                domain="com.microsoft",
                epsilon=1e-12,
            )
        ],  # fmt: skip
        "Add + LayerNormalization": [
            helper.make_node("Add", ["x", "s"], ["z"]),
            helper.make_node("LayerNormalization", ["z", "gamma", "beta"], ["y"], epsilon=1e-12),
        ],
    }
    rng = np.random.default_rng(0)
    feed = {
        "x": rng.standard_normal(shape, np.float32),
        "s": rng.standard_normal(shape, np.float32),
    }
    steps = {}
    for name, nodes in graphs.items():
        graph = helper.make_graph(nodes, "g", io[:2], io[2:], params)
        proto = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)],
        )
        options = session_options(threads)  # gpner's, but with no graph rewrites at all
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        session = ort.InferenceSession(proto.SerializeToString(), options)
        steps[name] = lambda session=session: [session.run(None, feed) for _ in range(50)]
    times = measure.time_side_by_side(steps, repeats, warmup=1)
    return {
        "shape": list(shape),
        "ms": {k: 1000 * measure.summary(v)["median_s"] / 50 for k, v in times.items()},
    }


def _history(directory: str | Path) -> list[dict]:
    """The per-epoch records of a model directory's training run, from the run's metrics.jsonl
    beside it (empty when there is none)."""
    metrics = Path(directory).resolve().parent / "metrics.jsonl"
    if not metrics.is_file():
        return []
    lines = metrics.read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    return [r for r in records if "epoch" in r]


def epochs_run(directory: str | Path) -> int | None:
    """Epochs the training run of a model directory completed (None when unknown): a run cut
    short, or stopped early, differs from its config's epochs."""
    history = _history(directory)
    return max(h["epoch"] for h in history) if history else None


def best_epoch(directory: str | Path) -> int | None:
    """The epoch of the run's best dev F1 (the one saved as the model), None when unknown."""
    scored = [h for h in _history(directory) if isinstance(h.get("dev"), dict)]
    if not scored:
        return None
    return max(scored, key=lambda h: (h["dev"]["micro"]["f1"], -h["epoch"]))["epoch"]


def bench_model(name: str, directory: str, dev, calibration, args, work: Path) -> dict:
    import onnx

    import gpner
    from gpner.export import export_onnx, fuse_onnx
    from gpner.inference import evaluate, predict_examples
    from gpner.ort import OnnxModel
    from gpner.quantize import quantization_record, quantize_onnx

    print(f"[{name}] loading {directory}", file=sys.stderr, flush=True)
    model = gpner.load(directory)
    result: dict = {
        "model": name,
        "encoder": model.config.encoder.kind,
        "encoder_path": model.config.encoder.path,
        "head": model.config.head.kind,
        "parameters": sum(p.numel() for p in model.parameters()),
        "trained": model.config.train.__dict__
        | {"data.train_limit": model.config.data.train_limit},
        "epochs_run": epochs_run(directory),
        "best_epoch": best_epoch(directory),
    }
    fp32, int8 = work / f"{name}.onnx", work / f"{name}.int8.onnx"
    fused, int8_all = work / f"{name}.fused.onnx", work / f"{name}.int8-all.onnx"
    start = time.perf_counter()
    export_onnx(model, fp32)
    result["export_s"] = time.perf_counter() - start
    start = time.perf_counter()
    onnx.save_model(fuse_onnx(onnx.load(str(fp32))), str(fused))
    result["fuse_s"] = time.perf_counter() - start
    start = time.perf_counter()
    quantize_onnx(fp32, int8)  # gpner's defaults: fused, per channel, fp32 after a GELU
    result["quantize_s"] = time.perf_counter() - start
    int8_cal = work / f"{name}.int8-cal.onnx"
    start = time.perf_counter()
    quantize_onnx(fp32, int8_cal, calibration=calibration, fp32_budget=args.fp32_budget)
    result["calibrated_quantize_s"] = time.perf_counter() - start
    quantize_onnx(fp32, int8_all, fp32_after_gelu=False)
    files = {"fp32": fp32, "fused": fused, "int8": int8, "int8-cal": int8_cal, "int8-all": int8_all}
    result["onnx_mib"] = {k: f.stat().st_size / 2**20 for k, f in files.items()}
    models = {"torch": model} | {
        backend: OnnxModel(path, threads=args.threads)
        for backend, path in zip(BACKENDS[1:], files.values())
    }
    result["quantization"] = {
        k: quantization_record(files[k]) for k in ("int8", "int8-cal", "int8-all")
    }
    print(f"[{name}] parity and F1", file=sys.stderr, flush=True)
    expected = predict_examples(model, dev, 32)
    result["parity"] = {k: parity(model, models[k], dev, expected) for k in BACKENDS[1:]}
    result["dev_f1"] = {k: evaluate(m, dev, 32)["micro"]["f1"] for k, m in models.items()}
    result["speed"] = []
    for batch_size, count in (
        (32, args.batch32_texts or len(dev)),
        (1, args.batch1_texts or len(dev)),
    ):
        print(f"[{name}] speed at batch size {batch_size}", file=sys.stderr, flush=True)
        row = speed(models, dev[:count], batch_size, args.repeats)
        row["load_avg_after"] = _load_avg()
        result["speed"].append(row)
    return result


# ------------------------------------------------------------------------------------ report


def _f(x: float, digits: int = 2) -> str:
    return f"{x:,.{digits}f}"


def _quantization_lines(m: dict, data: dict) -> list[str]:
    """What each int8 form kept fp32, and, for the calibrated one, the divergence that chose."""
    q = m.get("quantization")
    if not q:
        return []
    lines = ["Products kept fp32 by each int8 form:", ""]
    for k, r in q.items():
        kept = ", ".join(f"`{n}`" for n in r["fp32_products"]) or "none"
        lines.append(f"- {k}: {kept}")
        cal = r.get("calibration")
        if cal and cal["divergence"]:
            lines[-1] += (
                f"; chosen on the first {cal['texts']} texts of {data['calibrate']} (budget "
                f"{cal['budget']}, {_f(m['calibrated_quantize_s'], 1)} s): the GlobalPointer "
                "divergence D between the int8 and fp32 logits with each candidate kept fp32, "
                + "; ".join(
                    f"step {i + 1}: " + ", ".join(f"`{n}` {d:.1f}" for n, d in step.items())
                    for i, step in enumerate(cal["divergence"])
                )
            )
    return [*lines, ""]


def report(data: dict) -> str:
    env = data["environment"]
    lines = [
        "# Prediction speed: torch eager vs onnxruntime (fp32, fused fp32, int8)",
        "",
        f"Generated by `benchmarks/speed/bench_predict.py` from `results/predict.json` "
        f"({data['finished_at']}); no number here is typed by hand. Each model's command is "
        "given with it; `python3 -m benchmarks.speed.bench_predict --report` rewrites this file "
        "from the JSON.",
        "",
        f"Machine: {env['cpu']}, {env['cores']} cores, {env['threads']} intra-op threads for "
        f"both backends, torch {env['torch']}, onnxruntime {env['onnxruntime']}, "
        f"OMP_WAIT_POLICY={env['omp_wait_policy']} (onnxruntime's idle threads "
        f"{'spin' if env.get('onnxruntime_spinning') else 'sleep'} alike). "
        + (
            "The run had the machine to itself (the other jobs waited on a lock; load averages "
            "below: 1, 5, 15 min). "
            if data.get("exclusive")
            else "The CPU was shared with other jobs (load averages below: 1, 5, 15 min), so "
            "absolute rates are low and noisy. "
        )
        + "The ratios are measured side by side (backends interleaved repeat by repeat).",
        "",
        f"Data: {data['dev']} ({data['dev_texts']} texts). `predict` is the whole pipeline "
        "(`gpner.inference.predict_examples`: tokenization, windowing, batching by length, the "
        "model, decoding); `model call` is the backend alone on the same batches. Medians over "
        f"{data['repeats']} repeats; speed at batch size 32 on the first "
        f"{data.get('batch32_texts', data['dev_texts'])} texts, per-text latency at batch size 1 "
        f"(ms/text) on the first {data.get('batch1_texts', data['dev_texts'])}; parity and F1 on "
        "all of them.",
        "",
    ]
    for m in data["models"]:
        t = m["trained"]
        lines += [
            f"## {m['model']}: {m['encoder']} encoder"
            + (f" `{m['encoder_path']}`" if m["encoder_path"] else "")
            + f", {m['head']} head, {m['parameters']:,} parameters",
            "",
            "Trained: "
            + (
                f"{m['epochs_run']} of the config's {t['epochs']} epochs ("
                + (
                    f"stopped early: {t['patience']} epochs without a dev gain, best epoch kept"
                    if t.get("patience")
                    and m.get("best_epoch") is not None
                    and m["epochs_run"] - m["best_epoch"] >= t["patience"]
                    else "cut short; the learning rate schedule is the config's"
                )
                + ")"
                if m.get("epochs_run") is not None and m["epochs_run"] < t["epochs"]
                else f"{t['epochs']} epoch(s)"
            )
            + f", batch {t['batch_size']}, lr "
            f"{t['lr']}"
            + (f", encoder lr {t['encoder_lr']}" if t.get("encoder_lr") else "")
            + (
                f", first {t['data.train_limit']} training texts"
                if t.get("data.train_limit")
                else ", full training set"
            )
            + f". Measured by `{m.get('run', data)['command']}` (load average at its start "
            f"{m.get('run', data)['load_avg_start']}, at its end "
            f"{m.get('run', data)['load_avg_end']})"
            + f". Export {_f(m['export_s'], 1)} s, fusion {_f(m['fuse_s'], 1)} s, int8 "
            f"quantisation (fusion included) {_f(m['quantize_s'], 1)} s; ONNX "
            + ", ".join(f"{_f(v, 1)} MiB {k}" for k, v in m["onnx_mib"].items())
            + ".",
            "",
            *_quantization_lines(m, data),
            "| parity vs torch | max abs logit diff (valid cells) | masks equal | texts with "
            "different spans | dev micro F1 | F1 change (points) |",
            "|---|---|---|---|---|---|",
        ]
        f1 = m["dev_f1"]
        lines.append(f"| torch eager | - | - | - | {f1['torch']:.4f} | - |")
        for label, p in m["parity"].items():
            change = 100 * (f1[label] - f1["torch"])
            lines.append(
                f"| {label} | {p['max_abs_logit_diff']:.2e} | {p['masks_equal']} | "
                f"{p['texts_with_different_spans']} of {p['texts']} | {f1[label]:.4f} | "
                f"{change:+.2f} |"
            )
        lines += [
            "",
            "| batch | backend | texts/s | tokens/s | ms/text | speed-up (predict) | model "
            "call share | speed-up (model call) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for row in m["speed"]:
            for name, b in row["backends"].items():
                lines.append(
                    f"| {row['batch_size']} ({row['texts']} texts) | {name} | "
                    f"{_f(b['texts_per_s'], 1)} | {_f(b['tokens_per_s'], 0)} | "
                    f"{_f(b['ms_per_text'], 2)} | {b['speedup_predict']:.2f}x | "
                    f"{100 * b['model_share']:.0f} % | {b['speedup_model_call']:.2f}x |"
                )
        lines.append("")
    if "skip_layernorm" in data:
        op = data["skip_layernorm"]
        ms = op["ms"]
        lines += [
            "## Why gpner's onnxruntime sessions skip one fusion",
            "",
            "onnxruntime fuses a residual Add and its LayerNormalization into one "
            "SkipLayerNormalization when a session opens. Both forms of that one operation, "
            f"input {tuple(op['shape'])} (a batch of 32 CLUENER texts in m3e-small), timed side "
            f"by side in the same run (median ms per call): "
            + ", ".join(f"{k} {v:.3f} ms" for k, v in ms.items())
            + ". `gpner.ort.DISABLED_OPTIMIZERS` therefore turns that fusion off, and "
            "`gpner.export.fuse_onnx` leaves it out.",
            "",
        ]
    lines += [
        "Targets of issue 18: onnxruntime >= 1.5x torch eager at batch 32 and >= 2x at batch 1 "
        "(per-text latency), F1 unchanged (fp32) or within 0.3 points (int8). A cell says met "
        "only when both its speed and its F1 condition hold (fp32: every text gets the same "
        "spans as torch).",
        "",
        "| model | batch | target | onnxruntime fp32 | fused fp32 | int8 (GELU readers fp32) "
        "| int8, calibrated | int8, all products | F1 change fp32 / fused / int8 / calibrated / "
        "all (points) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for m in data["models"]:
        f1 = m["dev_f1"]
        change = {k: 100 * (f1[k] - f1["torch"]) for k in BACKENDS if k in f1}
        same = {
            k: m["parity"][k]["texts_with_different_spans"] == 0
            if k in FP32
            else abs(change[k]) <= 0.3
            for k in BACKENDS[1:]
            if k in f1
        }
        for row in m["speed"]:
            need = 1.5 if row["batch_size"] > 1 else 2.0
            cells = []
            for k in BACKENDS[1:]:
                if k not in row["backends"]:  # measured before this form existed
                    cells.append("-")
                    continue
                x = row["backends"][k]["speedup_predict"]
                cells.append(f"{x:.2f}x ({'met' if x >= need and same[k] else 'missed'})")
            lines.append(
                f"| {m['model']} | {row['batch_size']} | {need}x | "
                + " | ".join(cells)
                + " | "
                + " / ".join(f"{change[k]:+.2f}" if k in change else "-" for k in BACKENDS[1:])
                + " |"
            )
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", action="append", default=[], metavar="NAME=DIR")
    p.add_argument("--dev", default="cluener/dev.json", help="relative to the data root")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument(
        "--calibrate",
        default="cluener/train.json",
        help="texts that choose what -int8-cal keeps fp32 (relative to the data root; "
        "training data, never the dev set the F1 is reported on)",
    )
    p.add_argument("--calibrate-texts", type=int, default=1024, help="its first N texts")
    p.add_argument("--fp32-budget", type=int, default=1, help="products -int8-cal keeps fp32")
    p.add_argument("--threads", type=int, default=None, help="default: torch's thread count")
    p.add_argument("--batch1-texts", type=int, default=None, help="texts at batch 1 (default all)")
    p.add_argument(
        "--batch32-texts", type=int, default=None, help="texts timed at batch 32 (default all)"
    )
    p.add_argument(
        "--exclusive",
        action="store_true",
        help="record that the run had the machine to itself (other jobs waited on a lock)",
    )
    p.add_argument("--report", action="store_true", help="only write PREDICT.md from the JSON")
    p.add_argument(
        "--merge",
        action="store_true",
        help="keep the other models of an existing results/predict.json (each model's backends "
        "are still measured side by side within this run)",
    )
    args = p.parse_args()
    if args.report:
        REPORT.write_text(report(json.loads(RESULTS.read_text(encoding="utf-8"))))
        return 0
    if not args.model:
        p.error("give at least one --model NAME=DIR")
    import onnxruntime

    from gpner.data.paths import resolve
    from gpner.data.readers import read

    if args.threads:
        torch.set_num_threads(args.threads)
    args.threads = torch.get_num_threads()
    dev_path = resolve(args.dev)
    dev = read(dev_path)
    calibration = [ex.text for ex in read(resolve(args.calibrate))[: args.calibrate_texts]]
    data = {
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        # model directories by name only: where they were trained is no part of the result
        "command": "python3 -m benchmarks.speed.bench_predict "
        + " ".join(
            a.split("=")[0] + "=DIR" if a.count("=") == 1 and "/" in a else a for a in sys.argv[1:]
        ),  # fmt: skip
        "load_avg_start": _load_avg(),
        "environment": {
            **measure.machine(),
            "threads": args.threads,
            "onnxruntime": onnxruntime.__version__,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            # OnnxModel's default: its idle threads spin exactly when torch's do (ACTIVE)
            "onnxruntime_spinning": os.environ.get("OMP_WAIT_POLICY", "").upper() == "ACTIVE",
            **{k: v for k, v in measure.source_state().items() if k != "gpner_path"},
        },
        "dev": args.dev,
        "dev_texts": len(dev),
        "calibrate": args.calibrate,
        "calibrate_texts": len(calibration),
        "fp32_budget": args.fp32_budget,
        "repeats": args.repeats,
        "batch1_texts": args.batch1_texts or len(dev),
        "batch32_texts": args.batch32_texts or len(dev),
        "exclusive": args.exclusive,
        "models": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        for item in args.model:
            name, _, directory = item.partition("=")
            model = bench_model(name, directory, dev, calibration, args, Path(tmp))
            data["models"].append(model)
    data["skip_layernorm"] = skip_layernorm_check(args.threads, args.repeats)
    data["load_avg_end"] = _load_avg()
    data["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    if args.merge and RESULTS.is_file():
        old = json.loads(RESULTS.read_text(encoding="utf-8"))
        names = {m["model"] for m in data["models"]}
        kept = [m for m in old["models"] if m["model"] not in names]
        for m in kept:  # each model keeps the run it was measured in
            m.setdefault("run", {k: old[k] for k in ("command", "load_avg_start", "load_avg_end")})
        data["models"] = kept + data["models"]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    REPORT.write_text(report(data), encoding="utf-8")
    print(f"wrote {RESULTS} and {REPORT}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
