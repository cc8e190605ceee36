"""Encoders: token ids (B, L) -> hidden states (B, L, H).

Every encoder exposes the same small interface, which is what the model and VAT rely on:

- ``hidden_size``: H.
- ``embed(input_ids)``: (B, L) -> (B, L, H) word embeddings, where VAT perturbs.
- ``forward(attention_mask, input_ids=None, inputs_embeds=None)`` -> (B, L, H).
- ``spec()``: a JSON-serialisable dict from which :func:`encoder_from_spec` rebuilds the same
  architecture (randomly initialised; weights come from the checkpoint's state dict), so a
  checkpoint never needs the original model directory.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from gpner.registry import Registry

if TYPE_CHECKING:
    from gpner.config import Config, EncoderConfig
    from gpner.data.tokenizers import Tokenizer

__all__ = [
    "ENCODERS",
    "EncoderKind",
    "CharTransformerEncoder",
    "HFEncoder",
    "encoder_from_spec",
    "resolve_model_dir",
]


class CharTransformerEncoder(nn.Module):
    """A small pre-norm Transformer over characters, trained from scratch.

    Learned absolute positions (windows never exceed ``max_positions``); dropout on embeddings,
    attention and feed-forward layers, which is what R-Drop's two passes differ by.
    """

    def __init__(
        self,
        vocab_size: int,
        hidden_size: int = 256,
        num_layers: int = 2,
        num_heads: int = 4,
        ffn_size: int = 1024,
        dropout: float = 0.1,
        max_positions: int = 512,
        pad_id: int = 0,
    ):
        super().__init__()
        self._spec = {
            "kind": "char_transformer",
            "vocab_size": vocab_size,
            "hidden_size": hidden_size,
            "num_layers": num_layers,
            "num_heads": num_heads,
            "ffn_size": ffn_size,
            "dropout": dropout,
            "max_positions": max_positions,
            "pad_id": pad_id,
        }
        self.hidden_size = hidden_size
        self.tokens = nn.Embedding(vocab_size, hidden_size, padding_idx=pad_id)
        self.positions = nn.Embedding(max_positions, hidden_size)
        self.dropout = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(
            hidden_size,
            num_heads,
            ffn_size,
            dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        # The nested-tensor fast path changes padded outputs between train and eval; keep exact.
        self.layers = nn.TransformerEncoder(
            layer, num_layers, norm=nn.LayerNorm(hidden_size), enable_nested_tensor=False
        )

    def spec(self) -> dict[str, Any]:
        return dict(self._spec)

    def embed(self, input_ids: Tensor) -> Tensor:
        return self.tokens(input_ids)

    def forward(
        self,
        attention_mask: Tensor,
        input_ids: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
    ) -> Tensor:
        if inputs_embeds is None:
            inputs_embeds = self.embed(input_ids)
        length = inputs_embeds.shape[1]
        if length > self.positions.num_embeddings:
            raise ValueError(
                f"input of {length} tokens exceeds max_positions={self.positions.num_embeddings}"
            )
        positions = torch.arange(length, device=inputs_embeds.device)
        x = self.dropout(inputs_embeds + self.positions(positions))
        return self.layers(x, src_key_padding_mask=~attention_mask.bool())


class HFEncoder(nn.Module):
    """A Hugging Face ``AutoModel`` encoder built from pretrained weights or an embedded config.

    ``HFEncoder.from_pretrained(name)`` loads a local directory, a packaged name or a hub id
    (:mod:`gpner.hub`); the spec holds the full model config, so :func:`encoder_from_spec`
    rebuilds the architecture offline, with no directory and no hub.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.hidden_size = int(model.config.hidden_size)

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path) -> HFEncoder:
        from transformers import AutoModel
        from transformers.utils import logging as hf_logging

        from gpner import hub

        local = hub.resolve_local(str(name_or_path))
        if local is not None:
            source, options = str(local), {"local_files_only": True}
        else:
            source, options = str(name_or_path), hub.hub_options()

        # The pooler weights a sentence-embedding checkpoint carries are unused here by design;
        # the load report listing them would only alarm users.
        previous = hf_logging.get_verbosity()
        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        try:
            model = AutoModel.from_pretrained(source, add_pooling_layer=False, **options)
        except OSError as error:
            if local is not None:
                raise
            raise hub.missing_model_error(source, error) from None
        finally:
            hf_logging.set_verbosity(previous)
            if bars:
                hf_logging.enable_progress_bar()
        return cls(model)

    @classmethod
    def from_config_dict(cls, config: dict[str, Any]) -> HFEncoder:
        from transformers import AutoConfig, AutoModel

        config = dict(config)
        model_type = config.pop("model_type")
        hf_config = AutoConfig.for_model(model_type, **config)
        return cls(AutoModel.from_config(hf_config, add_pooling_layer=False))

    def spec(self) -> dict[str, Any]:
        return {"kind": "hf", "config": self.model.config.to_dict()}

    def embed(self, input_ids: Tensor) -> Tensor:
        return self.model.get_input_embeddings()(input_ids)

    def forward(
        self,
        attention_mask: Tensor,
        input_ids: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
    ) -> Tensor:
        if inputs_embeds is None:
            inputs_embeds = self.embed(input_ids)
        out = self.model(inputs_embeds=inputs_embeds, attention_mask=attention_mask.long())
        return out.last_hidden_state


