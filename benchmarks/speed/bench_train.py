"""Whole training steps (plain, R-Drop, VAT) and prediction with the default char Transformer.

Runs the trainer's own objectives (:func:`gpner.regularizers.build_objective`: the fused path,
``model.span_factors`` + ``gpner.functional.fused_*``, no (B, C, L, L) tensor) and, next to them,
the same objectives on materialised logits with gpner's drop-in losses (written here, in the
``logits_*`` functions: what the regularisers computed before they moved to the fused path).
Before timing, each pair must give the same loss on the first batch. Each step is what
``gpner.training`` does per batch: objective, ``zero_grad``, ``backward``, gradient clipping,
AdamW step. All objectives run the same batches, interleaved repeat by repeat in one process.

Prediction: :func:`gpner.inference.predict_examples` on dev texts, with the model's forward and
the decoding (``decode`` + ``spans_from_features``) timed inside it.

    python3 -m benchmarks.speed.bench_train --quick
    nohup nice -n 5 python3 -m benchmarks.speed.bench_train > benchmarks/speed/train.log 2>&1 &
    python3 -m benchmarks.speed.make_results
"""

from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import time
from pathlib import Path
from typing import NamedTuple

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see bench_head.py

import torch  # noqa: E402
from torch import nn  # noqa: E402

from benchmarks.speed import measure  # noqa: E402
from gpner import functional as F  # noqa: E402
from gpner import inference  # noqa: E402
from gpner import regularizers as R  # noqa: E402
from gpner.config import Config  # noqa: E402
from gpner.data.batching import LengthBucketSampler, collate, encode_examples  # noqa: E402
from gpner.data.paths import resolve  # noqa: E402
from gpner.data.readers import read  # noqa: E402
from gpner.model import build_model, build_tokenizer  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


# --------------------------------------------------------------- baseline: the logits objectives


def _drop_in_ce(model, logits, batch):
    return F.sparse_multilabel_categorical_crossentropy(
        logits, batch.spans, batch.attention_mask, max_width=model.head.max_width
    )


def _drop_in_kl(model, s, t, mask, reduction="mean"):
    return F.global_pointer_kl(s, t, mask, reduction, max_width=model.head.max_width)


def logits_plain(model, batch):
    ce = _drop_in_ce(model, model(batch.input_ids, batch.attention_mask), batch)
    return ce, {"ce": ce, "reg": 0.0}


def logits_rdrop(model, batch, alpha=1.0):
    ids, am = batch.input_ids, batch.attention_mask
    b = ids.shape[0]
    logits = model(torch.cat([ids, ids]), torch.cat([am, am]))  # (2B, C, L, L): one doubled pass
    s1, s2 = logits[:b], logits[b:]
    ce = (_drop_in_ce(model, s1, batch) + _drop_in_ce(model, s2, batch)) / 2
    kl = _drop_in_kl(model, s1, s2, am)
    return ce + alpha * kl, {"ce": ce, "reg": kl}


class _Logits(NamedTuple):
    """Materialised logits (B, C, L, L or W) and the attention mask they are valid under."""

    s: torch.Tensor
    mask: torch.Tensor

    def detach(self) -> _Logits:
        return _Logits(self.s.detach(), self.mask)


def logits_vat(model, batch, alpha=1.0, epsilon=1.0, xi=1e-3):
    """gpner's :class:`~gpner.regularizers.VAT` with one power iteration (same RNG replay, same
    random start) run on materialised logits and the drop-in losses instead of factors."""
    objective = R.VAT(
        alpha,
        epsilon,
        xi,
        1,
        divergence=lambda a, b, reduction: _drop_in_kl(model, a.s, b.s, a.mask, reduction),
        forward=lambda m, embeds, am: _Logits(m(inputs_embeds=embeds, attention_mask=am), am),
        cross_entropy=lambda out, b: _drop_in_ce(model, out.s, b),
    )
    return objective(model, batch)


def check_same_losses(model, objectives, batch) -> None:
    """Each ``kind/trainer`` and ``kind/logits`` pair gives the same loss (same seed, so the same
    dropout masks), or the timings would compare different computations."""
    losses = {}
    for name, objective in objectives.items():
        torch.manual_seed(0)
        with torch.no_grad():  # VAT's power iteration enables gradients for itself
            losses[name] = float(objective(model, batch)[0])
    for name, value in losses.items():
        reference = name.split("/")[0] + "/trainer"
        if not math.isclose(value, losses[reference], rel_tol=1e-4):
            raise AssertionError(
                f"{name} loss {value} differs from {reference} {losses[reference]}"
            )


# ------------------------------------------------------------------------------------ measuring


def load_examples(path: str, limit: int):
    examples = read(resolve(path))
    rnd = random.Random(0)
    examples = list(examples)
    rnd.shuffle(examples)
    return examples[:limit]


def train_step(model, objective, optimizer, batch) -> None:
    loss, _ = objective(model, batch)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()


def measure_training(model, objectives, batches, repeats, warmup) -> list[dict]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    tokens = sum(int(b.attention_mask.sum()) for b in batches)
    steps = {
        name: (lambda obj=obj: [train_step(model, obj, optimizer, b) for b in batches])
        for name, obj in objectives.items()
    }
    times = measure.time_side_by_side(steps, repeats, warmup)
    rows = []
    for name, samples in times.items():
        objective, impl = name.split("/")
        per_step = [t / len(batches) for t in samples]
        row = {"objective": objective, "impl": impl, **measure.summary(per_step)}
        row["tokens_per_s"] = tokens / statistics.median(samples)
        rows.append(row)
    return rows


