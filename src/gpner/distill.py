"""Knowledge distillation: a student trained on ``CE(gold) + beta * KD(teacher, student)``.

Shape letters: B batch, C entity types, L tokens, W maximum span width.

``gpner distill TEACHER CONFIG`` trains the student ``CONFIG`` describes (any encoder and head)
with the ``[distill]`` table's settings (:class:`~gpner.config.DistillConfig`): it is
``gpner train CONFIG --set distill.teacher=TEACHER``. The teacher is a saved gpner model
directory or an exported .onnx file (run by onnxruntime); it must know the same labels as the
training data, else a ``ConfigError`` before any work.

The loss of a batch is ``CE + beta * T^2 * KD(s / T, t / T)``:

* CE is the usual multi-label cross-entropy, averaged over the batch's labelled rows (texts from
  ``distill.unlabeled`` have no gold spans and no CE term);
* KD (``distill.kd``, a name in :data:`KD_TERMS`) compares the student's logits ``s`` with the
  teacher's ``t`` on the cells both score (:mod:`gpner.teacher`: a student cell without a
  teacher counterpart is masked), summed per (example, type) and averaged over all rows, like
  the R-Drop divergence; the temperature and the floor are those of
  :func:`gpner.functional.distillation_term`.

The teacher's logits on the training texts are computed once and cached on disk
(``distill.cache_dir``, default ``output_dir/teacher_logits``; format and size in
:mod:`gpner.teacher`), and reused by every student trained on the same texts with the same
teacher and floor. ``distill.cache = false`` instead runs the teacher on every batch's texts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from gpner import functional as F
from gpner.config import Config, ConfigError
from gpner.functional.kd import KDTerm
from gpner.registry import Registry
from gpner.regularizers import Objective, _parts
from gpner.teacher import (
    TeacherLogits,
    cached_teacher_logits,
    compute_teacher_logits,
    student_targets,
)

__all__ = [
    "KD_TERMS",
    "CACHE_DIRNAME",
    "Distillation",
    "load_teacher",
    "label_channels",
    "read_unlabeled",
    "prepare",
]

CACHE_DIRNAME = "teacher_logits"  # output_dir/teacher_logits/ unless distill.cache_dir is set

# KD terms on logits, ``term(s, t, mask, reduction, *, max_width)``: the divergences of
# gpner.functional (the ones R-Drop and VAT use) and the squared error.
KD_TERMS: Registry[KDTerm] = Registry("KD term")
KD_TERMS.register(
    "gp_kl",
    F.global_pointer_kl,
    help="the GlobalPointer divergence D: per-cell symmetric binary KLs (default)",
)
KD_TERMS.register(
    "softmax_kl", F.softmax_kl, help="symmetric KL of each type's cell softmax (baseline)"
)
KD_TERMS.register("mse", F.squared_error, help="squared error of the logits, summed over cells")


# --------------------------------------------------------------------------- teacher signal


class _Cached:
    """Teacher logits of every training text, computed before training (batch rows are looked up
    by their example index)."""

    def __init__(self, logits: TeacherLogits):
        self.logits = logits

    def rows(self, batch: Any) -> tuple[TeacherLogits, list]:
        return self.logits, [(f.example_index, f.offsets) for f in batch.features]


class _Live:
    """The teacher run on every batch's texts (no cache)."""

    def __init__(self, teacher, texts: Sequence[str], floor: float, batch_size: int):
        self.teacher, self.texts, self.floor, self.batch_size = teacher, texts, floor, batch_size

    def rows(self, batch: Any) -> tuple[TeacherLogits, list]:
        order = sorted({f.example_index for f in batch.features})
        local = {e: k for k, e in enumerate(order)}
        texts = [self.texts[e] for e in order]
        logits = compute_teacher_logits(self.teacher, texts, self.floor, self.batch_size)
        return logits, [(local[f.example_index], f.offsets) for f in batch.features]


