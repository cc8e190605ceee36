"""The NER model: encoder + GlobalPointer head, with its labels, tokenizer and config.

:func:`model_from_parts` rebuilds the architecture from what a saved model records (config,
labels, tokenizer state, encoder spec); :mod:`gpner.checkpoints` stores and loads the weights.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from gpner import functional as F
from gpner.config import Config, config_from_dict
from gpner.data.tokenizers import Tokenizer, tokenizer_from_state
from gpner.encoders import ENCODERS, encoder_from_spec
from gpner.heads import build_head

__all__ = ["NERModel", "build_model", "build_tokenizer", "model_from_parts"]


class NERModel(nn.Module):
    """Encoder + GlobalPointer head; also carries its labels, tokenizer and config."""

    def __init__(
        self,
        encoder: nn.Module,
        head: nn.Module,
        labels: list[str],
        tokenizer: Tokenizer,
        config: Config,
    ):
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.labels = list(labels)
        self.tokenizer = tokenizer
        self.config = config

    @property
    def label2id(self) -> dict[str, int]:
        return {label: i for i, label in enumerate(self.labels)}

    def embed(self, input_ids: Tensor) -> Tensor:
        """(B, L) -> (B, L, H) input embeddings (VAT perturbs these)."""
        return self.encoder.embed(input_ids)

    def span_factors(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
    ) -> F.SpanFactors:
        """-> the span logits in factored form, :class:`~gpner.functional.SpanFactors`.

        What training reads (:mod:`gpner.regularizers`): the fused losses compute the logits
        block by block from these, so no (B, C, L, L) tensor is ever built. Give ``input_ids``
        (B, L) or ``inputs_embeds`` (B, L, H); ``attention_mask`` (B, L) bool defaults to all
        tokens real. The factors carry the mask and the head's ``max_width``.
        """
        if attention_mask is None:
            ref = input_ids if input_ids is not None else inputs_embeds[..., 0]
            attention_mask = torch.ones(ref.shape[:2], dtype=torch.bool, device=ref.device)
        if attention_mask.shape[1] == 0:  # no tokens (empty texts): no encoder has work to do
            ref = input_ids if input_ids is not None else inputs_embeds[..., 0]
            hidden = torch.zeros(*ref.shape[:2], self.encoder.hidden_size, device=ref.device)
        else:
            hidden = self.encoder(attention_mask, input_ids=input_ids, inputs_embeds=inputs_embeds)
        return self.head.factors(hidden, attention_mask)

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
    ) -> Tensor:
        """-> logits (B, C, L, L), or band (B, C, L, W) for a head with ``max_width``; invalid
        cells hold the dtype's lowest finite value. For prediction and decoding: the
        materialised :meth:`span_factors` (one code path for both)."""
        return F.factors_to_logits(self.span_factors(input_ids, attention_mask, inputs_embeds))


def _head_for(config: Config, hidden_size: int, num_types: int) -> nn.Module:
    head = config.head
    return build_head(head.kind, hidden_size, num_types, head.head_size, head.max_width)


def build_tokenizer(config: Config, train_texts: list[str]) -> Tokenizer:
    """The tokenizer of the configured encoder kind (e.g. a char vocabulary of ``train_texts``)."""
    return ENCODERS[config.encoder.kind].tokenizer(config, train_texts)


def build_model(
    config: Config,
    labels: list[str],
    tokenizer: Tokenizer,
    train_texts: list[str] | None = None,
) -> NERModel:
    """A freshly initialised model (pretrained encoder weights loaded from their directory).

    ``train_texts``: what the encoder learns a vocabulary from beyond the tokenizer's (the char
    bigrams of ``encoder.bigrams``, which need them).
    """
    encoder = ENCODERS[config.encoder.kind].build(config, tokenizer, train_texts)
    head = _head_for(config, encoder.hidden_size, len(labels))
    return NERModel(encoder, head, labels, tokenizer, config)


def model_from_parts(
    config: dict[str, Any] | Config,
    labels: list[str],
    tokenizer_state: dict[str, Any] | Tokenizer,
    encoder_spec: dict[str, Any],
) -> NERModel:
    """A model with the saved architecture (random weights; the caller loads them).
    ``tokenizer_state``: a tokenizer's ``state_dict()``, or the tokenizer itself."""
    if not isinstance(config, Config):
        config = config_from_dict(config)
    if isinstance(tokenizer_state, dict):
        tokenizer = tokenizer_from_state(tokenizer_state)
    else:
        tokenizer = tokenizer_state
    encoder = encoder_from_spec(encoder_spec)
    head = _head_for(config, encoder.hidden_size, len(labels))
    return NERModel(encoder, head, list(labels), tokenizer, config)
