"""The band layout (maximum span width W): helpers, heads, losses and decoding.

A band computation must equal the full computation restricted to spans shorter than W, and the
plain full computation whenever W covers every span.
"""

import pytest
import torch

from gpner import functional as F
from gpner.heads import (
    EfficientGlobalPointer,
    GlobalPointer,
    GlobalPointerKL,
    MultilabelCrossEntropy,
    build_head,
)

DT = torch.float64


def attention(b=3, length=12):
    am = torch.ones(b, length, dtype=torch.bool)
    am[1, length - 4 :] = False
    am[2, 3:] = False
    return am


def gold(b, c, length, width, seed=0, n=10):
    g = torch.Generator().manual_seed(seed)
    i = torch.randint(0, length, (n,), generator=g)
    j = (i + torch.randint(0, width, (n,), generator=g)).clamp(max=length - 1)
    return torch.stack(
        [torch.randint(0, b, (n,), generator=g), torch.randint(0, c, (n,), generator=g), i, j], -1
    )


def test_band_mask_is_the_band_of_the_width_limited_span_mask():
    am = attention()
    for width in (1, 3, 12, 20):
        band = F.band_mask(am, width)
        assert band.shape == (3, 1, 12, width)
        assert torch.equal(F.dense_to_band(F.span_mask(am, width), width), band)
        # and nothing outside the band survives the round trip
        assert torch.equal(F.band_to_dense(band), F.span_mask(am, width))


def test_dense_band_round_trip_and_fill():
    x = torch.randn(2, 3, 7, 7, dtype=DT)
    band = F.dense_to_band(x, 3)
    for i in range(7):
        for w in range(3):
            want = x[..., i, i + w] if i + w < 7 else torch.full_like(x[..., 0, 0], -1.7e308)
            if i + w < 7:
                assert torch.equal(band[..., i, w], want)
            else:
                assert (band[..., i, w] == torch.finfo(DT).min).all()
    back = F.band_to_dense(band, fill=0.0)
    i = torch.arange(7)
    inside = (i[None, :] >= i[:, None]) & (i[None, :] - i[:, None] < 3)
    assert torch.equal(back, x * inside)


def test_span_index_conversion():
    spans = torch.tensor([[0, 1, 2, 2], [1, 0, 3, 5], [1, 1, 0, 9], [0, 0, 4, 3]])
    band = F.spans_to_band(spans, max_width=3)
    assert band.tolist() == [[0, 1, 2, 0], [1, 0, 3, 2]]  # width 10 and j < i dropped
    assert torch.equal(F.band_to_spans(band), spans[:2])


@pytest.mark.parametrize("cls", [GlobalPointer, EfficientGlobalPointer])
@pytest.mark.parametrize("width", [1, 4, 30])
def test_band_heads_equal_the_full_heads_inside_the_band(cls, width):
    torch.manual_seed(0)
    head = cls(10, 3, 8).double()
    band_head = cls(10, 3, 8, max_width=width).double()
    band_head.load_state_dict(head.state_dict())
    hidden = torch.randn(3, 12, 10, dtype=DT)
    am = attention()
    full = head(hidden, am)
    band = band_head(hidden, am)
    assert band.shape == (3, 3, 12, width)
    want = F.dense_to_band(full.masked_fill(~F.span_mask(am, width), -5.0), width, fill=-5.0)
    got = band.masked_fill(~F.band_mask(am, width), -5.0)
    assert torch.allclose(got, want, atol=1e-12)
    assert (band[~F.band_mask(am, width).expand_as(band)] == torch.finfo(DT).min).all()
    # factors agree with forward
    again = F.factors_to_logits(band_head.factors(hidden, am))
    assert torch.equal(again, band)


