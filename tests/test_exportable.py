"""The formulations the from-scratch encoders trace under ``torch.export`` (ONNX export) equal
their eager code: the bigram lookup by gathers, and the BiLSTM as one op per layer (which the
export writes as ONNX ``LSTM``; its parity with onnxruntime is in test_onnx.py)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from gpner.encoders import (
    BigramEmbedding,
    BiLSTMEncoder,
    bigram_keys,
    bilstm_layer,
    sorted_lookup,
)


@settings(max_examples=60, deadline=None)
@given(
    keys=st.sets(st.integers(0, 10_000), min_size=1, max_size=300),
    queries=st.lists(st.integers(-5, 10_010), min_size=1, max_size=40),
)
def test_sorted_lookup_is_searchsorted(keys, queries):
    keys = torch.tensor(sorted(keys))
    query = torch.tensor(queries).view(-1, 1).expand(-1, 3)  # any shape
    expected = torch.searchsorted(keys, query.contiguous()).clamp(max=keys.numel() - 1)
    assert torch.equal(sorted_lookup(keys, query), expected)


def _rows(seed: int, vocab: int = 11, batch: int = 6, length: int = 9):
    """Random ids padded on the right to random lengths (one row empty, one full) and the mask."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (batch, length), generator=g)
    lengths = torch.randint(1, length + 1, (batch,), generator=g)
    lengths[0], lengths[1] = length, 0
    mask = torch.arange(length) < lengths[:, None]
    return ids.masked_fill(~mask, 0), mask


@pytest.mark.parametrize("seed", range(3))
def test_bigram_ids_on_the_export_path_equal_the_eager_ones(seed, monkeypatch):
    ids, _ = _rows(seed)
    keys = bigram_keys(_rows(seed + 10)[0].tolist(), 11)
    table = BigramEmbedding(len(keys), 11, 4)
    table.set_vocabulary(keys)
    eager = table.ids(ids)
    assert (eager > 1).any() and (eager == 1).any()  # known and unknown bigrams both occur
    monkeypatch.setattr(torch.compiler, "is_exporting", lambda: True)
    assert torch.equal(table.ids(ids), eager)


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("seed", range(3))
def test_bilstm_export_path_equals_the_eager_and_the_packed_lstm(layers, seed, monkeypatch):
    torch.manual_seed(seed)
    enc = BiLSTMEncoder(vocab_size=11, hidden_size=8, num_layers=layers).double().eval()
    ids, mask = _rows(seed)
    x = enc.embed(ids)
    eager = enc(mask, inputs_embeds=x)  # (B, L, H)
    # the definition: nn.LSTM itself over the rows packed to their lengths
    lengths, real = mask.sum(1), mask.any(1)  # row 1 is empty, which packing refuses
    packed = pack_padded_sequence(x[real], lengths[real], batch_first=True, enforce_sorted=False)
    expected, _ = pad_packed_sequence(enc.lstm(packed)[0], batch_first=True, total_length=9)
    torch.testing.assert_close(eager[real], expected, rtol=1e-12, atol=1e-12)
    assert torch.equal(eager[~mask], torch.zeros_like(eager[~mask]))  # padding stays zero
    monkeypatch.setattr(torch.compiler, "is_exporting", lambda: True)
    traced = enc(mask, ids)  # what export traces: one op per layer
    # an empty row runs one step there (as ONNX LSTM does); masked downstream
    torch.testing.assert_close(traced[real], eager[real], rtol=1e-12, atol=1e-12)


def test_bilstm_layer_op_has_the_shape_export_sees():
    torch.manual_seed(0)
    enc = BiLSTMEncoder(vocab_size=11, hidden_size=8, num_layers=2).eval()
    ids, mask = _rows(1)
    # the op's fake implementation (what torch.export propagates) against the real output
    torch.library.opcheck(
        bilstm_layer(),
        (
            enc.embed(ids),
            mask.sum(1).clamp(min=1),
            *[p.detach() for p in enc.lstm.parameters()][:8],
        ),
        test_utils=("test_schema", "test_faketensor"),
    )