class Distillation(Objective):
    """``CE(labelled rows) + beta * KD`` (see the module docstring); parts ``ce`` and ``kd``.

    Args:
        source: where the teacher's logits of a batch come from (cached or live).
        channels: (C,) long, the teacher's type index of each student type.
        labeled: training examples with an index below this carry gold spans (CE); the rest
            are unlabelled texts (KD only).
    """

    def __init__(
        self,
        source: _Cached | _Live,
        channels: Tensor,
        labeled: int,
        kd: str = "gp_kl",
        beta: float = 1 / 64,
        temperature: float = 1.0,
        floor: float | None = None,
    ):
        if beta < 0 or not temperature > 0:
            raise ValueError(f"need beta >= 0 and temperature > 0, got {beta}, {temperature}")
        self.source, self.channels, self.labeled = source, channels, labeled
        self.kd, self._term = kd, KD_TERMS[kd]
        self.beta, self.temperature, self.floor = beta, temperature, floor

    def __call__(self, model: nn.Module, batch: Any) -> tuple[Tensor, dict[str, float]]:
        factors = model.span_factors(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
        device = batch.input_ids.device
        labeled = torch.tensor([f.example_index < self.labeled for f in batch.features])
        if bool(labeled.all()):
            ce = F.fused_crossentropy(factors, batch.spans, reduction="mean")
        else:
            per_pair = F.fused_crossentropy(factors, batch.spans, reduction="none")  # (B, C)
            ce = per_pair[labeled.to(device)].mean() if labeled.any() else per_pair.sum() * 0
        if self.beta == 0:
            return ce, _parts(ce=ce, kd=0.0)
        student = F.factors_to_logits(factors)  # (B, C, L, L) or band (B, C, L, W)
        logits, rows = self.source.rows(batch)
        width = factors.max_width
        teacher, mask = student_targets(
            logits, rows, batch.input_ids.shape[1], self.channels, width
        )
        kd = F.distillation_term(
            self._term,
            student,
            teacher.to(device),
            self.temperature,
            mask.to(device),
            "mean",
            max_width=width,
            floor=self.floor,
        )
        return ce + self.beta * kd, _parts(ce=ce, kd=kd)

    def __repr__(self) -> str:
        return (
            f"Distillation(kd={self.kd!r}, beta={self.beta}, temperature={self.temperature}, "
            f"floor={self.floor})"
        )


# --------------------------------------------------------------------------- setting up


def load_teacher(path: str | Path, device: torch.device | str = "cpu"):
    """The teacher at ``path``: a model directory (torch, moved to ``device``) or an .onnx file
    (onnxruntime, CPU); a missing or unreadable one is a ``ConfigError`` naming
    ``distill.teacher``."""
    import gpner

    path = Path(path)
    if not path.exists():
        raise ConfigError(f"distill.teacher: no such model {path}")
    onnx = path.suffix == ".onnx" or (path / "model.onnx").is_file()
    try:
        teacher = gpner.load(path, backend="onnxruntime" if onnx else "torch")
    except ImportError as error:
        raise ConfigError(
            f"distill.teacher: an ONNX teacher needs pip install gpner[onnx] ({error})"
        ) from None
    except (ValueError, OSError) as error:  # CheckpointError is a ValueError
        raise ConfigError(f"distill.teacher: {path}: {error}") from None
    return teacher if onnx else teacher.to(device)


def label_channels(teacher_labels: Sequence[str], labels: Sequence[str]) -> Tensor:
    """(C,) long: the teacher's index of each of ``labels``; a ``ConfigError`` unless the two
    label sets are equal."""
    if set(teacher_labels) != set(labels):
        missing = sorted(set(labels) - set(teacher_labels))
        extra = sorted(set(teacher_labels) - set(labels))
        raise ConfigError(
            f"distill.teacher: the teacher's labels differ from the training data's: the "
            f"teacher lacks {missing} and has {extra} besides; distillation needs the same "
            f"label set (teacher: {list(teacher_labels)}; data: {list(labels)})"
        )
    index = {label: k for k, label in enumerate(teacher_labels)}
    return torch.tensor([index[label] for label in labels], dtype=torch.long)


def read_unlabeled(path: str) -> list[str]:
    """The non-empty lines of a text file (relative paths resolve against the data root, like
    every data path); a missing file is a ``ConfigError`` naming ``distill.unlabeled``."""
    from gpner.data.paths import resolve

    file = resolve(path)
    if not file.is_file():
        raise ConfigError(f"distill.unlabeled: text file {file} does not exist")
    lines = file.read_text(encoding="utf-8").splitlines()
    return [line for line in lines if line.strip()]


def prepare(
    config: Config, corpus, device: torch.device, log: Callable[[str], None] = print
) -> Callable[[], Objective]:
    """Check the ``[distill]`` settings, load the teacher, add the unlabelled texts to
    ``corpus.train`` (as examples without spans, after the labelled ones) and get the teacher's
    logits of every training text (from the cache or computed now); returns the objective's
    builder. Every problem is a ``ConfigError`` before the student is built."""
    from gpner.data.spans import Example

    dcfg = config.distill
    if dcfg.teacher is None:
        raise ConfigError("distill.unlabeled: unlabelled texts need a teacher (distill.teacher)")
    if config.regularizer.kind != "none":
        raise ConfigError(
            f"regularizer.kind: {config.regularizer.kind!r} is not combined with distillation; "
            "set it to none"
        )
    teacher = load_teacher(dcfg.teacher, device)
    channels = label_channels(teacher.labels, corpus.labels)
    labeled = len(corpus.train)
    if dcfg.unlabeled is not None:
        extra = read_unlabeled(dcfg.unlabeled)
        corpus.train = corpus.train + [Example(text, []) for text in extra]
        log(f"distill: {len(extra)} unlabelled texts from {dcfg.unlabeled} (teacher signal only)")
    texts = corpus.train_texts
    if not dcfg.cache:
        source: _Cached | _Live = _Live(teacher, texts, dcfg.floor, dcfg.teacher_batch_size)
        log(f"distill: teacher {dcfg.teacher} runs on every batch (distill.cache = false)")
    else:
        cache_dir = Path(dcfg.cache_dir or Path(config.output_dir) / CACHE_DIRNAME)
        if cache_dir.exists() and not cache_dir.is_dir():
            raise ConfigError(f"distill.cache_dir: {cache_dir} exists and is not a directory")
        logits, path, hit = cached_teacher_logits(
            teacher, dcfg.teacher, texts, dcfg.floor, cache_dir, dcfg.teacher_batch_size
        )
        meta = logits.meta
        how = "read from" if hit else f"computed in {meta['teacher_seconds']:.1f} s, written to"
        log(
            f"distill: teacher logits of {meta['examples']} texts {how} {path} "
            f"({meta['cells_per_example']:.1f} cells above {meta['floor']:g} and "
            f"{meta['bytes_per_example']:.0f} bytes per text)"
        )
        source = _Cached(logits)
        del teacher

    def build() -> Objective:
        return Distillation(
            source, channels, labeled, dcfg.kd, dcfg.beta, dcfg.temperature, dcfg.floor
        )

    return build
