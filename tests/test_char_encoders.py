"""The from-scratch encoder options: the BiLSTM and character-bigram embeddings."""

import random

import pytest
import torch

from gpner.checkpoints import load, save
from gpner.config import ConfigError, load_config
from gpner.data.readers import read
from gpner.encoders import (
    BigramEmbedding,
    BiLSTMEncoder,
    CharTransformerEncoder,
    bigram_keys,
    encoder_from_spec,
)
from gpner.inference import predict
from gpner.model import build_model, build_tokenizer
from gpner.training import train
from tests.conftest import tiny_config_overrides


def _reference_ids(rows, keys, vocab_size, pad_id):
    """Plain-loop bigram ids: 0 next to padding, k + 2 for keys[k], 1 for an unknown pair."""
    index = {k: n for n, k in enumerate(keys)}
    out = []
    for row in rows:
        ids = []
        for a, b in zip(row, row[1:]):
            key = a * vocab_size + b
            ids.append(0 if pad_id in (a, b) else index[key] + 2 if key in index else 1)
        out.append(ids)
    return out


def test_bigram_keys_count_pairs_within_sequences_and_drop_rare_ones():
    sequences = [[2, 3, 4, 2, 3], [3, 4, 5], [5, 0, 6]]
    assert bigram_keys(sequences, 10).tolist() == [23, 34, 42, 45]  # 5-0 and 0-6 never count
    assert bigram_keys(sequences, 10, min_freq=2).tolist() == [23, 34]
    assert bigram_keys([], 10).numel() == 0


@pytest.mark.parametrize("seed", range(5))
def test_bigram_ids_match_a_plain_loop(seed):
    rng = random.Random(seed)
    vocab, pad = 7, 0
    rows = [[rng.randrange(vocab) for _ in range(9)] for _ in range(4)]
    rows[0][6:] = [pad] * 3  # padded tail
    train = [[rng.randrange(1, vocab) for _ in range(rng.randrange(2, 12))] for _ in range(6)]
    keys = bigram_keys(train, vocab, pad, min_freq=rng.choice([1, 2]))
    table = BigramEmbedding(len(keys), vocab, 4, pad)
    table.set_vocabulary(keys)
    got = table.ids(torch.tensor(rows)).tolist()
    assert got == _reference_ids(rows, keys.tolist(), vocab, pad)


def test_a_narrow_bigram_table_is_projected_and_no_bigram_stays_zero():
    table = BigramEmbedding(2, 10, 3, out_dim=5)
    table.set_vocabulary(torch.tensor([23, 34]))
    out = table(torch.tensor([[2, 3, 4, 0]]))[0]
    assert out.shape == (4, 5)
    w = table.project.weight  # (5, 3)
    torch.testing.assert_close(out[2], w @ table.embedding.weight[3])
    torch.testing.assert_close(out[3], torch.zeros(5))


def test_bigram_embedding_adds_the_left_and_right_bigram_of_each_token():
    table = BigramEmbedding(2, 10, 3)
    table.set_vocabulary(torch.tensor([23, 34]))
    ids = torch.tensor([[2, 3, 4, 0]])  # bigrams 2-3 (id 2), 3-4 (id 3), 4-pad (id 0)
    e = table.embedding.weight
    out = table(ids)[0]
    torch.testing.assert_close(out[0], e[2])
    torch.testing.assert_close(out[1], e[2] + e[3])
    torch.testing.assert_close(out[2], e[3])  # its right neighbour is padding: no bigram
    torch.testing.assert_close(out[3], torch.zeros(3))
    with pytest.raises(ValueError, match="bigram keys"):
        table.set_vocabulary(torch.tensor([1, 2, 3]))


