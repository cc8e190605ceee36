"""NERModel: ``span_factors`` (what training reads) and ``forward`` (the logits for decoding)."""

from __future__ import annotations

import math

import pytest
import torch

from gpner import functional as F
from gpner.config import Config
from gpner.data.tokenizers import CharTokenizer
from gpner.encoders import CharTransformerEncoder
from gpner.functional._blocked import BlockLayout
from gpner.heads import build_head
from gpner.model import NERModel
from gpner.regularizers import build_objective

HEADS = ["global_pointer", "efficient_global_pointer"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: intra-op threads only add overhead, and contend with other processes on a
    busy 2-core machine (measured 15 s against 1.5 s for this module). Restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_model(head: str, max_width: int | None, dtype=torch.float32) -> NERModel:
    torch.manual_seed(0)
    encoder = CharTransformerEncoder(
        vocab_size=12, hidden_size=8, num_layers=1, num_heads=2, ffn_size=16, max_positions=8
    )
    width = {"max_width": max_width} if max_width else {}
    labels = ["LOC", "ORG", "PER"]
    model = NERModel(
        encoder,
        build_head(head, 8, len(labels), 4, **width),
        labels,
        CharTokenizer.build(["abc"]),
        Config(),
    )
    return model.to(dtype)


def tiny_batch():
    class Batch:
        input_ids = torch.tensor([[3, 4, 5, 6, 7, 8], [3, 9, 10, 0, 0, 0]])  # (B, L)
        attention_mask = input_ids != 0  # (B, L)
        spans = torch.tensor([[0, 0, 0, 1], [0, 2, 1, 4], [1, 1, 0, 2]])  # (N, 4)

    return Batch()


@pytest.mark.parametrize("max_width", [None, 3])
@pytest.mark.parametrize("head", HEADS)
def test_forward_is_the_materialised_span_factors(head, max_width):
    model, batch = tiny_model(head, max_width).eval(), tiny_batch()
    ids, am = batch.input_ids, batch.attention_mask
    factors = model.span_factors(ids, am)
    assert isinstance(factors, F.SpanFactors)
    assert factors.max_width == max_width and torch.equal(factors.attention_mask, am)
    logits = model(ids, am)  # (B, C, L, L), or band (B, C, L, W)
    assert logits.shape == (2, 3, 6, max_width or 6)
    assert torch.equal(logits, F.factors_to_logits(factors))
    # The same head as before the fused path: its forward on the encoder's hidden states.
    assert torch.equal(logits, model.head(model.encoder(am, input_ids=ids), am))
    # Argument handling shared with forward: the default mask is all real tokens, and the
    # embeddings path equals the ids path.
    full = torch.ones_like(am)
    assert torch.equal(model.span_factors(ids).attention_mask, full)
    assert torch.equal(model(ids), model(ids, full))
    by_embeds = model.span_factors(inputs_embeds=model.embed(ids), attention_mask=am)
    assert torch.equal(F.factors_to_logits(by_embeds), logits)


@pytest.mark.parametrize("max_width", [None, 3])
@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("kind", ["none", "rdrop", "vat"])
@pytest.mark.parametrize("divergence", ["gp_kl", "softmax_kl"])
def test_objectives_train_the_real_model(kind, divergence, head, max_width):
    # The objectives on NERModel itself (train mode, dropout on), band heads included: a finite
    # loss whose cross-entropy part is the drop-in loss on the model's own logits (dropout off
    # for that comparison), and finite gradients for every parameter used.
    model, batch = tiny_model(head, max_width, torch.float64), tiny_batch()
    objective = build_objective(kind, alpha=0.5, divergence=divergence)
    loss, parts = objective(model.train(), batch)
    assert torch.isfinite(loss) and all(math.isfinite(v) for v in parts.values())
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is None or torch.isfinite(p.grad).all(), name
    assert model.head.proj.weight.grad.abs().sum() > 0

    _, parts = build_objective(kind, divergence=divergence)(model.eval(), batch)
    logits = model(batch.input_ids, batch.attention_mask)
    ce = F.sparse_multilabel_categorical_crossentropy(
        logits, batch.spans, batch.attention_mask, max_width=max_width
    )
    assert parts["ce"] == pytest.approx(ce.item(), rel=1e-10)
    if kind == "rdrop":
        assert parts["reg"] == 0.0  # no dropout in eval mode: identical halves


@pytest.mark.parametrize("kind", ["none", "rdrop", "vat"])
def test_training_steps_never_build_a_dense_cell_tensor(monkeypatch, kind):
    from tests.test_fast_losses import _LargestTensor

    monkeypatch.setattr(BlockLayout, "CELLS", 1 << 12)
    batch_size, types, length = 2, 8, 96
    torch.manual_seed(0)
    encoder = CharTransformerEncoder(
        vocab_size=12, hidden_size=8, num_layers=1, num_heads=1, ffn_size=16, max_positions=length
    )
    labels = [f"T{c}" for c in range(types)]
    head = build_head("global_pointer", 8, types, 4)
    model = NERModel(encoder, head, labels, CharTokenizer.build(["abc"]), Config())

    class Batch:
        input_ids = torch.randint(1, 12, (batch_size, length))  # (B, L)
        attention_mask = torch.ones(batch_size, length, dtype=torch.bool)
        spans = torch.tensor([[0, 1, 3, 5], [1, 7, 40, 41]])  # (N, 4)

    Batch.attention_mask[1, 80:] = False
    objective = build_objective(kind, alpha=1.0, divergence="gp_kl")
    with _LargestTensor() as probe:
        loss, _ = objective(model, Batch)
        loss.backward()
    # One (B, C, L, L) tensor would be 4x this bound; the encoder's (B, 1, L, L) attention fits.
    assert probe.largest <= batch_size * types * length * length // 4
