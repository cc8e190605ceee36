"""An .onnx file's gpner.json metadata is checked as a model directory's gpner.json is: a file
with missing, foreign, newer or malformed metadata gets gpner's own error naming it."""

import json

import pytest
import torch

pytest.importorskip("onnx", reason="the onnx extra is not installed (pip install gpner[onnx])")
pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
pytest.importorskip("onnxscript", reason="the onnx extra is not installed")

import onnx  # noqa: E402

import gpner  # noqa: E402
from gpner.checkpoints import CheckpointError  # noqa: E402
from gpner.config import ConfigError, load_config  # noqa: E402
from gpner.export import METADATA_KEY, export_onnx  # noqa: E402
from gpner.model import build_model, build_tokenizer  # noqa: E402
from tests.conftest import _synthetic_examples  # noqa: E402


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    sets = ["data.max_length=16", "head.head_size=8", "encoder.hidden_size=16",
            "encoder.num_layers=1", "encoder.num_heads=2", "encoder.ffn_size=32"]  # fmt: skip
    config = load_config(None, sets)
    texts = [ex.text for ex in _synthetic_examples(16, seed=1)]
    torch.manual_seed(0)
    model = build_model(config, ["LOC", "ORG", "PER"], build_tokenizer(config, texts), texts)
    return export_onnx(model, tmp_path_factory.mktemp("onnx") / "m.onnx")


def _with_metadata(source, target, value):
    """A copy of ``source`` whose gpner.json entry is ``value`` (None: no entry)."""
    proto = onnx.load(str(source))
    entries = {p.key: p.value for p in proto.metadata_props if p.key != METADATA_KEY}
    del proto.metadata_props[:]
    if value is not None:
        entries[METADATA_KEY] = value
    for key, text in entries.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, text
    onnx.save(proto, str(target))
    return target


def test_missing_or_foreign_metadata_gets_a_clear_error(exported, tmp_path):
    good = json.loads(
        {p.key: p.value for p in onnx.load(str(exported)).metadata_props}[METADATA_KEY]
    )
    assert good["format"] == "gpner-onnx" and good["format_version"] == 1
    assert gpner.load(exported, backend="onnxruntime").labels == ["LOC", "ORG", "PER"]
    cases = [
        (None, "no gpner.json metadata; not exported by gpner"),
        ("{not json", "metadata is not JSON"),
        (json.dumps({**good, "format": "gpner-model"}), "not a gpner-onnx file"),
        (json.dumps({"format": "something-else"}), "not a gpner-onnx file"),
        (json.dumps([good]), "not a gpner-onnx file"),
        (json.dumps({**good, "format_version": 99}), "upgrade gpner"),
        (json.dumps({**good, "format_version": "1"}), "is not a format version"),
        (json.dumps({k: v for k, v in good.items() if k != "format_version"}), "format version"),
        (json.dumps({k: v for k, v in good.items() if k != "labels"}), "missing field 'labels'"),
        (json.dumps({**good, "labels": "PER"}), "labels must be a list"),
        (json.dumps({**good, "tokenizer": {"type": "nope"}}), "not a readable tokenizer"),
    ]
    for k, (value, message) in enumerate(cases):
        path = _with_metadata(exported, tmp_path / f"case{k}.onnx", value)
        with pytest.raises(CheckpointError) as info:
            gpner.load(path, backend="onnxruntime")
        assert str(path) in str(info.value) and message in str(info.value), (value, info.value)
    bad_config = {**good, "config": {**good["config"], "head": {"max_width": 0}}}
    path = _with_metadata(exported, tmp_path / "config.onnx", json.dumps(bad_config))
    with pytest.raises(ConfigError, match=r"gpner\.json metadata\): head\.max_width"):
        gpner.load(path, backend="onnxruntime")
