"""The blocked and fused losses against simple float64 references: values, gradients, gradcheck.

The references are the straightforward dense formulas of ``gpner.functional.reference`` (masked
copies, ``logsumexp``, autograd; themselves checked against plain loops in test_functional.py):
slow and memory-hungry, but obviously right. Block sizes are shrunk so that every
call runs through many row blocks and batch groups.
"""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

from gpner import functional as F
from gpner.backends import compiled_kernels
from gpner.functional import reference
from gpner.functional._blocked import BlockLayout, engine
from gpner.functional._blocked.kernels import kernel_mode

DT = torch.float64


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    monkeypatch.setattr(BlockLayout, "CELLS", 40)
    monkeypatch.setattr(BlockLayout, "ROWS", 3)


# ----------------------------------------------------------------------------- simple references


def ref_rope(x, scale=1.0):
    length, dim = x.shape[-2], x.shape[-1]
    inv = 10000.0 ** (-torch.arange(0, dim, 2, dtype=DT) / dim)
    ang = torch.arange(length, dtype=DT)[:, None] * inv
    cos, sin = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
    e, o = x[..., 0::2], x[..., 1::2]
    return torch.stack((e * cos - o * sin, o * cos + e * sin), -1).flatten(-2) * scale


def ref_logits(q, k, sb=None, eb=None):
    """(B, C, L, L) unmasked scores; q, k (B, C, L, D) or shared (B, L, D) with biases."""
    d = q.shape[-1]
    q, k = ref_rope(q, d**-0.5), ref_rope(k)
    s = q @ k.transpose(-1, -2)
    if sb is not None:
        s = s[:, None] + sb[..., :, None] + eb[..., None, :]
    return s


def ref_valid(am, width=None):
    b, length = am.shape
    i = torch.arange(length)
    ok = (i[:, None] <= i[None, :]) & am[:, None, :, None] & am[:, None, None, :]
    if width is not None:
        ok = ok & (i[None, :] - i[:, None] < width)
    return ok  # (B, 1, L, L)


def ref_ce(s, spans, valid):
    """The oracle: dense multi-label CE per (b, c) from :mod:`gpner.functional.reference`."""
    return reference.multilabel_categorical_crossentropy(
        s, reference.dense_targets(spans, s), valid, "none"
    )


def ref_kl(s, t, valid):
    return reference.global_pointer_kl(s, t, valid, "none")


def reduce(x, reduction):
    return {"none": x, "mean": x.mean(), "sum": x.sum()}[reduction]


# ----------------------------------------------------------------------------------------- cases


def make(head, seed=0, b=3, c=2, length=11, d=4, widths=8):
    g = torch.Generator().manual_seed(seed)
    am = torch.ones(b, length, dtype=torch.bool)
    am[1, length - 3 :] = False
    if b > 2:
        am[2, length - 5 :] = False
    if head == "gp":
        params = [torch.randn(b, c, length, d, generator=g, dtype=DT) for _ in range(2)]
    else:
        params = [torch.randn(b, length, d, generator=g, dtype=DT) for _ in range(2)]
        params += [torch.randn(b, c, length, generator=g, dtype=DT) for _ in range(2)]
    params = [p.requires_grad_() for p in params]
    n = 12
    bb = torch.randint(0, b, (n,), generator=g)
    cc = torch.randint(0, c, (n,), generator=g)
    ii = torch.randint(0, length, (n,), generator=g)
    jj = (ii + torch.randint(0, widths, (n,), generator=g)).clamp(max=length - 1)
    spans = torch.stack([bb, cc, ii, jj], -1)
    spans = torch.cat(
        [spans, spans[:2], torch.tensor([[1, 0, length - 1, length - 1]])]
    )  # dup, pad
    return params, am, spans


def factors(head, params, am, width=None):
    if head == "gp":
        return F.global_pointer_factors(params[0], params[1], am, max_width=width)
    return F.efficient_global_pointer_factors(*params, am, max_width=width)


def perturbed(params, seed):
    g = torch.Generator().manual_seed(seed)
    return [
        (p.detach() + 0.5 * torch.randn(p.shape, generator=g, dtype=DT)).requires_grad_()
        for p in params
    ]


