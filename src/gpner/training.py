"""The trainer: a :class:`~gpner.corpus.Corpus` -> features -> model, AdamW with warm-up and
linear decay, the configured objective (plain, R-Drop, VAT), per-epoch dev evaluation with early
stopping, atomic best/last checkpoints, exact resume, and data parallelism
(:mod:`gpner.distributed`).
"""

from __future__ import annotations

import copy
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gpner import checkpoints
from gpner.backends import compiled_kernels
from gpner.config import Config, ConfigError, check_config
from gpner.corpus import Corpus
from gpner.data.batching import Feature, LengthBucketSampler, collate, encode_examples
from gpner.data.report import collect_read_report
from gpner.distributed import Dist, init_distributed
from gpner.inference import evaluate
from gpner.model import NERModel, build_model, build_tokenizer
from gpner.plotting import plot_history
from gpner.regularizers import Objective, build_objective
from gpner.rng import RNGState, seed_everything
from gpner.threads import CoreShare

__all__ = [
    "TrainResult",
    "TrainState",
    "build_optimizer",
    "run_epoch",
    "train",
    "BEST_DIR",
    "LAST_STATE",
]

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
    # False on the other processes of a data-parallel run: only rank 0 evaluates, so only its
    # result holds the scores, and only it reports
    main_process: bool = True

    @property
    def epochs_run(self) -> int:
        return len(self.history)

    @property
    def best_path(self) -> Path:
        return self.output_dir / BEST_DIR


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


def build_optimizer(model: NERModel, config: Config) -> torch.optim.AdamW:
    """AdamW over :func:`_param_groups`, with torch's fused kernel where the parameters' device
    has one: the same update up to rounding, one pass over each parameter instead of a dozen
    small ops (on CPU, torch >= 2.4)."""
    groups = _param_groups(model, config)
    try:
        return torch.optim.AdamW(groups, fused=True)
    except (RuntimeError, ValueError):  # no fused kernel for this device or torch version
        return torch.optim.AdamW(_param_groups(model, config))


def _warmup_linear(total_steps: int, warmup_ratio: float):
    warmup = int(total_steps * warmup_ratio)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return factor


# ---------------------------------------------------------------------------------- the state


@dataclass
class TrainState:
    """Everything the epochs read and change, in one place.

    The resume payload (``last.pt``, written and read by :mod:`gpner.checkpoints` as plain
    tensors and containers) is made from it by :meth:`resume_payload` and put back by
    :meth:`restore`, and nowhere else.
    """

    config: Config
    model: NERModel
    objective: Objective
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    features: list[Feature]
    sampler: LengthBucketSampler
    steps_per_epoch: int
    device: torch.device
    dist: Dist
    epoch: int = 0  # epochs finished
    history: list[dict[str, Any]] = field(default_factory=list)
    best_f1: float = -1.0
    best_epoch: int = 0
    stopped: bool = False  # early stopping ended the run
    cores: CoreShare | None = None  # intra-op threads: fixed, or following the free cores

    def resume_payload(self) -> dict[str, Any]:
        """The model checkpoint plus what continuing exactly needs (optimiser, schedule,
        history, RNG state)."""
        return {
            **checkpoints.model_payload(self.model),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "history": self.history,
            "best_f1": self.best_f1,
            "best_epoch": self.best_epoch,
            "epoch": self.epoch,
            "stopped_early": self.stopped,
            "rng": RNGState.capture(self.device, host=True).state_dict(),
        }

    def restore(self, payload: dict[str, Any]) -> None:
        """Continue from a :meth:`resume_payload` (the model weights are already loaded)."""
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        self.history = payload["history"]
        self.best_f1, self.best_epoch = payload["best_f1"], payload["best_epoch"]
        self.epoch = payload["epoch"]
        self.stopped = bool(payload.get("stopped_early", False))
        RNGState.from_state_dict(payload["rng"]).restore()


