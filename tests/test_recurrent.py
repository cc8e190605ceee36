"""The unpacked bidirectional LSTM layer equals the packed definition in value and gradient."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from gpner.functional.recurrent import bilstm_layer, reverse_within
from gpner.functional.reference import bilstm_layer_packed


def _weights(inputs: int, units: int, seed: int, dtype=torch.float64) -> list[torch.Tensor]:
    lstm = nn.LSTM(inputs, units, bidirectional=True).to(dtype)
    torch.manual_seed(seed)
    for p in lstm.parameters():
        nn.init.uniform_(p, -0.5, 0.5)
    return [p.detach().requires_grad_() for p in lstm.parameters()]


def _case(seed: int, lengths: list[int], inputs: int = 5, units: int = 3):
    g = torch.Generator().manual_seed(seed)
    L = max(lengths, default=0)
    x = torch.randn(len(lengths), L, inputs, generator=g, dtype=torch.float64)
    return x.requires_grad_(), torch.tensor(lengths), _weights(inputs, units, seed)


@pytest.mark.parametrize("seed", range(4))
def test_value_and_gradient_equal_the_packed_definition(seed):
    lengths = [7, 3, 0, 7, 1, 5]
    x, n, weights = _case(seed, lengths)
    mask = torch.arange(7) < n[:, None]
    g = torch.randn(6, 7, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    fast = bilstm_layer(x, n, weights)
    slow = bilstm_layer_packed(x, n, weights)
    # the reference runs an empty row as one step; both are zero there
    torch.testing.assert_close(fast, slow, rtol=1e-12, atol=1e-12)
    assert torch.equal(fast[~mask], torch.zeros_like(fast[~mask]))
    grads_fast = torch.autograd.grad(fast, [x, *weights], g)
    grads_slow = torch.autograd.grad(slow, [x, *weights], g)
    for a, b in zip(grads_fast, grads_slow, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_gradcheck():
    x, n, weights = _case(0, [4, 2, 0, 3], inputs=3, units=2)
    assert torch.autograd.gradcheck(lambda x, *w: bilstm_layer(x, n, list(w)), (x, *weights))


@settings(max_examples=40, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 9), min_size=1, max_size=5),
    pad=st.integers(0, 3),
    seed=st.integers(0, 2**16),
)
def test_padding_never_reaches_a_real_token(lengths, pad, seed):
    """A row's outputs depend on its own tokens only: on neither its padding nor its batch."""
    x, n, weights = _case(seed, lengths)
    x = x.detach()
    garbage = torch.randn(x.shape[0], x.shape[1] + pad, x.shape[2], dtype=torch.float64)
    mask = torch.arange(x.shape[1] + pad) < n[:, None]
    noisy = torch.where(mask[..., None], torch.nn.functional.pad(x, (0, 0, 0, pad)), garbage)
    out = bilstm_layer(noisy, n, weights)
    for b, length in enumerate(lengths):
        alone = bilstm_layer(x[b : b + 1, :length], n[b : b + 1], weights)
        torch.testing.assert_close(out[b : b + 1, :length], alone, rtol=1e-12, atol=1e-12)
        assert torch.equal(out[b, length:], torch.zeros_like(out[b, length:]))


@settings(max_examples=40, deadline=None)
@given(lengths=st.lists(st.integers(0, 8), min_size=1, max_size=4), seed=st.integers(0, 99))
def test_reverse_within_is_an_involution_that_keeps_padding(lengths, seed):
    L = max(lengths)
    x = torch.randn(len(lengths), L, 2, generator=torch.Generator().manual_seed(seed))
    n = torch.tensor(lengths)
    r = reverse_within(x, n)
    assert torch.equal(reverse_within(r, n), x)
    for b, length in enumerate(lengths):
        assert torch.equal(r[b, :length], x[b, :length].flip(0))
        assert torch.equal(r[b, length:], x[b, length:])


def test_empty_batches_and_wrong_weights():
    weights = _weights(5, 3, 0)
    assert bilstm_layer(
        torch.zeros(2, 0, 5, dtype=torch.float64), torch.zeros(2), weights
    ).shape == (
        2,
        0,
        6,
    )
    with pytest.raises(ValueError, match="8 weights"):
        bilstm_layer(torch.zeros(1, 2, 5), torch.ones(1), weights[:4])


def test_packed_recurrence_switch_is_scoped_and_equal():
    from gpner.backends import packed_recurrence
    from gpner.functional import recurrent

    x, n, weights = _case(3, [5, 2, 4])
    fast = bilstm_layer(x, n, weights)
    with packed_recurrence():
        assert recurrent.PACKED.get()
        packed = bilstm_layer(x, n, weights)
        with packed_recurrence(False):
            assert not recurrent.PACKED.get()
    assert not recurrent.PACKED.get()
    torch.testing.assert_close(packed, fast, rtol=1e-12, atol=1e-12)
    assert packed.grad_fn is not None and fast.grad_fn is not None