def grads(value, params):
    return torch.autograd.grad(value, params, allow_unused=True)


def assert_close(a, b, tol=1e-10):
    assert torch.allclose(a, b, atol=tol, rtol=tol), (a - b).abs().max()


# ----------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("head", ["gp", "egp"])
@pytest.mark.parametrize("width", [None, 3, 40])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_fused_rdrop_matches_reference(head, width, reduction):
    params, am, spans = make(head)
    other = perturbed(params, 1)
    valid = ref_valid(am, width)
    s, t = ref_logits(*params), ref_logits(*other)
    want = [
        reduce(ref_ce(s, spans, valid), reduction),
        reduce(ref_ce(t, spans, valid), reduction),
        reduce(ref_kl(s, t, valid), reduction),
    ]
    f, g = factors(head, params, am, width), factors(head, other, am, width)
    got = F.fused_rdrop_losses(f, g, spans, reduction)
    singles = [
        F.fused_crossentropy(f, spans, reduction),
        F.fused_crossentropy(g, spans, reduction),
        F.fused_global_pointer_kl(f, g, reduction),
    ]
    for a, b, c in zip(got, singles, want):
        assert_close(a, c)
        assert_close(b, c)
    # gradients under non-uniform output weights (reduction "none") and uniform ones
    gen = torch.Generator().manual_seed(2)
    weights = [torch.rand(want[0].shape, generator=gen, dtype=DT) + 0.1 for _ in range(3)]
    weights[2] = weights[2] - 0.5  # also negative weights
    total = sum((w * x).sum() for w, x in zip(weights, got))
    ref_total = sum((w * x).sum() for w, x in zip(weights, want))
    for a, b in zip(grads(total, params + other), grads(ref_total, params + other)):
        assert_close(a, b)


@pytest.mark.parametrize("head", ["gp", "egp"])
@pytest.mark.parametrize("width", [None, 3])
def test_rdrop_gradients_with_uniform_weights(head, width):
    """The R-Drop training loss ``(ce1 + ce2) / 2 + alpha * kl`` (uniform positive weights: the
    backward folds the divergence into the cross-entropy's pass) against the reference."""
    params, am, spans = make(head, seed=11)
    other = perturbed(params, 12)
    valid = ref_valid(am, width)
    s, t = ref_logits(*params), ref_logits(*other)
    want = (ref_ce(s, spans, valid).mean() + ref_ce(t, spans, valid).mean()) / 2
    want = want + 0.7 * ref_kl(s, t, valid).mean()
    f, g = factors(head, params, am, width), factors(head, other, am, width)
    ce1, ce2, kl = F.fused_rdrop_losses(f, g, spans)
    got = (ce1 + ce2) / 2 + 0.7 * kl
    assert_close(got, want)
    for a, b in zip(grads(got, params + other), grads(want, params + other)):
        assert_close(a, b)


@pytest.mark.parametrize("head", ["gp", "egp"])
@pytest.mark.parametrize("width", [None, 3])
@pytest.mark.parametrize("uniform", [True, False])
def test_kept_and_recomputed_backward_agree(monkeypatch, head, width, uniform):
    """Small problems keep the cells' gradient parts from forward to backward; above
    ``engine.KEEP_CELLS`` backward recomputes every block. Both give the same values and
    gradients, for every loss on factors and on logits, uniform or per-(b, c) weights."""
    params, am, spans = make(head, seed=21)
    other = perturbed(params, 22)
    gen = torch.Generator().manual_seed(23)
    weights = [torch.rand(3, 2, generator=gen, dtype=DT) + 0.1 for _ in range(7)]
    if uniform:
        weights = [torch.full_like(w, 0.3) for w in weights]
    kept = []
    forward = engine._forward_block_keeping

    def spy(*args, **kwargs):
        kept.append(True)
        return forward(*args, **kwargs)

    monkeypatch.setattr(engine, "_forward_block_keeping", spy)

    def run():
        f, g = factors(head, params, am, width), factors(head, other, am, width)
        s, t = F.factors_to_logits(f), F.factors_to_logits(g)
        outs = [
            *F.fused_rdrop_losses(f, g, spans, "none"),
            F.fused_crossentropy(g, spans, "none"),
            F.fused_global_pointer_kl(f.detach(), g, "none"),
            F.sparse_multilabel_categorical_crossentropy(s, spans, am, "none", max_width=width),
            F.global_pointer_kl(s, t, am, "none", max_width=width),
        ]
        total = sum((w * x).sum() for w, x in zip(weights, outs))
        return [x.detach() for x in outs], grads(total, params + other)

    values, gradients = run()
    assert kept  # these small problems kept their gradient parts
    kept.clear()
    monkeypatch.setattr(engine, "KEEP_CELLS", 0)
    values_recomputed, gradients_recomputed = run()
    assert not kept
    for a, b in zip(values + list(gradients), values_recomputed + list(gradients_recomputed)):
        assert_close(a, b)