def _build_state(
    config: Config, corpus: Corpus, device: torch.device, dist: Dist, payload: dict | None
) -> tuple[TrainState, Any]:
    """The model (fresh, or from a resume ``payload``), its features and the optimiser."""
    tcfg = config.train
    if payload is not None:
        model = checkpoints.model_from_payload(payload)
    else:
        seed_everything(tcfg.seed)
        try:
            tokenizer = build_tokenizer(config, corpus.train_texts)
        except FileNotFoundError as error:  # a pretrained encoder's directory or wheel
            raise ConfigError(f"encoder.path: {error}") from None
        model = build_model(config, corpus.labels, tokenizer, corpus.train_texts)
    model.config = config
    model.to(device)
    features, stats = encode_examples(
        corpus.train, model.tokenizer, model.label2id, config.data.max_length, config.data.stride
    )
    sampler = LengthBucketSampler(
        [len(f.input_ids) for f in features], tcfg.batch_size, shuffle=True, seed=tcfg.seed
    )
    steps_per_epoch = len(sampler)
    if tcfg.max_steps_per_epoch is not None:
        steps_per_epoch = min(steps_per_epoch, tcfg.max_steps_per_epoch)
    reg = config.regularizer
    objective = build_objective(
        reg.kind,
        alpha=reg.alpha,
        divergence=reg.divergence,
        epsilon=reg.epsilon,
        xi=reg.xi,
        power_iterations=reg.power_iterations,
    )
    optimizer = build_optimizer(model, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _warmup_linear(steps_per_epoch * tcfg.epochs, tcfg.warmup_ratio)
    )
    state = TrainState(
        config, model, objective, optimizer, scheduler, features, sampler, steps_per_epoch,
        device, dist,
    )  # fmt: skip
    if payload is not None:
        state.restore(payload)
    return state, stats


# -------------------------------------------------------------------------------------- epochs


def run_epoch(state: TrainState) -> dict[str, Any]:
    """Train epoch ``state.epoch`` (0-based); returns its means and rates (global over
    processes)."""
    from tqdm.auto import tqdm

    tcfg, dist, model = state.config.train, state.dist, state.model
    state.sampler.set_epoch(state.epoch)
    model.train()
    batches = list(state.sampler)[: state.steps_per_epoch]
    totals: dict[str, float] = {}
    seen = tokens = 0
    start = time.perf_counter()
    bar = tqdm(
        batches,
        desc=f"epoch {state.epoch + 1}",
        # None: tqdm shows the bar only on a terminal; a log file gets the epoch lines alone
        disable=None if tcfg.progress and dist.main else True,
        leave=False,
        dynamic_ncols=True,
    )
    # The loss kernels for this epoch's steps only (restored on the way out, also on errors).
    with compiled_kernels(tcfg.compiled_kernels):
        for indices in bar:
            local = dist.share(indices)
            features = [state.features[k] for k in local]
            batch = collate(features, model.tokenizer.pad_id).to(state.device)
            if state.cores is not None:
                state.cores.poll()
            loss, parts = state.objective(model, batch)
            state.optimizer.zero_grad(set_to_none=True)
            # Each process averages over its share; scaling by the share's size makes the
            # all-reduced mean equal the single-process mean over the global batch.
            share = len(local) * dist.world / len(indices)
            (loss * share if dist.world > 1 else loss).backward()
            dist.average_gradients(model)
            if tcfg.max_grad_norm > 0:
                nn.utils.clip_grad_norm_(model.parameters(), tcfg.max_grad_norm)
            state.optimizer.step()
            state.scheduler.step()
            seen += len(indices)
            tokens += int(batch.attention_mask.sum()) * dist.world
            # Weighted by this process's share so that the all-reduced epoch means are global.
            totals["loss"] = totals.get("loss", 0.0) + float(loss.detach()) * share
            for key, value in parts.items():
                totals[key] = totals.get(key, 0.0) + float(value) * share
            rate = seen / max(time.perf_counter() - start, 1e-9)
            bar.set_postfix(loss=f"{float(loss.detach()):.4f}", ex_s=f"{rate:.1f}")
    elapsed = time.perf_counter() - start
    n = max(1, len(batches))
    totals = dist.mean(totals)
    return {
        "train_loss": totals.pop("loss", 0.0) / n,
        **{f"train_{k}": v / n for k, v in totals.items()},
        "steps": len(batches),
        "seconds": elapsed,
        "examples_per_second": seen / max(elapsed, 1e-9),
        "tokens_per_second": tokens / max(elapsed, 1e-9),
        "lr": state.scheduler.get_last_lr()[0],
        "threads": torch.get_num_threads(),  # at the epoch's end (see gpner.threads)
    }


def _summary_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    return {
        "micro": metrics["micro"],
        "macro": metrics["macro"],
        "per_type_f1": {k: v["f1"] for k, v in metrics["per_type"].items()},
    }


