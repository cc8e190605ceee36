"""Objectives: plain CE, R-Drop and VAT, against a tiny stand-in model with the real interface."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
from torch import Tensor, nn

from gpner import functional as F
from gpner.heads import GlobalPointer
from gpner.regularizers import (
    VAT,
    Plain,
    RDrop,
    RNGState,
    build_objective,
    cross_entropy,
    get_divergence,
    vat_direction,
    vat_penalty,
)

# ------------------------------------------------------------------------------ stand-in model


class TinyModel(nn.Module):
    """Embedding + positions + one masked self-attention block with dropout + GlobalPointer.

    ``embed(input_ids) -> (B, L, H)``; ``forward(input_ids, attention_mask, inputs_embeds)`` ->
    logits (B, C, L, L), the interface the objectives are written against.
    """

    def __init__(self, vocab=11, hidden=8, num_types=2, head_size=4, max_len=16, p=0.1):
        super().__init__()
        self.word = nn.Embedding(vocab, hidden)
        self.position = nn.Embedding(max_len, hidden)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.ff = nn.Linear(hidden, hidden)
        self.dropout = nn.Dropout(p)
        self.head = GlobalPointer(hidden, num_types, head_size)
        self.calls = {"embed": 0, "forward": 0}

    def embed(self, input_ids: Tensor) -> Tensor:
        self.calls["embed"] += 1
        return self.word(input_ids)

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None) -> Tensor:
        self.calls["forward"] += 1
        x = self.word(input_ids) if inputs_embeds is None else inputs_embeds  # (B, L, H)
        length = x.shape[1]
        x = self.dropout(x + self.position.weight[:length])
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        scores = q @ k.transpose(-1, -2) / math.sqrt(x.shape[-1])  # (B, L, L)
        if attention_mask is not None:
            scores = scores.masked_fill(~attention_mask[:, None, :], torch.finfo(x.dtype).min)
        x = x + self.dropout(torch.tanh(self.ff(self.dropout(scores.softmax(-1)) @ v)))
        return self.head(x, attention_mask)


@dataclass
class Batch:
    input_ids: Tensor  # (B, L)
    attention_mask: Tensor  # (B, L) bool
    spans: Tensor  # (N, 4)


def make_batch(lengths=(6, 4, 1), length=6, vocab=11, num_types=2, seed=0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (len(lengths), length), generator=g)
    am = torch.arange(length)[None, :] < torch.tensor(lengths)[:, None]
    ids = ids.masked_fill(~am, 0)
    spans = [[0, 0, 0, 1], [0, 1, 2, 4], [0, 1, 2, 2], [1, 0, 1, 3], [2, 1, 0, 0]]
    spans = [s for s in spans if s[3] < lengths[s[0]]]
    return Batch(ids, am, torch.tensor(spans))


def make_model(seed=0, dtype=torch.float32, **kwargs) -> TinyModel:
    torch.manual_seed(seed)
    return TinyModel(**kwargs).to(dtype)