@pytest.mark.parametrize("head", ["gp", "egp"])
def test_vat_side_gets_no_gradient_work(head):
    params, am, _ = make(head, seed=3)
    other = perturbed(params, 4)
    f = factors(head, params, am)
    g = factors(head, other, am)
    value = F.fused_global_pointer_kl(f.detach(), g)
    gs = grads(value, params + other)
    assert all(x is None for x in gs[: len(params)])
    want = ref_kl(ref_logits(*params).detach(), ref_logits(*other), ref_valid(am)).mean()
    assert_close(value, want)
    for a, b in zip(gs[len(params) :], grads(want, other)):
        assert_close(a, b)


@pytest.mark.parametrize("head", ["gp", "egp"])
@pytest.mark.parametrize("width", [None, 4])
def test_gradcheck_fused(head, width):
    params, am, spans = make(head, seed=5, b=2, length=7, d=2)
    other = perturbed(params, 6)
    n = len(params)
    gen = torch.Generator().manual_seed(7)
    w = [torch.rand(2, 2, generator=gen, dtype=DT) + 0.1 for _ in range(3)]

    def fn(*ps):
        f = factors(head, list(ps[:n]), am, width)
        g = factors(head, list(ps[n:]), am, width)
        out = F.fused_rdrop_losses(f, g, spans, "none")
        return sum((a * b).sum() for a, b in zip(w, out))

    assert torch.autograd.gradcheck(fn, tuple(params + other))


@pytest.mark.parametrize("width", [None, 3])
def test_gradcheck_band_and_full_logits(width):
    params, am, _ = make("gp", seed=8, b=2, length=6, d=2)

    def fn(q, k):
        logits = F.global_pointer_logits(q, k, am, max_width=width)
        return logits.clamp_min(-1e3)  # invalid cells hold the finite fill: constant

    assert torch.autograd.gradcheck(fn, tuple(params))


@pytest.mark.parametrize("mask_kind", ["none", "attention", "span", "full"])
@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_dropin_losses_match_reference(mask_kind, reduction):
    params, am, spans = make("gp", seed=9)
    s = ref_logits(*params).detach().requires_grad_()
    t = ref_logits(*perturbed(params, 10)).detach().requires_grad_()
    valid = ref_valid(am)
    mask = {
        "none": None,
        "attention": am,
        "span": valid,
        "full": valid.expand_as(s).clone(),
    }[mask_kind]
    ref_mask = torch.ones_like(valid) if mask is None else valid
    targets = torch.zeros(s.shape, dtype=torch.bool)
    targets[spans[:, 0], spans[:, 1], spans[:, 2], spans[:, 3]] = True
    got = [
        F.sparse_multilabel_categorical_crossentropy(s, spans, mask, reduction),
        F.multilabel_categorical_crossentropy(s, targets, mask, reduction),
        F.global_pointer_kl(s, t, mask, reduction),
    ]
    want = [
        reduce(ref_ce(s, spans, ref_mask), reduction),
        reduce(ref_ce(s, spans, ref_mask), reduction),
        reduce(ref_kl(s, t, ref_mask), reduction),
    ]
    gen = torch.Generator().manual_seed(11)
    for a, b in zip(got, want):
        assert_close(a, b)
        w = torch.rand(a.shape, generator=gen, dtype=DT)
        for x, y in zip(grads((w * a).sum(), [s, t]), grads((w * b).sum(), [s, t])):
            if y is None:
                assert x is None or (x == 0).all()
            else:
                assert_close(x, y)