def measure_prediction(model, examples, repeats: int, batch_size: int) -> dict:
    clock = {"decode": 0.0, "forward": 0.0}
    decode, spans_from_features = inference.decode, inference.spans_from_features

    def timed(fn, key):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                clock[key] += time.perf_counter() - start

        return wrapper

    starts: list[float] = []
    pre = model.register_forward_pre_hook(lambda *_: starts.append(time.perf_counter()))
    post = model.register_forward_hook(
        lambda *_: clock.__setitem__("forward", clock["forward"] + time.perf_counter() - starts[-1])
    )
    inference.decode = timed(decode, "decode")
    inference.spans_from_features = timed(spans_from_features, "decode")
    try:
        inference.predict_examples(model, examples[:batch_size], batch_size)  # warm-up
        totals, decodes, forwards = [], [], []
        for _ in range(repeats):
            clock.update(decode=0.0, forward=0.0)
            start = time.perf_counter()
            inference.predict_examples(model, examples, batch_size)
            totals.append(time.perf_counter() - start)
            decodes.append(clock["decode"])
            forwards.append(clock["forward"])
    finally:
        inference.decode, inference.spans_from_features = decode, spans_from_features
        pre.remove()
        post.remove()
    features, _ = encode_examples(
        examples, model.tokenizer, model.label2id, model.config.data.max_length
    )
    tokens = sum(len(f.input_ids) for f in features)
    total = statistics.median(totals)
    return {
        "texts": len(examples),
        "tokens": tokens,
        "repeats": repeats,
        "total_s": total,
        "forward_s": statistics.median(forwards),
        "decode_s": statistics.median(decodes),
        "decode_share": statistics.median([d / t for d, t in zip(decodes, totals)]),
        "tokens_per_s": tokens / total,
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--train", default="cluener/train.json", help="under the data root")
    p.add_argument("--dev", default="cluener/dev.json")
    p.add_argument("--examples", type=int, default=4000, help="training examples to batch from")
    p.add_argument("--batches", type=int, default=8, help="batches per timed repeat")
    p.add_argument("--batch-size", type=int, default=None, help="default: the config's")
    p.add_argument("--max-length", type=int, default=None, help="default: the config's")
    p.add_argument("--head", default=None, help="head kind; default: the config's")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--predict-texts", type=int, default=1000)
    p.add_argument("--predict-repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--out", type=Path, default=RESULTS / "train.json")
    args = p.parse_args(argv)
    if args.quick:
        args.examples, args.batches, args.repeats, args.predict_texts = 400, 2, 3, 200
        args.predict_repeats = 2
        if args.out == RESULTS / "train.json":
            args.out = RESULTS / "train_quick.json"
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    config = Config()  # the defaults: char Transformer, GlobalPointer, the config's batch size
    if args.batch_size:
        config.train.batch_size = args.batch_size
    if args.max_length:
        config.data.max_length = args.max_length
    if args.head:
        config.head.kind = args.head
    train = load_examples(args.train, args.examples)
    dev = load_examples(args.dev, args.predict_texts)
    labels = sorted({s.label for ex in train for s in ex.spans})
    tokenizer = build_tokenizer(config, [ex.text for ex in train])
    model = build_model(config, labels, tokenizer)
    features, _ = encode_examples(
        train, tokenizer, model.label2id, config.data.max_length, config.data.stride
    )
    sampler = LengthBucketSampler([len(f.input_ids) for f in features], config.train.batch_size)
    batches = [collate([features[k] for k in idx], tokenizer.pad_id) for idx in sampler]
    batches = batches[: args.batches]
    reg = config.regularizer
    objectives = {
        "plain/trainer": R.build_objective("none"),
        "rdrop/trainer": R.build_objective("rdrop", reg.alpha),
        "vat/trainer": R.build_objective("vat", reg.alpha, epsilon=reg.epsilon, xi=reg.xi),
        "plain/logits": logits_plain,
        "rdrop/logits": lambda m, b: logits_rdrop(m, b, reg.alpha),
        "vat/logits": lambda m, b: logits_vat(m, b, reg.alpha, reg.epsilon, reg.xi),
    }
    model.train()
    check_same_losses(model, objectives, batches[0])
    enc = config.encoder
    shapes = [tuple(b.input_ids.shape) for b in batches]
    data = {
        **measure.run_header("train"),
        "description": (
            f"Default config: char Transformer (H={enc.hidden_size}, {enc.num_layers} layers, "
            f"{enc.num_heads} heads, FFN {enc.ffn_size}, dropout {enc.dropout}), "
            f"{config.head.kind} head (D={config.head.head_size}), C={len(labels)} types; "
            f"{len(batches)} batches of CLUENER training texts from the length-bucket sampler, "
            f"shapes (B, L) {shapes}; {args.warmup} warm-up pass(es), {args.repeats} repeats; the "
            "step time is per batch. 'trainer' = gpner.regularizers' objectives (the fused path: "
            "model.span_factors + fused losses); 'logits' = the same objectives on materialised "
            "(B, C, L, L) logits + drop-in losses (bench_train.py's logits_*)."
        ),
        "notes": [],
    }
    data["train_rows"] = measure_training(model, objectives, batches, args.repeats, args.warmup)
    measure.write_json(args.out, data)
    for row in data["train_rows"]:
        print(f"{row['objective']:6s} {row['impl']:8s} {row['median_s']:.4f} s/step", flush=True)
    data["predict"] = measure_prediction(
        model, dev, args.predict_repeats, config.train.eval_batch_size
    )
    data["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    measure.write_json(args.out, data)
    print(data["predict"], flush=True)


if __name__ == "__main__":
    main()
