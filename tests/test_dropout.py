"""Dropout from a uniform draw keeps torch's dropout distribution."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gpner.functional.dropout import Dropout, dropout


def _reference(x: torch.Tensor, p: float, seed: int) -> torch.Tensor:
    """Element by element, in float64, from the same uniform draw."""
    torch.manual_seed(seed)
    u = torch.rand_like(x).flatten().tolist()
    out = [xi / (1 - p) if ui >= p else 0.0 for xi, ui in zip(x.flatten().tolist(), u)]
    return torch.tensor(out, dtype=torch.float64).view_as(x)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_equals_the_elementwise_reference(p):
    x = torch.randn(4, 5, 6, dtype=torch.float64)
    torch.manual_seed(7)
    out = dropout(x, p)
    torch.testing.assert_close(out, _reference(x, p, 7), rtol=1e-15, atol=0)


def test_gradcheck_with_a_fixed_mask():
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)

    def fixed(x):
        torch.manual_seed(3)
        return dropout(x, 0.3)

    assert torch.autograd.gradcheck(fixed, (x,))


@settings(max_examples=30, deadline=None)
@given(p=st.floats(0.05, 0.95), seed=st.integers(0, 2**31 - 1))
def test_keep_rate_and_scale(p, seed):
    torch.manual_seed(seed)
    x = torch.ones(200_000)
    out = dropout(x, p)
    kept = out != 0
    assert torch.allclose(out[kept], torch.full_like(out[kept], 1 / (1 - p)))
    n, rate = x.numel(), kept.float().mean().item()
    sigma = (p * (1 - p) / n) ** 0.5
    assert abs(rate - (1 - p)) < 6 * sigma  # binomial: P(fail) ~ 1e-9
    x.requires_grad_()
    torch.manual_seed(seed)
    (g,) = torch.autograd.grad(dropout(x, p).sum(), x)
    assert torch.equal(g, out)  # d/dx of x * mask / (1 - p) with x = 1


def test_identity_when_not_training_or_p0_and_module_behaviour():
    x = torch.randn(5, 3)
    assert dropout(x, 0.5, training=False) is x and dropout(x, 0.0) is x
    assert torch.equal(dropout(x, 1.0), torch.zeros_like(x))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        dropout(x, 1.5)
    module = Dropout(0.25)
    assert repr(module) == repr(torch.nn.Dropout(0.25)) and not module.state_dict()
    assert torch.equal(module.eval()(x), x)
    torch.manual_seed(1)
    a = module.train()(x)
    torch.manual_seed(1)
    assert torch.equal(a, dropout(x, 0.25))