def test_padding_tokens_get_exactly_zero_gradient():
    params, am, spans = make("gp", seed=12)
    other = perturbed(params, 13)
    f, g = factors("gp", params, am), factors("gp", other, am)
    ce1, ce2, kl = F.fused_rdrop_losses(f, g, spans)
    for grad in grads(ce1 + ce2 + kl, params + other):
        padded = grad.permute(0, 2, 1, 3)[~am]  # (padded tokens, C, D)
        assert padded.numel() and (padded == 0).all()
        assert grad.abs().sum() > 0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("head", ["gp", "egp"])
def test_fused_half_precision_accumulates_in_float32(dtype, head):
    params, am, spans = make(head, seed=14, d=8)
    other = perturbed(params, 15)
    want = F.fused_rdrop_losses(factors(head, params, am), factors(head, other, am), spans)
    half = [p.detach().to(dtype).requires_grad_() for p in params]
    half_other = [p.detach().to(dtype).requires_grad_() for p in other]
    got = F.fused_rdrop_losses(factors(head, half, am), factors(head, half_other, am), spans)
    for a, b in zip(got, want):
        assert a.dtype == torch.float32 and torch.isfinite(a)
        assert a.item() == pytest.approx(b.item(), rel=5e-2, abs=1e-2)
    sum(got).backward()
    for p in half + half_other:
        assert p.grad.dtype == dtype and torch.isfinite(p.grad).all()


def test_confident_model_keeps_tiny_losses_exact():
    # Gold logits +30, every other cell -30: the negative term is ~N e^-30, far below float32's
    # epsilon relative to 1; log1p-style accumulation must keep it (no cancellation, no clamp).
    length = 6
    am = torch.ones(1, length, dtype=torch.bool)
    spans = torch.tensor([[0, 0, 1, 3]])
    s = torch.full((1, 1, length, length), -30.0)
    s[0, 0, 1, 3] = 30.0
    got = F.sparse_multilabel_categorical_crossentropy(s, spans, am, "sum")
    cells = length * (length + 1) // 2 - 1
    want = math.log1p(cells * math.exp(-30.0)) + math.log1p(math.exp(-30.0))
    assert got.item() == pytest.approx(want, rel=1e-5)