@pytest.mark.parametrize("kind", ["global_pointer", "efficient_global_pointer"])
def test_band_losses_equal_full_losses_restricted_to_the_band(kind):
    torch.manual_seed(1)
    width, b, c, length = 4, 3, 3, 12
    full_head = build_head(kind, 10, c, 8).double()
    band_head = build_head(kind, 10, c, 8, max_width=width).double()
    band_head.load_state_dict(full_head.state_dict())
    am = attention(b, length)
    spans = gold(b, c, length, width)  # all shorter than W
    h1, h2 = torch.randn(2, b, length, 10, dtype=DT).unbind()
    restricted = F.span_mask(am, width)

    def full_terms():
        s, t = full_head(h1, am), full_head(h2, am)
        return [
            F.sparse_multilabel_categorical_crossentropy(s, spans, restricted, "none"),
            F.sparse_multilabel_categorical_crossentropy(t, spans, restricted, "none"),
            F.global_pointer_kl(s, t, restricted, "none"),
        ]

    def band_terms():
        s, t = band_head(h1, am), band_head(h2, am)
        return [
            F.sparse_multilabel_categorical_crossentropy(s, spans, am, "none", max_width=width),
            F.sparse_multilabel_categorical_crossentropy(t, spans, am, "none", max_width=width),
            F.global_pointer_kl(s, t, am, "none", max_width=width),
        ]

    def fused_terms():
        f, g = band_head.factors(h1, am), band_head.factors(h2, am)
        return list(F.fused_rdrop_losses(f, g, spans, "none"))

    want = full_terms()
    loss = sum(x.sum() for x in want)
    want_grads = torch.autograd.grad(loss, list(full_head.parameters()))
    for terms in (band_terms, fused_terms):
        got = terms()
        for a, b_ in zip(got, want):
            assert torch.allclose(a, b_, atol=1e-10)
        grads = torch.autograd.grad(sum(x.sum() for x in got), list(band_head.parameters()))
        for a, b_ in zip(grads, want_grads):
            assert torch.allclose(a, b_, atol=1e-10)


def test_band_covering_every_span_equals_the_plain_full_computation():
    torch.manual_seed(2)
    b, c, length = 3, 2, 12
    head = GlobalPointer(10, c, 8).double()
    wide = GlobalPointer(10, c, 8, max_width=length).double()
    wide.load_state_dict(head.state_dict())
    am = attention(b, length)
    spans = gold(b, c, length, length)
    hidden = torch.randn(b, length, 10, dtype=DT)
    full = F.sparse_multilabel_categorical_crossentropy(head(hidden, am), spans, am)
    fused = F.fused_crossentropy(wide.factors(hidden, am), spans)
    band = MultilabelCrossEntropy(max_width=length)(wide(hidden, am), mask=am, spans=spans)
    assert torch.allclose(full, fused, atol=1e-12) and torch.allclose(full, band, atol=1e-12)
    kl = GlobalPointerKL(max_width=length)(wide(hidden, am), wide(hidden * 1.1, am), am)
    want = F.global_pointer_kl(head(hidden, am), head(hidden * 1.1, am), am)
    assert torch.allclose(kl, want, atol=1e-12)


@pytest.mark.parametrize("threshold", [0.0, 0.5])
def test_select_cells_reads_band_and_full_alike(threshold):
    torch.manual_seed(3)
    width = 3
    am = attention()
    full = torch.randn(3, 2, 12, 12)
    band = F.dense_to_band(full, width)
    index, scores = F.select_cells(full, threshold, am)
    # plain loop over the full layout
    expected = []
    for b in range(3):
        for i in range(12):
            for j in range(i, 12):
                for c in range(2):
                    if am[b, i] and am[b, j] and full[b, c, i, j] > threshold:
                        expected.append([b, c, i, j])
    assert index.tolist() == expected
    assert torch.equal(scores, full[index[:, 0], index[:, 1], index[:, 2], index[:, 3]])
    band_index, band_scores = F.select_cells(band, threshold, am, max_width=width)
    inside = (index[:, 3] - index[:, 2]) < width
    assert torch.equal(band_index, index[inside])
    assert torch.equal(band_scores, scores[inside])


def test_max_width_is_validated_and_passed_through():
    with pytest.raises(ValueError):
        GlobalPointer(4, 2, 4, max_width=0)
    assert build_head("efficient_global_pointer", 4, 2, 4, max_width=5).max_width == 5
    with pytest.raises(ValueError):
        F.sparse_multilabel_categorical_crossentropy(
            torch.zeros(1, 1, 4, 3),
            torch.zeros(0, 4),
            torch.ones(1, 4, dtype=torch.bool),
            max_width=2,
        )