@pytest.mark.parametrize("bigrams", [None, 3])
def test_bilstm_padding_does_not_leak_and_embeds_path_equals_ids_path(bigrams):
    torch.manual_seed(0)
    enc = BiLSTMEncoder(vocab_size=12, hidden_size=8, num_layers=2, num_bigrams=bigrams).eval()
    if bigrams:
        enc.bigrams.set_vocabulary(torch.tensor([2 * 12 + 3, 3 * 12 + 4, 5 * 12 + 6]))
    ids = torch.tensor([[2, 3, 4, 5, 6]])
    am = torch.ones(1, 5, dtype=torch.bool)
    padded = torch.cat([ids, torch.zeros(1, 3, dtype=torch.long)], 1)
    am_padded = torch.cat([am, torch.zeros(1, 3, dtype=torch.bool)], 1)
    out = enc(am, ids)
    assert out.shape == (1, 5, 8)
    torch.testing.assert_close(out, enc(am_padded, padded)[:, :5])
    assert torch.equal(enc(am, ids), enc(am, inputs_embeds=enc.embed(ids)))
    rebuilt = encoder_from_spec(enc.spec())
    rebuilt.load_state_dict(enc.state_dict())
    assert torch.equal(rebuilt.eval()(am, ids), out)


def test_bilstm_needs_an_even_width():
    with pytest.raises(ValueError, match="even"):
        BiLSTMEncoder(vocab_size=5, hidden_size=7)


def test_char_transformer_spec_without_bigrams_is_unchanged():
    # Checkpoints written before bigrams existed carry this spec; it must still rebuild.
    enc = CharTransformerEncoder(vocab_size=9, hidden_size=8, num_heads=2, ffn_size=16)
    assert "num_bigrams" not in enc.spec() and enc.bigrams is None
    assert not any(name.startswith("bigrams") for name in enc.state_dict())


@pytest.mark.parametrize("kind", ["char_transformer", "bilstm"])
@pytest.mark.parametrize("bigram_size", ["none", 8])
def test_bigram_model_saves_its_vocabulary_and_reloads_from_the_file_alone(
    tmp_path, tiny_data, kind, bigram_size
):
    extra = {"encoder.kind": f'"{kind}"', "encoder.bigrams": "true"}
    extra["encoder.bigram_size"] = bigram_size
    cfg = load_config(None, tiny_config_overrides(*tiny_data, tmp_path, **extra))
    texts = [e.text for e in read(tiny_data[0])]
    model = build_model(cfg, ["LOC", "ORG", "PER"], build_tokenizer(cfg, texts), texts)
    keys = model.encoder.bigrams.keys
    assert keys.numel() > 0 and torch.all(keys[1:] > keys[:-1])  # sorted, distinct
    table = model.encoder.bigrams.embedding.weight
    assert table.shape[1] == (cfg.encoder.bigram_size or cfg.encoder.hidden_size)
    save(model, tmp_path / "m")
    again = load(tmp_path / "m")
    assert torch.equal(again.encoder.bigrams.keys, keys)
    ids = torch.tensor(model.tokenizer.encode(texts[0]).ids)[None]
    am = torch.ones_like(ids, dtype=torch.bool)
    assert torch.equal(model.eval()(ids, am), again(ids, am))
    with pytest.raises(ValueError, match="training texts"):
        build_model(cfg, ["LOC"], model.tokenizer)


@pytest.mark.parametrize("regularizer", ["none", "vat"])
def test_bilstm_with_bigrams_learns_the_synthetic_data(tmp_path, tiny_data, regularizer):
    out = tmp_path / regularizer
    overrides = tiny_config_overrides(
        *tiny_data,
        out,
        **{
            "encoder.kind": '"bilstm"',
            "encoder.bigrams": "true",
            "encoder.min_bigram_freq": 1,
            "regularizer.kind": f'"{regularizer}"',
            "train.epochs": 8,
            "train.lr": 1e-2,
        },
    )
    result = train(load_config(None, overrides))
    assert result.best_f1 > 0.8
    model = load(out / "best")
    text = "张三在北京工作。"
    spans = {(s.start, s.end, s.label) for s, _ in predict(model, [text])[0]}
    assert (0, 2, "PER") in spans and (3, 5, "LOC") in spans


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["encoder.kind=hf", "encoder.path=x", "encoder.bigrams=true"], "encoder.bigrams"),
        (["encoder.min_bigram_freq=0"], "encoder.min_bigram_freq"),
        (["encoder.kind=bilstm", "encoder.hidden_size=33"], "encoder.hidden_size"),
        (["encoder.kind=lstm"], "encoder.kind"),
    ],
)
def test_bad_encoder_options_fail_before_training(tmp_path, tiny_data, overrides, message):
    with pytest.raises(ConfigError, match=message):
        train(load_config(None, tiny_config_overrides(*tiny_data, tmp_path) + overrides))