class _LargestTensor(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for x in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(x, torch.Tensor):
                self.largest = max(self.largest, x.numel())
        return out


@pytest.mark.parametrize("head", ["gp", "egp"])
@pytest.mark.parametrize("width", [None, 8])
def test_fused_step_never_builds_a_dense_cell_tensor(monkeypatch, head, width):
    # Default block size, a batch where one (B, C, L, L) tensor is 8x a block.
    monkeypatch.setattr(BlockLayout, "CELLS", 1 << 14)
    monkeypatch.setattr(BlockLayout, "ROWS", 64)
    b, c, length, d = 2, 4, 128, 8
    torch.manual_seed(0)
    if head == "gp":
        params = [torch.randn(b, c, length, d, requires_grad=True) for _ in range(2)]
    else:
        params = [torch.randn(b, length, d, requires_grad=True) for _ in range(2)]
        params += [torch.randn(b, c, length, requires_grad=True) for _ in range(2)]
    am = torch.ones(b, length, dtype=torch.bool)
    am[1, 100:] = False
    spans = torch.tensor([[0, 1, 3, 5], [1, 2, 10, 12]])
    with _LargestTensor() as probe:
        f = factors(head, params, am, width)
        g = factors(head, [p * 1.01 for p in params], am, width)
        ce1, ce2, kl = F.fused_rdrop_losses(f, g, spans)
        (ce1 + ce2 + kl).backward()
    assert probe.largest <= b * c * length * length // 4


@pytest.mark.parametrize("use_rope", [True, False])
@pytest.mark.parametrize("efficient", [False, True])
def test_projected_factors_match_view_factors(use_rope, efficient):
    g = torch.Generator().manual_seed(16)
    b, c, length, d = 2, 3, 5, 4
    width = 2 * d if efficient else c * 2 * d
    proj = torch.randn(b, length, width, generator=g, dtype=DT, requires_grad=True)
    sb = torch.randn(b, c, length, generator=g, dtype=DT) if efficient else None
    eb = torch.randn(b, c, length, generator=g, dtype=DT) if efficient else None
    am = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)

    def fused(p):
        f = F.projected_factors(p, c, am, start_bias=sb, end_bias=eb, use_rope=use_rope)
        return f.q, f.k

    def plain(p):
        if efficient:
            f = F.efficient_global_pointer_factors(
                p[..., 0::2], p[..., 1::2], sb, eb, am, use_rope=use_rope
            )
        else:
            qk = p.view(b, length, c, 2, d).permute(3, 0, 2, 1, 4)
            f = F.global_pointer_factors(qk[0], qk[1], am, use_rope=use_rope)
        return f.q, f.k

    w = [torch.randn(x.shape, generator=g, dtype=DT) for x in plain(proj)]
    for a, b_ in zip(fused(proj), plain(proj)):
        assert_close(a, b_)
    ga = grads(sum((x * y).sum() for x, y in zip(fused(proj), w)), [proj])[0]
    gb = grads(sum((x * y).sum() for x, y in zip(plain(proj), w)), [proj])[0]
    assert_close(ga, gb)
    assert torch.autograd.gradcheck(lambda p: fused(p)[0], (proj,))  # only q: k's grad is zero


def test_doubled_batch_halves_equal_separate_passes():
    params, am, spans = make("egp", seed=17)
    other = perturbed(params, 18)
    both = [torch.cat([a, b]) for a, b in zip(params, other)]
    f = factors("egp", both, torch.cat([am, am]))
    b = am.shape[0]
    got = F.fused_rdrop_losses(f.batch_slice(0, b), f.batch_slice(b, 2 * b), spans)
    want = F.fused_rdrop_losses(factors("egp", params, am), factors("egp", other, am), spans)
    for x, y in zip(got, want):
        assert_close(x, y)


@pytest.fixture
def python_kernels():
    """The fused-kernel code path, with the kernels run uncompiled (same arithmetic)."""
    with kernel_mode("python"):
        yield


def _all_terms(head, width, dense):
    params, am, spans = make(head, seed=19)
    other = perturbed(params, 20)
    if dense:
        s = ref_logits(*params).detach().requires_grad_()
        t = ref_logits(*other).detach().requires_grad_()
        leaves = [s, t]
        valid = ref_valid(am, width)
        terms = [
            F.sparse_multilabel_categorical_crossentropy(s, spans, valid, "none"),
            F.global_pointer_kl(s, t, valid, "none"),
            F.global_pointer_kl(s.detach(), t, am, "sum"),
        ]
    else:
        leaves = params + other
        f, g = factors(head, params, am, width), factors(head, other, am, width)
        terms = [
            *F.fused_rdrop_losses(f, g, spans, "none"),
            F.fused_crossentropy(g, spans, "sum"),
            F.fused_global_pointer_kl(f.detach(), g),
        ]
    gen = torch.Generator().manual_seed(21)
    total = sum((torch.rand(x.shape, generator=gen, dtype=DT) * x).sum() for x in terms)
    return [x.detach() for x in terms], grads(total, leaves)


@pytest.mark.parametrize("case", [("gp", None, False), ("egp", 3, False), ("gp", None, True)])
def test_kernel_path_matches_eager_path(case):
    eager = _all_terms(*case)
    with kernel_mode("python"):
        kernel = _all_terms(*case)
    for a, b in zip(eager[0] + list(eager[1]), kernel[0] + list(kernel[1])):
        if a is None:
            assert b is None
        else:
            assert_close(a, b)


