"""How strongly a trained cell's regulariser acts: the divergence's share of the loss and its
gradient norm relative to the cross-entropy's, measured on a few training batches.

Run by ``run.py`` on the best checkpoint of every finished regularised final cell, after
training and before its run dir is removed, so training itself is untouched; ``run_v3.py`` runs
it the same way as a command in the pinned checkout::

    python3 -m benchmarks.accuracy.probe CONFIG CHECKPOINT --set KEY=VALUE ... --out probe.json
 The probe keeps
the model in training mode (dropout on, as during training), draws its dropout masks and its
batches from its own seed inside a forked RNG (the global RNG is left as it was), and takes
gradients with ``torch.autograd.grad`` (no ``.grad`` is written).
"""

from __future__ import annotations

import math
import random
import statistics
from pathlib import Path
from typing import Any


def probe_regularizer(
    config: Any, checkpoint: Path, *, batches: int = 8, seed: int = 0
) -> dict[str, Any]:
    """Per-batch ``alpha * D / (CE + alpha * D)``, the gradient norms ``|grad CE|`` and
    ``|grad(alpha * D)|`` (over all trainable parameters), their ratio and the cosine between the
    two gradients, on ``batches``
    training batches of ``config.train.batch_size`` examples, as medians and per batch."""
    import torch

    import gpner
    from gpner.corpus import Corpus
    from gpner.data.batching import collate, encode_examples
    from gpner.regularizers import (
        DIVERGENCES,
        RNGState,
        cross_entropy,
        rdrop_loss,
        vat_direction,
        vat_penalty,
    )

    reg = config.regularizer
    if reg.kind == "none":
        raise ValueError("probe_regularizer: the cell has no regulariser")
    alpha, divergence = float(reg.alpha), DIVERGENCES[reg.divergence]
    with torch.random.fork_rng(devices=[]):  # building the model draws initial weights
        model = gpner.load(checkpoint)
    model.train()
    train = Corpus.from_config(config.data).train
    rng = random.Random(seed)
    picked = rng.sample(range(len(train)), min(len(train), batches * config.train.batch_size))
    features, _ = encode_examples(
        [train[k] for k in picked],
        model.tokenizer,
        model.label2id,
        config.data.max_length,
        config.data.stride,
    )
    params = [p for p in model.parameters() if p.requires_grad]
    size = config.train.batch_size
    rows = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for start in range(0, min(len(features), batches * size), size):
            batch = collate(features[start : start + size], model.tokenizer.pad_id)
            if reg.kind == "rdrop":
                _, ce, d = rdrop_loss(model, batch, alpha, divergence)
            else:
                embeds = model.embed(batch.input_ids)
                state = RNGState.capture(embeds.device)
                clean = model.span_factors(
                    inputs_embeds=embeds, attention_mask=batch.attention_mask
                )
                ce = cross_entropy(clean, batch)
                direction = vat_direction(
                    model,
                    embeds,
                    batch.attention_mask,
                    clean,
                    xi=reg.xi,
                    power_iterations=reg.power_iterations,
                    divergence=divergence,
                    rng_state=state,
                )
                d = vat_penalty(
                    model,
                    embeds,
                    batch.attention_mask,
                    reg.epsilon * direction,
                    clean,
                    divergence=divergence,
                    rng_state=state,
                )
            g_ce = torch.autograd.grad(ce, params, retain_graph=True, allow_unused=True)
            g_d = torch.autograd.grad(alpha * d, params, allow_unused=True)
            flat_ce, flat_d = _aligned(g_ce, g_d)
            n_ce, n_d = float(flat_ce.norm()), float(flat_d.norm())
            ce_value, d_value = float(ce.detach()), float(d.detach())
            total = ce_value + alpha * d_value
            rows.append(
                {
                    "ce": ce_value,
                    "divergence": d_value,
                    "share": alpha * d_value / total if total else 0.0,
                    "ce_grad_norm": n_ce,
                    "divergence_grad_norm": n_d,  # of alpha * D
                    "grad_ratio": n_d / n_ce if n_ce else math.nan,
                    "grad_cosine": float(flat_ce @ flat_d) / (n_ce * n_d) if n_ce and n_d else 0.0,
                }
            )
    return {
        "alpha": alpha,
        "batches": len(rows),
        "batch_size": size,
        "seed": seed,
        **{
            f"median_{key}": statistics.median(r[key] for r in rows)
            for key in (
                "share",
                "ce_grad_norm",
                "divergence_grad_norm",
                "grad_ratio",
                "grad_cosine",
            )
        },
        "per_batch": rows,
    }


def _aligned(g_a, g_b):
    """Two gradient tuples flattened over the same parameters (zeros where one is None)."""
    import torch

    a, b = [], []
    for x, y in zip(g_a, g_b):
        if x is None and y is None:
            continue
        ref = x if x is not None else y
        a.append((x if x is not None else torch.zeros_like(ref)).reshape(-1))
        b.append((y if y is not None else torch.zeros_like(ref)).reshape(-1))
    return torch.cat(a).double(), torch.cat(b).double()


def main(argv: list[str] | None = None) -> int:
    """``probe CONFIG CHECKPOINT [--set KEY=VALUE ...] [--batches N] [--out FILE]``: the probe
    of a trained model under the config it was trained with, as JSON (stdout or ``--out``)."""
    import argparse
    import json

    from gpner.atomic import atomic_write_json
    from gpner.config import load_config

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("config")
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    config = load_config(args.config, args.overrides)
    if config.train.num_threads:
        import torch

        torch.set_num_threads(config.train.num_threads)
    out = probe_regularizer(config, args.checkpoint, batches=args.batches)
    if args.out is None:
        print(json.dumps(out))
    else:
        atomic_write_json(args.out, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
