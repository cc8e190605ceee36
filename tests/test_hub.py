"""Encoders by Hugging Face hub id, through the standard cache, with no network at all.

The cache is built here in the hub's own layout (``models--org--name/{blobs,refs,snapshots}``)
under a temporary ``HF_HOME``, holding a tiny random BERT and its tokenizer.
"""

import hashlib
import socket

import pytest
import torch

import gpner
from gpner.config import load_config
from gpner.encoders import HFEncoder
from gpner.model import build_model, build_tokenizer
from gpner.training import train
from tests.conftest import tiny_config_overrides, write_tiny_hf_model

HUB_ID = "tiny-org/tiny-bert"


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"a test tried to reach the network: {args[:2]}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture
def hf_home(tmp_path, monkeypatch):
    """A temporary HF_HOME whose hub cache holds HUB_ID, offline."""
    model = write_tiny_hf_model(tmp_path / "source")
    home = tmp_path / "hf-home"
    repo = home / "hub" / ("models--" + HUB_ID.replace("/", "--"))
    commit = hashlib.sha1(b"tiny").hexdigest()
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for file in sorted(model.iterdir()):
        data = file.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / file.name).symlink_to(f"../../blobs/{blob.name}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home, model


def _config(tiny_data, out, encoder_path, **extra):
    values = {"encoder.kind": '"hf"', "encoder.path": f'"{encoder_path}"', **extra}
    return load_config(None, tiny_config_overrides(*tiny_data, out, **values))


def test_a_cached_hub_id_loads_offline_like_its_directory(hf_home, tiny_data, tmp_path):
    _, source = hf_home
    by_id = build_tokenizer(_config(tiny_data, tmp_path, HUB_ID), [])
    by_dir = build_tokenizer(_config(tiny_data, tmp_path, source), [])
    assert by_id.state_dict()["tokenizer_json"] == by_dir.state_dict()["tokenizer_json"]
    assert (by_id.prefix_ids, by_id.suffix_ids, by_id.pad_id) == (
        by_dir.prefix_ids,
        by_dir.suffix_ids,
        by_dir.pad_id,
    )
    a = HFEncoder.from_pretrained(HUB_ID).eval()
    b = HFEncoder.from_pretrained(source).eval()
    ids = torch.tensor([by_id.prefix_ids + by_id.encode("张三在上海").ids + by_id.suffix_ids])
    am = torch.ones_like(ids, dtype=torch.bool)
    assert torch.equal(a(am, ids), b(am, ids))


def test_train_by_hub_id_then_the_saved_model_needs_no_cache(hf_home, tiny_data, tmp_path):
    import shutil

    home, _ = hf_home
    out = tmp_path / "run"
    result = train(_config(tiny_data, out, HUB_ID, **{"train.epochs": 1}))
    assert result.history[0]["steps"] > 0
    shutil.rmtree(home)  # the saved model rebuilds from its own directory alone
    model = gpner.load(out / "best")
    assert model.config.encoder.path == HUB_ID
    assert gpner.predict(model, ["张三在上海工作。"])[0] is not None


def test_a_missing_hub_id_offline_says_which_and_what_to_do(hf_home, tiny_data, tmp_path):
    config = _config(tiny_data, tmp_path, "someone/not-cached")
    with pytest.raises(FileNotFoundError) as info:
        build_tokenizer(config, [])
    message = str(info.value)
    assert "'someone/not-cached'" in message and "HF_HUB_OFFLINE=1" in message
    assert "hf download someone/not-cached" in message and "local directory" in message
    with pytest.raises(FileNotFoundError, match="hf download someone/not-cached"):
        build_model(config, ["PER"], None)


def test_paths_that_are_no_hub_id_are_plain_missing_directories(hf_home):
    from gpner.hub import resolve_local

    for name in ["./nowhere", "/abs/nowhere", "../up/model", "a/b/c"]:
        with pytest.raises(FileNotFoundError, match="no model directory"):
            resolve_local(name)
    assert resolve_local("bert-base-chinese") is None  # a hub id
    assert resolve_local(HUB_ID) is None


def test_display_name_shows_names_never_local_directories():
    from gpner.hub import display_name

    assert display_name("/home/someone/models/m3e-small") == "m3e-small"
    assert display_name("../models/bert-zh/") == "bert-zh"
    assert display_name("bert-base-chinese") == "bert-base-chinese"
    assert display_name(HUB_ID) == HUB_ID
    assert display_name("m3e-small") == "m3e-small"
    assert display_name(None) is None


def test_remote_code_is_refused_explicitly(tiny_hf_dir, monkeypatch, tmp_path):
    import transformers

    from gpner.data.tokenizers import HFTokenizer

    seen = []

    class Stop(Exception):
        pass

    def spy(*args, **kwargs):
        seen.append(kwargs)
        raise Stop

    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", spy)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", spy)
    with pytest.raises(Stop):
        HFEncoder.from_pretrained(tiny_hf_dir)
    with pytest.raises(Stop):  # a slow tokenizer converted to a fast one
        HFTokenizer._convert_slow(tiny_hf_dir)
    assert [kwargs.get("trust_remote_code", "unset") for kwargs in seen] == [False, False]