def _end_epoch(state: TrainState, record: dict[str, Any], dev: list, out: Path) -> None:
    """Rank 0 after an epoch: evaluate on dev, keep the best, write last.pt and the log line."""
    tcfg = state.config.train
    t0 = time.perf_counter()
    metrics = evaluate(state.model, dev, tcfg.eval_batch_size) if dev else None
    record["eval_seconds"] = time.perf_counter() - t0
    record["dev"] = _summary_metrics(metrics) if metrics else {"micro": {"f1": 0.0}}
    f1 = record["dev"]["micro"]["f1"]
    state.history.append(record)
    state.epoch = record["epoch"]
    # Without dev data there is no score to choose by: the last epoch is kept.
    if f1 > state.best_f1 or not dev:
        state.best_f1, state.best_epoch = f1, state.epoch
        checkpoints.save(state.model, out / BEST_DIR)
    state.stopped = tcfg.patience is not None and state.epoch - state.best_epoch >= tcfg.patience
    checkpoints.save_state(out / LAST_STATE, state.resume_payload())
    with open(out / "metrics.jsonl", "a", encoding="utf-8") as log:
        log.write(json.dumps(record) + "\n")
    _log(
        f"epoch {state.epoch}/{tcfg.epochs}: loss {record['train_loss']:.4f}, "
        f"dev micro F1 {f1:.4f} (best {state.best_f1:.4f} @ {state.best_epoch}), "
        f"{record['examples_per_second']:.1f} ex/s"
    )
    if state.stopped and state.epoch < tcfg.epochs:
        _log(f"early stop: no dev gain in {tcfg.patience} epochs; best epoch {state.best_epoch}")


# --------------------------------------------------------------------------------------- train


def _log(message: str, main: bool = True) -> None:
    if main:
        print(message, file=sys.stderr, flush=True)


def _device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def train(config: Config, resume: bool | str = False) -> TrainResult:
    """Train a model as ``config`` says; returns the history and where the checkpoints are.

    ``output_dir`` receives ``best/`` (the best dev epoch's model directory, for ``gpner.load``;
    the last epoch's when there is no dev data),
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
    out = Path(config.output_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output_dir: {out} exists and is not a directory")
    last_path = out / LAST_STATE
    if resume is True and not last_path.is_file():
        raise ConfigError(
            f"--resume: there is no {last_path} to resume from; run without --resume to start "
            "fresh (or pass --resume-if-exists)"
        )
    cores = CoreShare(fixed=tcfg.num_threads)
    cores.start()
    device = _device()
    dist = init_distributed(device)  # its collectives run on this device
    if resume == "if_exists" and not last_path.is_file():
        _log(f"no {last_path} to resume from: starting fresh", dist.main)
    with collect_read_report() as read_report:
        corpus = Corpus.from_config(config.data)
    if tcfg.patience is not None and not corpus.dev:
        raise ConfigError(
            f"train.patience: early stopping needs dev data, and data.dev ({config.data.dev}) "
            "holds no examples"
        )
    objective = None
    if config.distill.teacher is not None or config.distill.unlabeled is not None:
        from gpner.distill import prepare  # the [distill] table: a teacher's signal in the loss

        objective = prepare(config, corpus, device, lambda message: _log(message, dist.main))
    skipped = read_report.skipped
    if skipped:
        _log(
            f"data: skipped {skipped} bad item(s) (data.strict = false): "
            f"{read_report.skipped_by_path}",
            dist.main,
        )
    payload = None
    if resume and last_path.is_file():
        payload = checkpoints.load_state(last_path)
        if payload["labels"] != corpus.labels:
            raise ConfigError(f"--resume: {last_path} was trained with other labels")
        _log(f"resuming from {last_path} after epoch {payload['epoch']}", dist.main)
    state, stats = _build_state(config, corpus, device, dist, payload)
    state.cores = cores
    if objective is not None:
        state.objective = objective()
    _log(f"train: {stats.summary()}", dist.main)
    if payload is None and dist.main:
        # A fresh run starts a fresh log; a resumed one keeps its earlier lines.
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.jsonl").write_text("", encoding="utf-8")

    while state.epoch < tcfg.epochs and not state.stopped:
        record = {"epoch": state.epoch + 1, **run_epoch(state), "skipped_items": skipped}
        if dist.main:
            _end_epoch(state, record, corpus.dev, out)
        else:
            state.epoch += 1
        state.stopped = dist.decide(state.stopped, device)  # every rank leaves together
        dist.barrier()

    result = TrainResult(
        state.best_f1,
        state.best_epoch,
        state.history,
        out,
        info={"encode": stats.summary(), **read_report.as_dict()},
        stopped_early=state.stopped and len(state.history) < tcfg.epochs,
        main_process=dist.main,
    )
    if dist.main:
        plot_history(state.history, out / "training.png")
        if corpus.test is not None:
            best = checkpoints.load(out / BEST_DIR).to(device)
            result.test_metrics = evaluate(best, corpus.test, tcfg.eval_batch_size)
            _log(f"test micro F1 {result.test_metrics['micro']['f1']:.4f}")
    dist.barrier()
    return result
