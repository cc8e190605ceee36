"""The comparison point: GlobalPointer written the way typical public PyTorch code does it.

Modelled on the widely copied GlobalPointer / Efficient GlobalPointer ports (GPLinker-style
``GlobalPointer_pytorch``): sinusoidal RoPE built with ``repeat_interleave``, an ``einsum`` over
the full (B, C, L, L), padding and lower-triangle masks applied additively with a ``1e12``
constant, dense 0/1 (B, C, L, L) labels, and the multi-label cross-entropy as two concatenated
``logsumexp``. The divergence is the same ``(sigmoid(s) - sigmoid(t)) (s - t)`` as gpner's,
masked by multiplying with a float mask. Everything is (B, C, L, L).

This file lives in benchmarks/ only; the ``1e12`` literal must never appear in ``src/``.
Reductions match gpner's: per (example, type) sums, averaged over (B, C).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

BIG = 1e12


def sinusoidal_position_embedding(batch: int, length: int, dim: int, device) -> Tensor:
    position_ids = torch.arange(0, length, dtype=torch.float, device=device).unsqueeze(-1)
    indices = torch.arange(0, dim // 2, dtype=torch.float, device=device)
    indices = torch.pow(10000, -2 * indices / dim)
    embeddings = position_ids * indices
    embeddings = torch.stack([torch.sin(embeddings), torch.cos(embeddings)], dim=-1)
    embeddings = embeddings.repeat((batch, *([1] * len(embeddings.shape))))
    return torch.reshape(embeddings, (batch, length, dim))


def apply_rope(x: Tensor, pos_emb: Tensor) -> Tensor:
    # x: (B, L, [C,] D); pos_emb: (B, L, D) as stack([sin, cos]) pairs
    if x.dim() == 4:
        pos_emb = pos_emb[..., None, :]
    cos_pos = pos_emb[..., 1::2].repeat_interleave(2, dim=-1)
    sin_pos = pos_emb[..., ::2].repeat_interleave(2, dim=-1)
    x2 = torch.stack([-x[..., 1::2], x[..., ::2]], -1).reshape(x.shape)
    return x * cos_pos + x2 * sin_pos


def add_mask_tril(logits: Tensor, attention_mask: Tensor) -> Tensor:
    batch, types, length, _ = logits.shape
    pad_mask = attention_mask.float().unsqueeze(1).unsqueeze(1).expand(batch, types, length, length)
    logits = logits * pad_mask - (1 - pad_mask) * BIG
    mask = torch.tril(torch.ones_like(logits), -1)
    return logits - mask * BIG


class RefGlobalPointer(nn.Module):
    def __init__(self, hidden_size: int, num_types: int, head_size: int = 64):
        super().__init__()
        self.num_types, self.head_size = num_types, head_size
        self.dense = nn.Linear(hidden_size, num_types * head_size * 2)

    def forward(self, hidden: Tensor, attention_mask: Tensor) -> Tensor:
        batch, length = hidden.shape[:2]
        d = self.head_size
        outputs = self.dense(hidden)
        outputs = torch.split(outputs, d * 2, dim=-1)
        outputs = torch.stack(outputs, dim=-2)  # (B, L, C, 2D)
        qw, kw = outputs[..., :d], outputs[..., d:]
        pos_emb = sinusoidal_position_embedding(batch, length, d, hidden.device)
        qw, kw = apply_rope(qw, pos_emb), apply_rope(kw, pos_emb)
        logits = torch.einsum("bmhd,bnhd->bhmn", qw, kw)
        logits = add_mask_tril(logits, attention_mask)
        return logits / d**0.5


class RefEfficientGlobalPointer(nn.Module):
    def __init__(self, hidden_size: int, num_types: int, head_size: int = 64):
        super().__init__()
        self.num_types, self.head_size = num_types, head_size
        self.linear_1 = nn.Linear(hidden_size, head_size * 2)
        self.linear_2 = nn.Linear(head_size * 2, num_types * 2)

    def forward(self, hidden: Tensor, attention_mask: Tensor) -> Tensor:
        batch, length = hidden.shape[:2]
        d = self.head_size
        outputs = self.linear_1(hidden)
        qw, kw = outputs[..., ::2], outputs[..., 1::2]
        pos_emb = sinusoidal_position_embedding(batch, length, d, hidden.device)
        qw, kw = apply_rope(qw, pos_emb), apply_rope(kw, pos_emb)
        logits = torch.einsum("bmd,bnd->bmn", qw, kw) / d**0.5
        bias = torch.einsum("bnh->bhn", self.linear_2(outputs)) / 2
        logits = logits[:, None] + bias[:, ::2, None] + bias[:, 1::2, :, None]
        return add_mask_tril(logits, attention_mask)


def dense_labels(spans: Tensor, shape: tuple[int, int, int, int]) -> Tensor:
    """The (B, C, L, L) float 0/1 label tensor a typical collate function builds."""
    labels = torch.zeros(shape)
    labels[spans[:, 0], spans[:, 1], spans[:, 2], spans[:, 3]] = 1
    return labels


def multilabel_categorical_crossentropy(y_pred: Tensor, y_true: Tensor) -> Tensor:
    y_pred = (1 - 2 * y_true) * y_pred
    y_pred_neg = y_pred - y_true * BIG
    y_pred_pos = y_pred - (1 - y_true) * BIG
    zeros = torch.zeros_like(y_pred[..., :1])
    y_pred_neg = torch.cat([y_pred_neg, zeros], dim=-1)
    y_pred_pos = torch.cat([y_pred_pos, zeros], dim=-1)
    neg_loss = torch.logsumexp(y_pred_neg, dim=-1)
    pos_loss = torch.logsumexp(y_pred_pos, dim=-1)
    return (neg_loss + pos_loss).mean()


def global_pointer_crossentropy(y_true: Tensor, y_pred: Tensor) -> Tensor:
    batch, types = y_pred.shape[:2]
    y_true = y_true.reshape(batch * types, -1)
    y_pred = y_pred.reshape(batch * types, -1)
    return multilabel_categorical_crossentropy(y_pred, y_true)


def span_mask_float(attention_mask: Tensor) -> Tensor:
    am = attention_mask.float()
    mask = am[:, None, :, None] * am[:, None, None, :]
    return torch.triu(mask)  # (B, 1, L, L)


def global_pointer_divergence(s: Tensor, t: Tensor, attention_mask: Tensor) -> Tensor:
    mask = span_mask_float(attention_mask)
    kl = (torch.sigmoid(s) - torch.sigmoid(t)) * (s - t) * mask
    return kl.sum() / (s.shape[0] * s.shape[1])


def build(kind: str, hidden_size: int, num_types: int, head_size: int) -> nn.Module:
    if kind == "global_pointer":
        return RefGlobalPointer(hidden_size, num_types, head_size)
    return RefEfficientGlobalPointer(hidden_size, num_types, head_size)


def copy_weights_from_gpner(ref: nn.Module, head: nn.Module) -> None:
    """Give the reference the same function as a gpner head (for the value-parity check)."""
    with torch.no_grad():
        if isinstance(ref, RefGlobalPointer):
            ref.dense.weight.copy_(head.proj.weight)
            ref.dense.bias.copy_(head.proj.bias)
            return
        ref.linear_1.weight.copy_(head.proj.weight)
        ref.linear_1.bias.copy_(head.proj.bias)
        # the public code adds bias[::2] along the end index and bias[1::2] along the start;
        # gpner's start_bias is bias[0::2]: swap each (start, end) pair of rows.
        w = (
            head.bias.weight.view(-1, 2, head.bias.weight.shape[-1])
            .flip(1)
            .reshape_as(head.bias.weight)
        )
        ref.linear_2.weight.copy_(w)
        ref.linear_2.bias.copy_(head.bias.bias.view(-1, 2).flip(1).reshape(-1))
