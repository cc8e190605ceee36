"""The examples a training run reads: its splits, its label set, and the checks on both.

A :class:`Corpus` is read from a :class:`~gpner.config.DataConfig`: relative paths resolve
against the data root, ``file.json[:4000]`` keeps a slice of a file's examples, a validation
share can be carved off the training file, and dev/test labels never seen in training fail
before any work starts, naming the config key.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from pathlib import Path

from gpner.config import ConfigError, DataConfig
from gpner.data.paths import not_found, resolve
from gpner.data.readers import read
from gpner.data.spans import Example

__all__ = ["Corpus", "DataFile", "split_validation"]

_SLICE = re.compile(r"^(?P<path>.*)\[(?P<start>-?\d*):(?P<stop>-?\d*)\]$")


@dataclass(frozen=True)
class DataFile:
    """A data file named in a config, with an optional slice of its examples."""

    path: Path
    part: slice = field(default_factory=lambda: slice(None))

    @classmethod
    def parse(cls, key: str, value: str) -> DataFile:
        """``"cluener/train.json[:4000]"`` -> the resolved path and ``slice(None, 4000)``;
        a missing file is a ``ConfigError`` naming ``key``."""
        match = _SLICE.match(value)
        part = slice(None)
        if match:
            value = match["path"]
            part = slice(
                int(match["start"]) if match["start"] else None,
                int(match["stop"]) if match["stop"] else None,
            )
        path = resolve(value)
        if not path.exists():
            raise ConfigError(f"{key}: data file {not_found(value)} does not exist")
        return cls(path, part)

    def read(self, cfg: DataConfig) -> list[Example]:
        return read(self.path, format=cfg.format, scheme=cfg.scheme, strict=cfg.strict)[self.part]


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


@dataclass
class Corpus:
    """Training, dev and (optional) test examples and the sorted label set of the training data."""

    train: list[Example]
    dev: list[Example]
    test: list[Example] | None
    labels: list[str]

    @classmethod
    def from_config(cls, cfg: DataConfig) -> Corpus:
        """Read the splits ``cfg`` names; ``ConfigError`` (naming the key) on a missing file, a
        training file without entities, or dev/test labels never seen in training."""
        carve = cfg.validation_fraction > 0
        files = {
            "train": DataFile.parse("data.train", cfg.train),
            "dev": None if carve or cfg.dev is None else DataFile.parse("data.dev", cfg.dev),
            "test": None if cfg.test is None else DataFile.parse("data.test", cfg.test),
        }
        train = files["train"].read(cfg)
        if carve:
            train, dev = split_validation(train, cfg.validation_fraction, cfg.split_seed)
        else:
            dev = files["dev"].read(cfg) if files["dev"] is not None else []
        test = files["test"].read(cfg) if files["test"] is not None else None
        if cfg.train_limit is not None:
            train = train[: cfg.train_limit]
        if cfg.dev_limit is not None:
            dev = dev[: cfg.dev_limit]
        labels = sorted({span.label for ex in train for span in ex.spans})
        if not labels:
            raise ConfigError(f"data.train: {files['train'].path} has no entity spans")
        corpus = cls(train, dev, test, labels)
        corpus.check_labels()
        return corpus

    def check_labels(self) -> None:
        """Dev and test may only use labels the training data has."""
        known = set(self.labels)
        for key, split in (("data.dev", self.dev), ("data.test", self.test or [])):
            unseen = sorted({s.label for ex in split for s in ex.spans} - known)
            if unseen:
                raise ConfigError(f"{key}: labels never seen in training: {unseen}")

    @property
    def train_texts(self) -> list[str]:
        return [ex.text for ex in self.train]
