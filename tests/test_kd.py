"""The KD terms of distillation against their float64 references, gradcheck and properties."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gpner import functional as F
from gpner.functional import reference

# (engine term, its reference): the divergences R-Drop uses and the squared error
TERMS = {
    "gp_kl": (F.global_pointer_kl, reference.global_pointer_kl),
    "softmax_kl": (F.softmax_kl, reference.softmax_kl),
    "mse": (F.squared_error, reference.squared_error),
}


pytestmark = pytest.mark.usefixtures("float64_default")  # tests/conftest.py


def _inputs(seed, batch=2, types=3, length=5, floor=None):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(batch, types, length, length, generator=g) * 3
    t = torch.randn(batch, types, length, length, generator=g) * 3
    if floor is not None:  # keep the student off the floor's kink (gradcheck differentiates)
        near = (s - floor).abs() < 0.05
        s = torch.where(near, s + 0.1, s)
    am = torch.ones(batch, length, dtype=torch.bool)
    am[-1, length - 2 :] = False
    cells = F.span_mask(am) & (torch.rand(batch, 1, length, length, generator=g) > 0.3)
    return s, t, am, cells


@pytest.mark.parametrize("name", list(TERMS))
@pytest.mark.parametrize("temperature", [1.0, 2.5])
@pytest.mark.parametrize("floor", [None, -1.0])
@pytest.mark.parametrize("mask_kind", ["attention", "cells"])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_matches_the_float64_reference(name, temperature, floor, mask_kind, reduction):
    term, ref_term = TERMS[name]
    s, t, am, cells = _inputs(0, floor=floor)
    mask = am if mask_kind == "attention" else cells
    s1 = s.clone().requires_grad_(True)
    s2 = s.clone().requires_grad_(True)
    got = F.distillation_term(term, s1, t, temperature, mask, reduction, floor=floor)
    want = reference.distillation_term(ref_term, s2, t, temperature, mask, reduction, floor=floor)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    weights = torch.rand(got.shape, generator=torch.Generator().manual_seed(1))
    (g1,) = torch.autograd.grad((got * weights).sum(), s1)
    (g2,) = torch.autograd.grad((want * weights).sum(), s2)
    torch.testing.assert_close(g1, g2, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("name", list(TERMS))
def test_band_layout_matches_the_full_layout(name):
    term, _ = TERMS[name]
    s, t, am, _ = _inputs(2, length=6)
    width = 3
    full_mask = F.span_mask(am, max_width=width)
    full = F.distillation_term(term, s, t, 2.0, full_mask, "none", floor=-2.0)
    band = F.distillation_term(
        term,
        F.dense_to_band(s, width),
        F.dense_to_band(t, width),
        2.0,
        am,
        "none",
        max_width=width,
        floor=-2.0,
    )
    torch.testing.assert_close(band, full)


def test_squared_error_matches_its_plain_loop():
    s, t, am, cells = _inputs(3)
    for mask in (None, am, cells):
        torch.testing.assert_close(
            F.squared_error(s, t, mask, "none"), reference.squared_error(s, t, mask, "none")
        )


@pytest.mark.parametrize("name", list(TERMS))
def test_gradcheck(name):
    term, _ = TERMS[name]
    s, t, _, cells = _inputs(4, batch=1, types=2, length=4, floor=-1.0)
    s.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda x: F.distillation_term(term, x, t, 1.7, cells, "sum", floor=-1.0), (s,)
    )


# ------------------------------------------------------------------------------ properties

_finite = st.floats(-8, 8, allow_nan=False)


@settings(max_examples=40, deadline=None)
@given(
    st.sampled_from(list(TERMS)),
    st.lists(_finite, min_size=18, max_size=18),
    st.lists(_finite, min_size=18, max_size=18),
    st.floats(0.25, 8),
)
def test_non_negative_and_zero_at_the_teacher(name, s, t, temperature):
    term, _ = TERMS[name]
    s = torch.tensor(s).reshape(1, 2, 3, 3)
    t = torch.tensor(t).reshape(1, 2, 3, 3)
    assert F.distillation_term(term, s, t, temperature, reduction="sum") >= -1e-12
    same = F.distillation_term(term, t.clone(), t, temperature, reduction="sum")
    assert abs(float(same)) < 1e-12


def test_high_temperature_turns_d_into_a_quarter_of_the_squared_error():
    s, t, am, _ = _inputs(5)
    limit = F.squared_error(s, t, am, "none") / 4
    hot = F.distillation_term(F.global_pointer_kl, s, t, 1e3, am, "none")
    torch.testing.assert_close(hot, limit, rtol=1e-4, atol=1e-8)


def test_the_squared_error_ignores_the_temperature():
    s, t, am, _ = _inputs(6)
    plain = F.distillation_term(F.squared_error, s, t, 1.0, am, "none")
    for temperature in (0.5, 3.0):
        warm = F.distillation_term(F.squared_error, s, t, temperature, am, "none")
        torch.testing.assert_close(warm, plain)


@pytest.mark.parametrize("name", list(TERMS))
def test_a_student_below_the_floor_agrees_with_a_teacher_at_it(name):
    term, _ = TERMS[name]
    floor = -4.0
    t = torch.full((1, 1, 3, 3), -9.0)  # every teacher cell "<= floor"
    s = torch.full((1, 1, 3, 3), -6.0, requires_grad=True)  # the student below it too
    value = F.distillation_term(term, s, t, 2.0, reduction="sum", floor=floor)
    (grad,) = torch.autograd.grad(value, s)
    assert value.item() == 0.0 and not grad.any()
    above = torch.full((1, 1, 3, 3), -1.0, requires_grad=True)  # above it: pulled down
    value = F.distillation_term(term, above, t, 2.0, F.span_mask(torch.ones(1, 3).bool()),
                                reduction="sum", floor=floor)  # fmt: skip
    (grad,) = torch.autograd.grad(value, above)
    if name != "softmax_kl":  # the softmax sees equal logits everywhere: no difference
        assert value.item() > 0 and (grad[0, 0].triu() >= 0).all() and grad.sum() > 0


@pytest.mark.parametrize("name", list(TERMS))
def test_masked_cells_add_nothing_even_when_infinite_or_nan(name):
    term, _ = TERMS[name]
    s, t, _, cells = _inputs(7)
    dirty_s = torch.where(cells, s, -torch.inf).requires_grad_(True)
    dirty_t = torch.where(cells, t, torch.nan)
    value = F.distillation_term(term, dirty_s, dirty_t, 1.5, cells, "sum", floor=-2.0)
    clean = F.distillation_term(term, s, t, 1.5, cells, "sum", floor=-2.0)
    (grad,) = torch.autograd.grad(value, dirty_s)
    torch.testing.assert_close(value, clean)
    assert torch.isfinite(grad).all() and not grad[~cells.expand_as(grad)].any()


def test_the_teacher_gets_no_gradient_and_may_be_half_precision():
    s, t, am, _ = _inputs(8)
    t = t.requires_grad_(True)
    value = F.distillation_term(F.global_pointer_kl, s.requires_grad_(True), t, 1.0, am)
    value.backward()
    assert t.grad is None and s.grad is not None
    half = F.distillation_term(F.global_pointer_kl, s.detach(), t.detach().half(), 1.0, am)
    assert half.dtype == torch.float64
