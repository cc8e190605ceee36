"""Config loading: TOML, overrides, and early, named failures."""

import pytest

from gpner.config import ConfigError, RegularizerConfig, load_config
from gpner.corpus import Corpus
from gpner.regularizers import DEFAULT_ALPHA, RDrop, build_objective
from tests.conftest import tiny_config_overrides


def write(tmp_path, text):
    path = tmp_path / "c.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_and_overrides(tmp_path):
    path = write(tmp_path, '[train]\nepochs = 3\n[regularizer]\nkind = "rdrop"\n')
    cfg = load_config(path, ["train.lr=1e-4", "regularizer.alpha=2", "head.max_width=none"])
    assert cfg.train.epochs == 3 and cfg.train.lr == 1e-4
    assert cfg.regularizer.kind == "rdrop" and cfg.regularizer.alpha == 2.0
    assert cfg.head.max_width is None
    assert cfg.encoder.kind == "char_transformer"  # untouched default


def test_every_shipped_config_loads():
    from pathlib import Path

    configs = sorted(Path(__file__).parents[1].joinpath("configs").glob("*.toml"))
    assert len(configs) >= 5
    for path in configs:
        load_config(path)


@pytest.mark.parametrize(
    "text, override, message",
    [
        ("[train]\nepoch = 3\n", [], "train.epoch"),
        ("[trian]\nepochs = 3\n", [], "trian"),
        ("[train]\nepochs = 'three'\n", [], "train.epochs"),
        ("", ["train.batch_size=2.5"], "train.batch_size"),
        ("", ["regularizer.divergence=kl"], "regularizer.divergence"),
        ("", ["head.kind=pointer"], "head.kind"),
        ("[train\n", [], "invalid TOML"),
    ],
)
def test_bad_configs_name_the_key(tmp_path, text, override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text), override)


def test_missing_data_file_is_named(tmp_path, tiny_data):
    train, dev = tiny_data
    cfg = load_config(None, tiny_config_overrides(tmp_path / "nope.jsonl", dev, tmp_path / "o"))
    with pytest.raises(ConfigError, match=r"data.train: .*nope.jsonl"):
        Corpus.from_config(cfg.data)


def test_dev_label_unseen_in_training_fails(tmp_path, tiny_data):
    from gpner.data.readers import read, write_jsonl
    from gpner.data.spans import Example, Span

    train, dev = tiny_data
    odd = tmp_path / "odd.jsonl"
    write_jsonl(read(dev) + [Example("某某公司", [Span(0, 4, "COMPANY")])], odd)
    cfg = load_config(None, tiny_config_overrides(train, odd, tmp_path / "o"))
    with pytest.raises(ConfigError, match="data.dev: labels never seen in training: .*COMPANY"):
        Corpus.from_config(cfg.data)


def test_slices_and_validation_split(tmp_path, tiny_data):
    train, dev = tiny_data
    cfg = load_config(None, tiny_config_overrides(f"{train}[:40]", dev, tmp_path / "o"))
    corpus = Corpus.from_config(cfg.data)
    assert len(corpus.train) == 40 and len(corpus.dev) == 16 and corpus.test is None
    assert corpus.labels == ["LOC", "ORG", "PER"]
    cfg.data.validation_fraction = 0.25
    carved = Corpus.from_config(cfg.data)
    assert len(carved.train) == 30 and len(carved.dev) == 10
    again = Corpus.from_config(cfg.data)
    assert [e.text for e in again.dev] == [e.text for e in carved.dev]  # deterministic
    cfg.data.train = f"{train}[8:-8]"
    middle = Corpus.from_config(cfg.data)
    assert len(middle.train) == 48 - 16 - round(32 * 0.25)


def test_config_and_objectives_share_the_default_divergence_weight():
    # One default weight whichever way a regulariser is built (config, factory or class).
    assert RegularizerConfig().alpha == DEFAULT_ALPHA == RDrop().alpha
    assert build_objective("vat").alpha == DEFAULT_ALPHA


# ------------------------------------------------------------------------ every field, bad values


def _toml(value):
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value != value:
        return "nan"
    if isinstance(value, float) and value in (float("inf"), float("-inf")):
        return "inf" if value > 0 else "-inf"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return repr(value)


def _fields():
    """``(key, field, scalar type)`` of every leaf field of every config dataclass."""
    import dataclasses
    import typing

    from gpner.config import Config

    def walk(cls, prefix):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            hint = hints[f.name]
            if dataclasses.is_dataclass(hint):
                yield from walk(hint, prefix + f.name + ".")
                continue
            args = [a for a in typing.get_args(hint) if a is not type(None)]
            yield prefix + f.name, f, (args[0] if args else hint)

    return list(walk(Config, ""))


