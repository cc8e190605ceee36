"""Config loading: TOML, overrides, and early, named failures."""

import pytest

from gpner.config import ConfigError, RegularizerConfig, load_config
from gpner.regularizers import DEFAULT_ALPHA, RDrop, build_objective
from gpner.training import prepare_data
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
        prepare_data(cfg)


def test_dev_label_unseen_in_training_fails(tmp_path, tiny_data):
    from gpner.data.readers import read, write_jsonl
    from gpner.data.spans import Example, Span

    train, dev = tiny_data
    odd = tmp_path / "odd.jsonl"
    write_jsonl(read(dev) + [Example("某某公司", [Span(0, 4, "COMPANY")])], odd)
    cfg = load_config(None, tiny_config_overrides(train, odd, tmp_path / "o"))
    with pytest.raises(ConfigError, match="data.dev: labels never seen in training: .*COMPANY"):
        prepare_data(cfg)


def test_slices_and_validation_split(tmp_path, tiny_data):
    train, dev = tiny_data
    cfg = load_config(None, tiny_config_overrides(f"{train}[:40]", dev, tmp_path / "o"))
    tr, dv, test, labels = prepare_data(cfg)
    assert len(tr) == 40 and len(dv) == 16 and test is None
    assert labels == ["LOC", "ORG", "PER"]
    cfg.data.validation_fraction = 0.25
    tr2, dv2, _, _ = prepare_data(cfg)
    assert len(tr2) == 30 and len(dv2) == 10
    tr3, dv3, _, _ = prepare_data(cfg)
    assert [e.text for e in dv3] == [e.text for e in dv2]  # deterministic


def test_config_and_objectives_share_the_default_divergence_weight():
    # One default weight whichever way a regulariser is built (config, factory or class).
    assert RegularizerConfig().alpha == DEFAULT_ALPHA == RDrop().alpha
    assert build_objective("vat").alpha == DEFAULT_ALPHA
