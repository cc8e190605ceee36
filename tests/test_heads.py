"""The module shells: shapes, masking, and that they call the functional core."""

import pytest
import torch

from gpner import functional as F
from gpner.heads import (
    EfficientGlobalPointer,
    GlobalPointer,
    GlobalPointerKL,
    MultilabelCrossEntropy,
    SoftmaxKL,
    build_head,
)


@pytest.mark.parametrize("kind", ["global_pointer", "efficient_global_pointer"])
def test_head_shapes_and_mask(kind):
    torch.manual_seed(0)
    head = build_head(kind, hidden_size=12, num_types=3, head_size=8)
    hidden = torch.randn(2, 5, 12)
    am = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.bool)
    logits = head(hidden, am)
    assert logits.shape == (2, 3, 5, 5)
    invalid = ~F.span_mask(am).expand_as(logits)
    assert (logits[invalid] == torch.finfo(logits.dtype).min).all()
    assert (logits[~invalid] > torch.finfo(logits.dtype).min).all()
    # the real tokens' logits do not depend on padding content
    hidden2 = hidden.clone()
    hidden2[1, 3:] = torch.randn(2, 12)
    assert torch.allclose(head(hidden2, am)[1, :, :3, :3], logits[1, :, :3, :3])


def test_global_pointer_is_translation_equivariant_with_rope():
    # Same tokens shifted right by padding on the left of nothing: RoPE makes the score of a
    # (start, end) pair depend on content and offset j - i only.
    torch.manual_seed(1)
    head = GlobalPointer(6, 2, 4)
    x = torch.randn(1, 4, 6)
    prefix = torch.randn(1, 3, 6)
    a = head(x)
    b = head(torch.cat([prefix, x], dim=1))
    assert torch.allclose(a[0], b[0, :, 3:, 3:], atol=1e-5)


def test_efficient_head_has_fewer_parameters():
    gp = GlobalPointer(768, 10, 64)
    egp = EfficientGlobalPointer(768, 10, 64)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(egp) * 5 < count(gp)


def test_unknown_head_is_an_error():
    with pytest.raises(ValueError, match="unknown head"):
        build_head("pointer", 4, 2)


def test_loss_modules_call_functional():
    torch.manual_seed(2)
    s, t = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    am = torch.ones(2, 4, dtype=torch.bool)
    targets = torch.zeros(2, 3, 4, 4, dtype=torch.bool)
    targets[0, 1, 0, 2] = targets[1, 2, 3, 3] = True
    spans = targets.nonzero()
    loss = MultilabelCrossEntropy()
    assert torch.allclose(loss(s, targets, am), loss(s, mask=am, spans=spans))
    want = F.multilabel_categorical_crossentropy(s, targets, am)
    assert torch.allclose(loss(s, targets, am), want)
    with pytest.raises(ValueError):
        loss(s, targets, am, spans=spans)
    assert torch.equal(GlobalPointerKL("none")(s, t, am), F.global_pointer_kl(s, t, am, "none"))
    assert torch.equal(SoftmaxKL("sum")(s, t, am), F.softmax_kl(s, t, am, "sum"))
