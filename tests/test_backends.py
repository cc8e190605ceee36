"""The scoped kernel switch: nesting, restoring, and a compile failure that does not stick."""

import warnings

import pytest
import torch

from gpner import functional as F
from gpner.backends import compiled_kernels, compiled_kernels_enabled
from gpner.functional._blocked import kernels


def _loss_and_grad():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(2, 2, 5, 5, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(2, 2, 5, 5, generator=g, dtype=torch.float64)
    am = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    spans = torch.tensor([[0, 1, 0, 2], [1, 0, 3, 4]])
    value = F.sparse_multilabel_categorical_crossentropy(s, spans, am) + F.global_pointer_kl(
        s, t, am
    )
    (grad,) = torch.autograd.grad(value, s)
    return value.detach(), grad


def test_switch_is_scoped_and_nests():
    assert not compiled_kernels_enabled()
    with compiled_kernels():
        assert compiled_kernels_enabled()
        with compiled_kernels(False):
            assert not compiled_kernels_enabled()
        assert compiled_kernels_enabled()
    assert not compiled_kernels_enabled()
    with pytest.raises(RuntimeError), compiled_kernels():
        raise RuntimeError("a failing step")
    assert not compiled_kernels_enabled()  # restored on errors too
    with pytest.raises(ValueError, match="kernel mode"), kernels.kernel_mode("fast"):
        pass


def test_compile_failure_warns_falls_back_and_does_not_stick(monkeypatch):
    attempts = []

    def broken_compile(fn, **kwargs):
        def compiled(*args):
            attempts.append(fn.__name__)
            raise RuntimeError("no C++ compiler")

        return compiled

    monkeypatch.setattr(torch, "compile", broken_compile)
    monkeypatch.setattr(kernels, "_compiled", {})
    want = _loss_and_grad()
    with pytest.warns(RuntimeWarning, match="compiled loss kernels failed"), compiled_kernels():
        got = _loss_and_grad()  # served by the uncompiled kernels: same values
        first = len(attempts)
        again = _loss_and_grad()  # the fallback holds inside the block: no new attempt
        assert len(attempts) == first == 1
    for a, b, c in zip(want, got, again):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)
        assert torch.equal(b, c)
    # Outside the block: the eager code, no warning, no attempt.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _loss_and_grad()
    assert len(attempts) == 1
    # A new block tries to compile again: the failure did not stick for the process.
    with pytest.warns(RuntimeWarning), compiled_kernels():
        _loss_and_grad()
    assert len(attempts) == 2


def test_backward_uses_the_kernels_of_its_forward(monkeypatch):
    calls = []
    run = kernels.run
    monkeypatch.setattr(kernels, "run", lambda *a: calls.append(a[1]) or run(*a))
    s = torch.randn(1, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    with kernels.kernel_mode("python"):
        value = F.global_pointer_kl(s, s.detach() + 1.0)
    value.backward()  # outside the block
    assert calls == ["fwd", "bwd"]