# Fields whose bad values are files: checked when the trainer reads them (before any training).
_FILE_VALUES = {
    "data.train": ["no/such/train.jsonl"],
    "data.dev": ["no/such/dev.jsonl"],
    "data.test": ["no/such/test.jsonl"],
    "encoder.path": ["no/such/model-dir"],
    "output_dir": ["<a file>"],
    "distill.teacher": ["no/such/teacher"],
    "distill.unlabeled": ["no/such/texts.txt"],
}


def _just_outside(bounds) -> list[float]:
    """Values just outside a ``Bounds``'s range."""
    bad: list[float] = [float("nan")]
    if bounds.low is not None:
        bad.append(bounds.low if bounds.low_open else bounds.low - 1)
    if bounds.high is not None:
        bad.append(bounds.high if bounds.high_open else bounds.high + 1)
    if bounds.even and bounds.low is not None:
        bad.append(bounds.low + 3 if bounds.low % 2 == 0 else bounds.low + 2)
    return bad


def _bad_values(key, f, kind):
    from gpner.config import Bounds, Choice

    values = [[1, 2]]  # a list is the wrong type for every scalar field
    check = f.metadata.get("check")
    if isinstance(check, Bounds):
        for v in _just_outside(check):
            if kind is int and v != v:
                continue  # NaN is not an int: the type check, tried above
            values.append(int(v) if kind is int else float(v))
    elif isinstance(check, Choice):
        values.append("no-such-name")
    values += _FILE_VALUES.get(key, [])
    return values


def test_every_field_rejects_a_bad_value_before_training(tmp_path, tiny_data, monkeypatch):
    from gpner import training

    def no_training(*args, **kwargs):
        raise AssertionError("an epoch started with a bad config")

    monkeypatch.setattr(training, "run_epoch", no_training)
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    train_path, dev_path = tiny_data
    fields = _fields()
    assert len(fields) >= 40  # the walk reached every section
    tried = 0
    for key, f, kind in fields:
        for value in _bad_values(key, f, kind):
            value = str(a_file) if value == "<a file>" else value
            extra = {key: _toml(value)}
            if key == "encoder.path":
                extra["encoder.kind"] = '"hf"'
            overrides = tiny_config_overrides(train_path, dev_path, tmp_path / "o", **extra)
            with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
                training.train(load_config(None, overrides))
            tried += 1
    assert tried > len(fields)


def test_max_width_zero_fails_at_load_not_at_the_first_evaluation(tmp_path, tiny_data):
    from gpner.config import Config, HeadConfig
    from gpner.training import train

    with pytest.raises(ConfigError, match=r"head\.max_width: must be >= 1"):
        load_config(None, ["head.max_width=0"])
    # A config built in Python is checked as strictly by the trainer.
    config = load_config(None, tiny_config_overrides(*tiny_data, tmp_path / "o"))
    config.head = HeadConfig(max_width=0)
    with pytest.raises(ConfigError, match=r"head\.max_width"):
        train(config)
    assert not (tmp_path / "o").exists()
    assert config.head.max_width == 0  # refused, not silently repaired in the caller's config
    assert Config().head.max_width is None


def test_an_empty_override_unsets_an_optional_field():
    import re

    assert load_config(None, ["data.dev="]).data.dev is None
    assert load_config(None, ["data.dev=none"]).data.dev is None
    unset = load_config(None, ["encoder.max_vocab=5", "encoder.max_vocab="])
    assert unset.encoder.max_vocab is None
    for key in ("train.epochs", "data.train", "encoder.kind"):
        with pytest.raises(ConfigError, match=re.escape(key) + ": cannot be unset"):
            load_config(None, [f"{key}="])


def test_cross_field_checks():
    with pytest.raises(ConfigError, match=r"encoder\.num_heads: must divide"):
        load_config(None, ["encoder.hidden_size=30", "encoder.num_heads=4"])
    with pytest.raises(ConfigError, match=r"encoder\.path: required"):
        load_config(None, ['encoder.kind="hf"'])
    with pytest.raises(ConfigError, match=r"data\.stride: must be below"):
        load_config(None, ["data.max_length=16", "data.stride=16"])
    with pytest.raises(ConfigError, match=r"head\.head_size: must be >= 2 and even"):
        load_config(None, ["head.head_size=7"])


def test_registries_are_what_validation_accepts():
    from gpner.config import registered_choices

    choices = registered_choices()
    assert set(choices) == {
        "data.format",
        "data.scheme",
        "encoder.kind",
        "head.kind",
        "regularizer.kind",
        "regularizer.divergence",
        "distill.kd",
    }
    for key, registry in choices.items():
        for name in registry:
            load_config(None, [f'{key}="{name}"'] + (["encoder.path=x"] if name == "hf" else []))
    # aliases and case, as the readers accept them
    assert load_config(None, ['data.format="CoNLL2003"', 'data.scheme="bilou"']).data.scheme


def test_train_help_lists_every_registered_choice(capsys):
    from gpner.cli import main
    from gpner.config import registered_choices

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    for key, registry in registered_choices().items():
        assert key in out and all(name in out for name in registry)