def encoder_from_spec(spec: dict[str, Any]) -> nn.Module:
    """Rebuild an encoder architecture (random weights) from ``encoder.spec()``."""
    return ENCODERS[spec["kind"]].from_spec(spec)


def resolve_model_dir(name_or_path: str) -> Path:
    """The local directory of a path or a packaged name ("m3e-small", "minilm").

    A hub id has no local directory (transformers resolves it in its cache): FileNotFoundError.
    See :mod:`gpner.hub`.
    """
    from gpner.hub import resolve_local

    local = resolve_local(name_or_path)
    if local is None:
        raise FileNotFoundError(f"{name_or_path!r} is a hub id, not a local model directory")
    return local


# ---------------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class EncoderKind:
    """One registered kind of encoder: its tokenizer, its builder, its rebuilder, its checks.

    ``tokenizer(config, train_texts)`` makes the tokenizer (a vocabulary from the training
    texts, or a pretrained one); ``build(config, tokenizer)`` a freshly initialised encoder
    (pretrained weights loaded); ``from_spec(spec)`` the architecture of a saved encoder;
    ``check(encoder_config)`` raises ``ConfigError`` for settings this kind cannot use.
    """

    tokenizer: Callable[[Config, list[str]], Tokenizer]
    build: Callable[[Config, Tokenizer], nn.Module]
    from_spec: Callable[[dict[str, Any]], nn.Module]
    check: Callable[[EncoderConfig], None] = lambda enc: None


ENCODERS: Registry[EncoderKind] = Registry("encoder")


def _char_tokenizer(config: Config, texts: list[str]) -> Tokenizer:
    from gpner.data.tokenizers import CharTokenizer

    enc = config.encoder
    return CharTokenizer.build(
        texts, min_freq=enc.min_char_freq, max_size=enc.max_vocab, lowercase=bool(enc.lowercase)
    )


def _char_transformer(config: Config, tokenizer: Tokenizer) -> nn.Module:
    enc = config.encoder
    return CharTransformerEncoder(
        vocab_size=tokenizer.vocab_size,
        hidden_size=enc.hidden_size,
        num_layers=enc.num_layers,
        num_heads=enc.num_heads,
        ffn_size=enc.ffn_size,
        dropout=enc.dropout,
        max_positions=config.data.max_length,
        pad_id=tokenizer.pad_id,
    )


def _check_char_transformer(enc: EncoderConfig) -> None:
    from gpner.config import ConfigError

    if enc.hidden_size % enc.num_heads:
        raise ConfigError(
            f"encoder.num_heads: must divide encoder.hidden_size ({enc.hidden_size}), "
            f"got {enc.num_heads}"
        )


def _hf_tokenizer(config: Config, texts: list[str]) -> Tokenizer:
    from gpner import hub
    from gpner.data.tokenizers import HFTokenizer

    path = config.encoder.path
    directory = hub.resolve_local(path) or hub.tokenizer_dir(path)  # a hub id: its cache snapshot
    return HFTokenizer(directory, lowercase=config.encoder.lowercase)


def _check_hf(enc: EncoderConfig) -> None:
    from gpner.config import ConfigError

    if not enc.path:
        raise ConfigError("encoder.path: required when encoder.kind = 'hf'")


ENCODERS.register(
    "char_transformer",
    EncoderKind(
        _char_tokenizer,
        _char_transformer,
        lambda spec: CharTransformerEncoder(**{k: v for k, v in spec.items() if k != "kind"}),
        _check_char_transformer,
    ),
    help="a small Transformer over characters, trained from scratch",
)
ENCODERS.register(
    "hf",
    EncoderKind(
        _hf_tokenizer,
        lambda config, tokenizer: HFEncoder.from_pretrained(config.encoder.path),
        lambda spec: HFEncoder.from_config_dict(spec["config"]),
        _check_hf,
    ),
    help="a pretrained Hugging Face encoder: a local directory, a packaged name or a hub id",
)
