"""The numeric core against plain-loop float64 references, gradcheck and properties."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gpner import functional as F
from gpner.functional import reference

pytestmark = pytest.mark.usefixtures("float64_default")  # tests/conftest.py


# ------------------------------------------------------------------ plain-loop references (float64)


def ref_valid(attention_mask):
    b_, l_ = attention_mask.shape
    out = torch.zeros(b_, 1, l_, l_, dtype=torch.bool)
    for b in range(b_):
        for i in range(l_):
            for j in range(l_):
                out[b, 0, i, j] = bool(attention_mask[b, i] and attention_mask[b, j] and i <= j)
    return out


def ref_rope(x, base=10000.0):
    # x: (L, D)
    length, dim = x.shape
    out = torch.empty_like(x)
    for p in range(length):
        for k in range(dim // 2):
            theta = p * base ** (-2 * k / dim)
            a, b = x[p, 2 * k].item(), x[p, 2 * k + 1].item()
            out[p, 2 * k] = a * math.cos(theta) - b * math.sin(theta)
            out[p, 2 * k + 1] = b * math.cos(theta) + a * math.sin(theta)
    return out


def ref_mlcce(logits, targets, valid):
    b_, c_, l_, _ = logits.shape
    out = torch.zeros(b_, c_)
    for b in range(b_):
        for c in range(c_):
            neg, pos = 1.0, 1.0
            for i in range(l_):
                for j in range(l_):
                    if not valid[b, 0, i, j]:
                        continue
                    s = logits[b, c, i, j].item()
                    if targets[b, c, i, j]:
                        pos += math.exp(-s)
                    else:
                        neg += math.exp(s)
            out[b, c] = math.log(neg) + math.log(pos)
    return out


def sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def ref_gp_kl(s, t, valid):
    b_, c_, l_, _ = s.shape
    out = torch.zeros(b_, c_)
    for b in range(b_):
        for c in range(c_):
            total = 0.0
            for i in range(l_):
                for j in range(l_):
                    if valid[b, 0, i, j]:
                        x, y = s[b, c, i, j].item(), t[b, c, i, j].item()
                        total += (sigmoid(x) - sigmoid(y)) * (x - y)
            out[b, c] = total
    return out


def ref_softmax_kl(s, t, valid):
    b_, c_, l_, _ = s.shape
    out = torch.zeros(b_, c_)
    for b in range(b_):
        for c in range(c_):
            cells = [(i, j) for i in range(l_) for j in range(l_) if valid[b, 0, i, j]]
            if not cells:
                continue
            zs = sum(math.exp(s[b, c, i, j].item()) for i, j in cells)
            zt = sum(math.exp(t[b, c, i, j].item()) for i, j in cells)
            total = 0.0
            for i, j in cells:
                p = math.exp(s[b, c, i, j].item()) / zs
                q = math.exp(t[b, c, i, j].item()) / zt
                total += p * math.log(p / q) + q * math.log(q / p)
            out[b, c] = total
    return out


# --------------------------------------------------------------------------------------- fixtures


def make_case(seed=0, b=2, c=3, length=5, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(b, c, length, length, generator=g) * scale
    t = torch.randn(b, c, length, length, generator=g) * scale
    am = torch.ones(b, length, dtype=torch.bool)
    am[1, length - 2 :] = False  # padding in the second example
    valid = ref_valid(am)
    targets = (torch.rand(b, c, length, length, generator=g) < 0.15) & valid
    return s, t, am, valid, targets


def dense_to_spans(targets):
    return targets.nonzero()  # (N, 4) rows [b, c, i, j]


# ------------------------------------------------------------------------------------------ tests


def test_span_mask_matches_loop():
    am = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]], dtype=torch.bool)
    assert torch.equal(F.span_mask(am), ref_valid(am))


def test_rope_matches_loop():
    x = torch.randn(7, 8)
    assert torch.allclose(F.rope(x), ref_rope(x), atol=1e-12)


def test_rope_score_depends_only_on_offset():
    dim = 16
    q, k = torch.randn(dim), torch.randn(dim)
    positions = torch.arange(300)
    qs = F.rope(q.expand(300, dim), positions)
    ks = F.rope(k.expand(300, dim), positions)
    scores = qs @ ks.T  # (300, 300)
    for offset in (-7, 0, 3, 250):
        diag = torch.diagonal(scores, offset=offset)
        assert torch.allclose(diag, diag[0].expand_as(diag), atol=1e-9)
    # and the offsets really matter
    assert not torch.isclose(scores[0, 1], scores[0, 5])


def test_rope_any_length_and_batched_positions():
    x = torch.randn(2, 3, 1000, 4)
    out = F.rope(x)
    assert out.shape == x.shape
    shifted = F.rope(x, torch.arange(1000) + 5)
    assert not torch.allclose(out, shifted)
    # rotation preserves norms
    assert torch.allclose(out.norm(dim=-1), x.norm(dim=-1))


def test_global_pointer_logits_match_loop():
    b, c, length, d = 2, 3, 6, 4
    q, k = torch.randn(b, c, length, d), torch.randn(b, c, length, d)
    am = torch.ones(b, length, dtype=torch.bool)
    am[0, 4:] = False
    logits = F.global_pointer_logits(q, k, am)
    valid = ref_valid(am)
    low = torch.finfo(logits.dtype).min
    for bb in range(b):
        for cc in range(c):
            qr, kr = ref_rope(q[bb, cc]), ref_rope(k[bb, cc])
            for i in range(length):
                for j in range(length):
                    want = (qr[i] @ kr[j]).item() / math.sqrt(d) if valid[bb, 0, i, j] else low
                    assert logits[bb, cc, i, j].item() == pytest.approx(want, abs=1e-10)


def test_efficient_global_pointer_logits_match_loop():
    b, c, length, d = 2, 3, 5, 4
    q, k = torch.randn(b, length, d), torch.randn(b, length, d)
    sb, eb = torch.randn(b, c, length), torch.randn(b, c, length)
    am = torch.ones(b, length, dtype=torch.bool)
    am[1, 3:] = False
    logits = F.efficient_global_pointer_logits(q, k, sb, eb, am)
    valid = ref_valid(am)
    for bb in range(b):
        qr, kr = ref_rope(q[bb]), ref_rope(k[bb])
        for cc in range(c):
            for i in range(length):
                for j in range(length):
                    if not valid[bb, 0, i, j]:
                        assert logits[bb, cc, i, j] == torch.finfo(logits.dtype).min
                        continue
                    want = (qr[i] @ kr[j]).item() / math.sqrt(d) + sb[bb, cc, i] + eb[bb, cc, j]
                    assert logits[bb, cc, i, j].item() == pytest.approx(want.item(), abs=1e-10)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_losses_and_divergences_match_loops(reduction):
    s, t, am, valid, targets = make_case()
    spans = dense_to_spans(targets)
    expected = {
        "dense": ref_mlcce(s, targets, valid),
        "sparse": ref_mlcce(s, targets, valid),
        "gp_kl": ref_gp_kl(s, t, valid),
        "softmax_kl": ref_softmax_kl(s, t, valid),
    }
    got = {
        "dense": F.multilabel_categorical_crossentropy(s, targets, am, reduction),
        "sparse": F.sparse_multilabel_categorical_crossentropy(s, spans, am, reduction),
        "gp_kl": F.global_pointer_kl(s, t, am, reduction),
        "softmax_kl": F.softmax_kl(s, t, am, reduction),
    }
    oracle = {
        "dense": reference.multilabel_categorical_crossentropy(s, targets, am, reduction),
        "sparse": reference.multilabel_categorical_crossentropy(
            s, reference.dense_targets(spans, s), am, reduction
        ),
        "gp_kl": reference.global_pointer_kl(s, t, am, reduction),
        "softmax_kl": reference.softmax_kl(s, t, am, reduction),
    }
    for name, want in expected.items():
        want = {"none": want, "mean": want.mean(), "sum": want.sum()}[reduction]
        assert torch.allclose(got[name], want, atol=1e-10), name
        assert torch.allclose(oracle[name], want, atol=1e-10), name


def test_mask_forms_agree():
    s, t, am, valid, targets = make_case(seed=3)
    for fn in (F.global_pointer_kl, F.softmax_kl):
        a = fn(s, t, am, "none")
        b = fn(s, t, valid, "none")
        c = fn(s, t, valid.expand_as(s), "none")
        assert torch.allclose(a, b) and torch.allclose(a, c)


def test_non_bool_mask_is_rejected():
    s, t, am, valid, targets = make_case()
    with pytest.raises(TypeError):
        F.global_pointer_kl(s, t, am.long())


def test_dense_and_sparse_agree_in_value_and_gradient():
    s, _, am, _, targets = make_case(seed=5, b=3, c=4, length=7)
    s1 = s.clone().requires_grad_()
    s2 = s.clone().requires_grad_()
    dense = F.multilabel_categorical_crossentropy(s1, targets, am)
    sparse = F.sparse_multilabel_categorical_crossentropy(s2, dense_to_spans(targets), am)
    dense.backward()
    sparse.backward()
    assert torch.allclose(dense, sparse, atol=1e-12)
    assert torch.allclose(s1.grad, s2.grad, atol=1e-12)


def test_sparse_is_exact_when_positives_dominate():
    # A confident model: gold logits +30, others -30. Subtracting positive mass from the total
    # would cancel catastrophically; the loss must stay the exact small value.
    s, _, am, valid, targets = make_case(seed=1)
    s = torch.where(targets, torch.full_like(s, 30.0), torch.full_like(s, -30.0)).float()
    dense = F.multilabel_categorical_crossentropy(s, targets, am, "none")
    sparse = F.sparse_multilabel_categorical_crossentropy(s, dense_to_spans(targets), am, "none")
    ref = ref_mlcce(s.double(), targets, valid).float()
    assert torch.allclose(sparse, ref, rtol=1e-4, atol=1e-12)
    assert torch.allclose(dense, ref, rtol=1e-4, atol=1e-12)
    assert sparse.max() < 1e-9


def test_sparse_ignores_duplicate_spans():
    s, _, am, _, targets = make_case(seed=2)
    spans = dense_to_spans(targets)
    doubled = torch.cat([spans, spans])
    a = F.sparse_multilabel_categorical_crossentropy(s, spans, am)
    b = F.sparse_multilabel_categorical_crossentropy(s, doubled, am)
    assert torch.allclose(a, b)


def test_loss_is_zero_for_a_perfect_large_margin():
    s, _, am, _, targets = make_case(seed=4)
    s = torch.where(targets, 200.0, -200.0)
    assert F.multilabel_categorical_crossentropy(s, targets, am).item() < 1e-80


@pytest.mark.parametrize("which", ["dense", "sparse", "gp_kl", "softmax_kl"])
def test_gradcheck(which):
    s, t, am, _, targets = make_case(seed=7, b=2, c=2, length=4, scale=1.5)
    s = s.clone().requires_grad_()
    t = t.clone().requires_grad_()
    spans = dense_to_spans(targets)
    fns = {
        "dense": lambda a, b: F.multilabel_categorical_crossentropy(a, targets, am, "sum"),
        "sparse": lambda a, b: F.sparse_multilabel_categorical_crossentropy(a, spans, am, "sum"),
        "gp_kl": lambda a, b: F.global_pointer_kl(a, b, am, "sum"),
        "softmax_kl": lambda a, b: F.softmax_kl(a, b, am, "sum"),
    }
    assert torch.autograd.gradcheck(fns[which], (s, t))


@pytest.mark.parametrize("which", ["mlcce", "gp_kl", "softmax_kl"])
def test_reference_gradients_match_the_engine(which):
    s, t, am, valid, targets = make_case(seed=8, b=2, c=2, length=5, scale=2.0)
    fns = {
        "mlcce": (
            lambda a, b: reference.multilabel_categorical_crossentropy(a, targets, am, "sum"),
            lambda a, b: F.multilabel_categorical_crossentropy(a, targets, am, "sum"),
        ),
        "gp_kl": (
            lambda a, b: reference.global_pointer_kl(a, b, am, "sum"),
            lambda a, b: F.global_pointer_kl(a, b, am, "sum"),
        ),
        "softmax_kl": (
            lambda a, b: reference.softmax_kl(a, b, am, "sum"),
            lambda a, b: F.softmax_kl(a, b, am, "sum"),
        ),
    }
    # -inf on invalid cells: the oracle, too, must give them no value and no gradient.
    s = s.masked_fill(~valid, -math.inf).requires_grad_()
    t = t.masked_fill(~valid, -math.inf).requires_grad_()
    ref_fn, fn = fns[which]
    want = torch.autograd.grad(ref_fn(s, t), (s, t), allow_unused=True)
    got = torch.autograd.grad(fn(s, t), (s, t), allow_unused=True)
    for a, b in zip(want, got):
        if a is None or b is None:
            assert which == "mlcce" and a is None and b is None
            continue
        assert torch.isfinite(a).all() and (a.masked_select(~valid.expand_as(a)) == 0).all()
        assert torch.allclose(a, b, atol=1e-10)
    finite = (
        s.detach().masked_fill(~valid, 0).requires_grad_(),
        t.detach().masked_fill(~valid, 0).requires_grad_(),
    )
    assert torch.autograd.gradcheck(ref_fn, finite)


def test_gp_kl_cell_gradient_matches_autograd():
    g = torch.Generator().manual_seed(9)
    s = (torch.randn(50, generator=g) * 6).requires_grad_()
    t = (torch.randn(50, generator=g) * 6).requires_grad_()
    want = torch.autograd.grad(F.gp_kl_cell(s, t).sum(), (s, t))
    got = F.gp_kl_cell_grad(s.detach(), t.detach())
    for a, b in zip(want, got):
        assert torch.allclose(a, b, atol=1e-12)
    only_t = F.gp_kl_cell_grad(s.detach(), t.detach(), (False, True))
    assert only_t[0] is None and torch.allclose(only_t[1], want[1], atol=1e-12)
    assert torch.autograd.gradcheck(F.gp_kl_cell, (s, t))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-30, 30), min_size=2, max_size=2))
def test_gp_kl_cell_is_the_symmetric_binary_kl(pair):
    s, t = torch.tensor(pair[0]), torch.tensor(pair[1])
    cell = F.gp_kl_cell(s, t)
    assert cell >= 0 and cell == F.gp_kl_cell(t, s)
    one = torch.ones(1, 1, 1, 1)
    binary = reference.global_pointer_kl(s * one, t * one, reduction="sum")
    assert torch.allclose(cell, binary, rtol=1e-9, atol=1e-12)


def test_gradcheck_logits():
    q = torch.randn(1, 2, 4, 4, requires_grad=True)
    k = torch.randn(1, 2, 4, 4, requires_grad=True)
    am = torch.tensor([[1, 1, 1, 0]], dtype=torch.bool)
    valid = F.span_mask(am)

    def gp(q, k):
        return F.global_pointer_logits(q, k, am).masked_fill(~valid, 0)

    assert torch.autograd.gradcheck(gp, (q, k))
    q2 = torch.randn(1, 4, 4, requires_grad=True)
    k2 = torch.randn(1, 4, 4, requires_grad=True)
    sb = torch.randn(1, 2, 4, requires_grad=True)
    eb = torch.randn(1, 2, 4, requires_grad=True)

    def egp(q, k, sb, eb):
        return F.efficient_global_pointer_logits(q, k, sb, eb, am).masked_fill(~valid, 0)

    assert torch.autograd.gradcheck(egp, (q2, k2, sb, eb))


# ------------------------------------------------------------------------------------- properties

logit_tensors = st.integers(0, 2**31 - 1).map(lambda seed: make_case(seed=seed, scale=4.0))


@settings(max_examples=40, deadline=None)
@given(logit_tensors)
def test_gp_kl_properties(case):
    s, t, am, valid, _ = case
    d_st = F.global_pointer_kl(s, t, am, "none")
    d_ts = F.global_pointer_kl(t, s, am, "none")
    assert (d_st >= 0).all()
    assert torch.allclose(d_st, d_ts)
    assert torch.equal(F.global_pointer_kl(s, s, am, "none"), torch.zeros_like(d_st))
    # equals the summed symmetric KL of the binary distributions [sigmoid, 1 - sigmoid]
    ps, pt = torch.sigmoid(s), torch.sigmoid(t)
    binary = ps * (ps / pt).log() + (1 - ps) * ((1 - ps) / (1 - pt)).log()
    binary = binary + pt * (pt / ps).log() + (1 - pt) * ((1 - pt) / (1 - ps)).log()
    binary = binary.masked_fill(~valid, 0).sum((-2, -1))
    assert torch.allclose(d_st, binary, atol=1e-9)


@settings(max_examples=40, deadline=None)
@given(logit_tensors)
def test_softmax_kl_properties(case):
    s, t, am, valid, _ = case
    d = F.softmax_kl(s, t, am, "none")
    assert (d >= 0).all()
    assert torch.allclose(d, F.softmax_kl(t, s, am, "none"))
    assert torch.allclose(F.softmax_kl(s, s, am, "none"), torch.zeros_like(d))
    # equals <softmax(s) - softmax(t), s - t> over valid cells
    low = float("-inf")
    p = torch.softmax(s.masked_fill(~valid, low).flatten(-2), -1)
    q = torch.softmax(t.masked_fill(~valid, low).flatten(-2), -1)
    inner = ((p - q) * (s - t).masked_fill(~valid, 0).flatten(-2)).sum(-1)
    assert torch.allclose(d, inner, atol=1e-9)
    # invariant to a per-(example, type) shift, unlike gp_kl
    assert torch.allclose(F.softmax_kl(s + 3.0, t, am, "none"), d, atol=1e-9)
    gp = F.global_pointer_kl(s, t, am, "none")
    assert not torch.allclose(F.global_pointer_kl(s + 3.0, t, am, "none"), gp)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_masked_inf_cells_are_finite_with_zero_gradient(dtype):
    s, t, am, valid, targets = make_case(seed=11)
    s = s.masked_fill(~valid, float("-inf")).to(dtype).requires_grad_()
    t = t.masked_fill(~valid, float("-inf")).to(dtype).requires_grad_()
    spans = dense_to_spans(targets)
    terms = [
        F.multilabel_categorical_crossentropy(s, targets, am),
        F.sparse_multilabel_categorical_crossentropy(s, spans, am),
        F.global_pointer_kl(s, t, am),
        F.softmax_kl(s, t, am),
    ]
    for value in terms:
        assert torch.isfinite(value)
    sum(terms).backward()
    for grad in (s.grad, t.grad):
        assert torch.isfinite(grad).all()
        assert (grad.masked_select(~valid.expand_as(grad)) == 0).all()
        assert grad.masked_select(valid.expand_as(grad)).abs().sum() > 0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_close_to_float64(dtype):
    s, t, am, valid, targets = make_case(seed=13)
    spans = dense_to_spans(targets)
    for fn, args in [
        (F.multilabel_categorical_crossentropy, (targets, am)),
        (F.sparse_multilabel_categorical_crossentropy, (spans, am)),
    ]:
        want = fn(s, *args)
        got = fn(s.to(dtype), *args)
        assert got.dtype == torch.float32 and torch.isfinite(got)
        assert got.item() == pytest.approx(want.item(), rel=2e-2)
    for fn in (F.global_pointer_kl, F.softmax_kl):
        want = fn(s, t, am)
        got = fn(s.to(dtype), t.to(dtype), am)
        assert torch.isfinite(got) and got.item() == pytest.approx(want.item(), rel=5e-2)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_head_logits_finite_fill_in_half_precision(dtype):
    q = torch.randn(2, 3, 6, 8).to(dtype)
    k = torch.randn(2, 3, 6, 8).to(dtype)
    am = torch.tensor([[1] * 6, [1] * 3 + [0] * 3], dtype=torch.bool)
    logits = F.global_pointer_logits(q, k, am)
    assert logits.dtype == dtype and torch.isfinite(logits).all()
    # With the finite fill, even mask=None divergences are exactly 0 on invalid cells.
    other = F.global_pointer_logits(k, q, am)
    with_mask = F.global_pointer_kl(logits, other, am, "none")
    without = F.global_pointer_kl(logits, other, None, "none")
    assert torch.allclose(with_mask, without, rtol=1e-3, atol=1e-3)