def test_kernel_path_gradcheck_and_masked_inf(python_kernels):
    test_gradcheck_fused("egp", 4)
    s = torch.randn(2, 2, 5, 5, dtype=torch.float32)
    am = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    valid = ref_valid(am)
    s = s.masked_fill(~valid, float("-inf")).requires_grad_()
    t = (s.detach() * 1.1).requires_grad_()
    spans = torch.tensor([[0, 1, 0, 2], [1, 0, 3, 4]])
    value = F.sparse_multilabel_categorical_crossentropy(s, spans, am) + F.global_pointer_kl(
        s, t, am
    )
    assert torch.isfinite(value)
    value.backward()
    for grad in (s.grad, t.grad):
        assert torch.isfinite(grad).all() and (grad.masked_select(~valid) == 0).all()


@pytest.mark.skipif(
    "GPNER_TEST_COMPILE" not in __import__("os").environ,
    reason="compiles for ~30 s; set GPNER_TEST_COMPILE=1 to run",
)
def test_compiled_kernels_match_eager():
    eager = _all_terms("egp", None, False)
    with compiled_kernels():
        compiled = _all_terms("egp", None, False)
    for a, b in zip(eager[0] + list(eager[1]), compiled[0] + list(compiled[1])):
        assert_close(a, b, tol=1e-8)


@settings(max_examples=8, deadline=None)
@given(st.integers(0, 2**31 - 1), st.sampled_from(["gp", "egp"]), st.sampled_from([None, 1, 3]))
def test_fused_properties(seed, head, width):
    params, am, spans = make(head, seed=seed % 1000, b=2, length=6, d=2)
    other = perturbed(params, seed % 997 + 1)
    f, g = factors(head, params, am, width), factors(head, other, am, width)
    d_fg = F.fused_global_pointer_kl(f, g, "none")
    d_gf = F.fused_global_pointer_kl(g, f, "none")
    assert (d_fg >= 0).all() and torch.allclose(d_fg, d_gf, atol=1e-12)
    assert torch.equal(F.fused_global_pointer_kl(f, f, "none"), torch.zeros_like(d_fg))
    ce = F.fused_crossentropy(f, spans, "none")
    assert (ce >= 0).all()
    # a narrower band never has more negatives: its loss without gold spans is no larger
    if width is not None:
        none = spans[:0]
        wide = F.fused_crossentropy(factors(head, params, am, width + 1), none, "none")
        assert (F.fused_crossentropy(f, none, "none") <= wide + 1e-12).all()


@pytest.mark.parametrize("width", [None, 3])
@pytest.mark.parametrize("padded", [True, False])
def test_block_validity_is_span_mask_and_band_mask(small_blocks, width, padded):
    """The engine's blocks and its gold-cell check see exactly the valid cells of the layouts."""
    lengths = [7, 4, 1] if padded else [7, 7, 7]
    am = torch.tensor([[k < n for k in range(7)] for n in lengths])
    shape = (3, 2, 7, 7 if width is None else width)
    kind = "tri" if width is None else "band"
    layout = BlockLayout(kind, shape, am.device, attention_mask=am, width=width)
    assert len(layout.blocks) > 1
    valid = F.span_mask(am) if width is None else F.band_mask(am, width)  # (B, 1, L, L or W)
    seen = torch.zeros(shape, dtype=torch.int)
    for b0, b1, r0, r1, c0 in layout.blocks:
        invalid = layout.invalid_block(b0, b1, r0, r1, c0)
        block = valid[b0:b1, :, r0:r1, c0:].expand(b1 - b0, shape[1], -1, -1)
        assert torch.equal(~invalid.expand_as(block), block)
        seen[b0:b1, :, r0:r1, c0:] += 1
    if width is None:  # blocks skip only cells left of the diagonal, all invalid
        assert not bool(valid.expand(shape)[seen == 0].any())
    cells = torch.cartesian_prod(*(torch.arange(n) for n in shape))
    at = layout.valid_at(*cells.unbind(-1))
    assert torch.equal(at, valid.expand(shape)[tuple(cells.unbind(-1))])
    assert torch.equal(F.invalid_cells(am, (0, 7), (0, 7)), ~F.span_mask(am))
