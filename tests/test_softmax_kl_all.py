"""softmax_kl_all, the softmax KL with one distribution per example over all types' valid cells:
parity with a plain-loop float64 reference and with the dense oracle, gradcheck, finite values
and zero gradients on masked cells in float32/float16/bfloat16, properties, the factored version
the regularisers use, and the registry/config name ``regularizer.divergence = "softmax_kl_all"``."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gpner import functional as F
from gpner.config import config_from_dict
from gpner.functional import reference
from gpner.heads import SoftmaxKLAll
from gpner.regularizers import (
    DIVERGENCES,
    RDrop,
    build_objective,
    factored_softmax_kl_all,
)
from tests.test_regularizers import make_batch, make_model, ref_cross_entropy

pytestmark = pytest.mark.usefixtures("float64_default")  # tests/conftest.py


def make_case(seed=0, b=3, c=3, length=5, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(b, c, length, length, generator=g) * scale
    t = torch.randn(b, c, length, length, generator=g) * scale
    am = torch.ones(b, length, dtype=torch.bool)
    am[1, length - 2 :] = False  # padding in the second example
    if b > 2:
        am[2, :] = False  # an example without tokens: no valid cell at all
    return s, t, am


def ref_valid(am, b, i, j):
    return bool(am[b, i] and am[b, j] and i <= j)


def ref_softmax_kl_all(s, t, am):
    """Plain loops in float64: per example, p and q over every valid (c, i, j) cell."""
    batch, types, length, _ = s.shape
    out = torch.zeros(batch)
    for b in range(batch):
        cells = [
            (c, i, j)
            for c in range(types)
            for i in range(length)
            for j in range(length)
            if ref_valid(am, b, i, j)
        ]
        if not cells:
            continue
        zs = sum(math.exp(s[b, c, i, j].item()) for c, i, j in cells)
        zt = sum(math.exp(t[b, c, i, j].item()) for c, i, j in cells)
        total = 0.0
        for c, i, j in cells:
            p = math.exp(s[b, c, i, j].item()) / zs
            q = math.exp(t[b, c, i, j].item()) / zt
            total += p * math.log(p / q) + q * math.log(q / p)
        out[b] = total
    return out


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_matches_plain_loops_and_the_dense_oracle(reduction):
    s, t, am = make_case()
    want = ref_softmax_kl_all(s, t, am)
    assert want[2] == 0.0 and (want[:2] > 0).all()
    want = {"none": want, "mean": want.mean(), "sum": want.sum()}[reduction]
    got = F.softmax_kl_all(s, t, am, reduction)
    assert got.shape == want.shape
    assert torch.allclose(got, want, atol=1e-10)
    assert torch.allclose(reference.softmax_kl_all(s, t, am, reduction), want, atol=1e-10)
    assert torch.equal(SoftmaxKLAll(reduction)(s, t, am), got)


def test_band_layout_matches_the_full_layout_restricted_to_the_band():
    s, t, am = make_case(seed=1, length=6)
    width = 3
    band_s, band_t = F.dense_to_band(s, width), F.dense_to_band(t, width)
    got = F.softmax_kl_all(band_s, band_t, am, "none", max_width=width)
    # The full layout with the cells beyond the band masked out.
    length = s.shape[-1]
    i, j = torch.arange(length)[:, None], torch.arange(length)[None, :]
    inside = F.span_mask(am) & (j - i < width)
    assert torch.allclose(got, F.softmax_kl_all(s, t, inside, "none"), atol=1e-10)
    assert torch.allclose(
        reference.softmax_kl_all(band_s, band_t, am, "none", max_width=width), got, atol=1e-10
    )


def test_gradcheck_and_the_oracles_gradient():
    s, t, am = make_case(seed=2, b=2, c=2, length=4, scale=1.5)
    s, t = s.clone().requires_grad_(), t.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: F.softmax_kl_all(a, b, am, "sum"), (s, t))
    # With -inf on invalid cells the engine and the oracle agree, with zero gradient there.
    valid = F.span_mask(am)
    s2 = s.detach().masked_fill(~valid, -math.inf).requires_grad_()
    t2 = t.detach().masked_fill(~valid, -math.inf).requires_grad_()
    want = torch.autograd.grad(reference.softmax_kl_all(s2, t2, am, "sum"), (s2, t2))
    got = torch.autograd.grad(F.softmax_kl_all(s2, t2, am, "sum"), (s2, t2))
    for a, b in zip(want, got):
        assert torch.isfinite(b).all() and (b.masked_select(~valid.expand_as(b)) == 0).all()
        assert torch.allclose(a, b, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_masked_inf_cells_are_finite_with_zero_gradient(dtype):
    s, t, am = make_case(seed=3)
    valid = F.span_mask(am)
    s = s.masked_fill(~valid, float("-inf")).to(dtype).requires_grad_()
    t = t.masked_fill(~valid, float("-inf")).to(dtype).requires_grad_()
    value = F.softmax_kl_all(s, t, am)
    assert value.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert torch.isfinite(value)
    value.backward()
    for grad in (s.grad, t.grad):
        assert torch.isfinite(grad).all()
        assert (grad.masked_select(~valid.expand_as(grad)) == 0).all()
        assert grad.masked_select(valid.expand_as(grad)).abs().sum() > 0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_close_to_float64(dtype):
    s, t, am = make_case(seed=4)
    want = F.softmax_kl_all(s, t, am)
    got = F.softmax_kl_all(s.to(dtype), t.to(dtype), am)
    assert got.dtype == torch.float32 and got.item() == pytest.approx(want.item(), rel=5e-2)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31 - 1))
def test_properties(seed):
    s, t, am = make_case(seed=seed, scale=4.0)
    d = F.softmax_kl_all(s, t, am, "none")
    assert (d >= 0).all()
    assert torch.allclose(d, F.softmax_kl_all(t, s, am, "none"))
    assert torch.equal(F.softmax_kl_all(s, s, am, "none"), torch.zeros_like(d))
    # Invariant to one shift of all of an example's cells; not to a shift of one type alone,
    # which softmax_kl (one softmax per (example, type)) ignores: the types compete here.
    assert torch.allclose(F.softmax_kl_all(s + 3.0, t, am, "none"), d, atol=1e-9)
    one_type = s.clone()
    one_type[:, 0] += 3.0
    assert torch.allclose(F.softmax_kl(one_type, t, am, "none"), F.softmax_kl(s, t, am, "none"))
    assert not torch.allclose(F.softmax_kl_all(one_type, t, am, "none")[:2], d[:2])
    # With one type it is softmax_kl; masked cells' values never matter.
    assert torch.allclose(
        F.softmax_kl_all(s[:, :1], t[:, :1], am, "none"),
        F.softmax_kl(s[:, :1], t[:, :1], am, "none")[:, 0],
    )
    noise = torch.randn(s.shape, generator=torch.Generator().manual_seed(seed)) * 50
    invalid = ~F.span_mask(am)
    assert torch.allclose(
        F.softmax_kl_all(torch.where(invalid, noise, s), t, am, "none"), d, atol=1e-9
    )


def test_factored_version_registry_and_config():
    g = torch.Generator().manual_seed(5)
    q, k = torch.randn(2, 3, 6, 4, generator=g), torch.randn(2, 3, 6, 4, generator=g)
    q2, k2 = torch.randn(2, 3, 6, 4, generator=g), torch.randn(2, 3, 6, 4, generator=g)
    am = torch.tensor([[1] * 6, [1] * 4 + [0] * 2], dtype=torch.bool)
    f, h = F.global_pointer_factors(q, k, am), F.global_pointer_factors(q2, k2, am)
    want = F.softmax_kl_all(F.factors_to_logits(f), F.factors_to_logits(h), am, "mean")
    assert torch.allclose(factored_softmax_kl_all(f, h), want, atol=1e-12)
    assert DIVERGENCES["softmax_kl_all"] is factored_softmax_kl_all
    config = config_from_dict(
        {
            "data": {"train": "x.jsonl"},
            "regularizer": {"kind": "rdrop", "divergence": "softmax_kl_all"},
        }
    )
    objective = build_objective(config.regularizer.kind, divergence=config.regularizer.divergence)
    assert isinstance(objective, RDrop) and objective.divergence == "softmax_kl_all"
    vat = build_objective("vat", divergence="softmax_kl_all")
    assert vat.divergence == "softmax_kl_all"


def test_rdrop_with_softmax_kl_all_by_hand():
    model, batch = make_model(p=0.3, dtype=torch.float64), make_batch()
    ids, am = batch.input_ids, batch.attention_mask
    torch.manual_seed(11)
    loss, parts = RDrop(0.7, "softmax_kl_all")(model, batch)
    torch.manual_seed(11)
    logits = model(input_ids=torch.cat([ids, ids]), attention_mask=torch.cat([am, am]))
    s1, s2 = logits[:3], logits[3:]
    ce = (ref_cross_entropy(s1, batch.spans, am) + ref_cross_entropy(s2, batch.spans, am)) / 2
    reg = ref_softmax_kl_all(s1, s2, am).mean().item()
    assert reg > 1e-4
    assert parts["ce"] == pytest.approx(ce, rel=1e-10)
    assert parts["reg"] == pytest.approx(reg, rel=1e-10)
    assert loss.item() == pytest.approx(ce + 0.7 * reg, rel=1e-10)
