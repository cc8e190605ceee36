"""Encoders: token ids (B, L) -> hidden states (B, L, H).

Every encoder exposes the same small interface, which is what the model and VAT rely on:

- ``hidden_size``: H.
- ``embed(input_ids)``: (B, L) -> (B, L, H) word embeddings, where VAT perturbs.
- ``forward(attention_mask, input_ids=None, inputs_embeds=None)`` -> (B, L, H).
- ``spec()``: a JSON-serialisable dict from which :func:`encoder_from_spec` rebuilds the same
  architecture (randomly initialised; weights come from the checkpoint's state dict), so a
  checkpoint never needs the original model directory.
- ``max_length``: the most tokens one input may have (a position table's size), or None.

Under ``torch.export`` (ONNX export, :mod:`gpner.export`) the from-scratch encoders trace a
formulation of the same function without data-dependent shapes: the bigram lookup as a fixed
number of gathers (:func:`sorted_lookup`), each BiLSTM layer as one op (:func:`bilstm_layer`)
that export writes as ONNX ``LSTM`` with the row lengths.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from gpner.functional import recurrent as F_recurrent
from gpner.functional.dropout import Dropout
from gpner.functional.dropout import dropout as F_dropout
from gpner.registry import Registry

if TYPE_CHECKING:
    from gpner.config import Config, EncoderConfig
    from gpner.data.tokenizers import Tokenizer

__all__ = [
    "ENCODERS",
    "EncoderKind",
    "BigramEmbedding",
    "BiLSTMEncoder",
    "CharTransformerEncoder",
    "HFEncoder",
    "bigram_keys",
    "encoder_from_spec",
    "bilstm_layer",
    "sorted_lookup",
]


def bigram_keys(
    sequences: Iterable[Sequence[int]], vocab_size: int, pad_id: int = 0, min_freq: int = 1
) -> Tensor:
    """The bigram vocabulary of token-id sequences: sorted keys ``a * vocab_size + b`` (K,).

    A bigram is two consecutive ids of one sequence (padding never counts); those seen fewer than
    ``min_freq`` times are left out, so the unknown-bigram embedding is trained on them.
    """
    counts: Counter[int] = Counter()
    for ids in sequences:
        counts.update(
            a * vocab_size + b for a, b in zip(ids, ids[1:]) if a != pad_id and b != pad_id
        )
    return torch.tensor(sorted(k for k, n in counts.items() if n >= min_freq), dtype=torch.long)


def sorted_lookup(keys: Tensor, query: Tensor) -> Tensor:
    """``torch.searchsorted(keys, query)`` of sorted ``keys`` (K,), clamped to K - 1, as plain
    tensor operations: a branchless binary search of ceil(log2(K + 1)) gathers, which export
    traces (searchsorted has no ONNX operator). Any shape of ``query``; same shape out.
    """
    size = keys.numel()
    # at = the number of keys < query, found bit by bit from the highest power of two down
    at = torch.zeros_like(query)
    step = 1 << max(size.bit_length() - 1, 0)
    while step:
        probe = at + (step - 1)  # the last key of the next block of ``step`` keys
        inside = probe < size
        below = keys[probe.clamp(max=max(size - 1, 0))] < query
        at = torch.where(inside & below, at + step, at)
        step >>= 1
    return at.clamp(max=max(size - 1, 0))


class BigramEmbedding(nn.Module):
    """Embeddings of the character bigrams around each token: ``e(c[i-1] c[i]) + e(c[i] c[i+1])``.

    Bigram ids are computed from the token ids themselves, so the tokenizer, the features and
    their offsets are untouched. The vocabulary is the buffer ``keys`` (sorted ``a * V + b``,
    see :func:`bigram_keys`), saved in the state dict with the model. Bigram id 0 is "no bigram"
    (a neighbour is padding or outside the window; a zero vector), 1 is an unknown bigram,
    ``k + 2`` is ``keys[k]``. With ``dim < out_dim`` the table is ``dim`` wide and a linear map
    (no bias, so "no bigram" stays zero) projects it to ``out_dim``.
    """

    def __init__(
        self, num_bigrams: int, vocab_size: int, dim: int, pad_id: int = 0, out_dim: int = 0
    ):
        super().__init__()
        self.vocab_size = vocab_size
        self.pad_id = pad_id
        self.register_buffer("keys", torch.zeros(num_bigrams, dtype=torch.long))
        self.embedding = nn.Embedding(num_bigrams + 2, dim, padding_idx=0)
        out_dim = out_dim or dim
        self.project = None if out_dim == dim else nn.Linear(dim, out_dim, bias=False)

    def set_vocabulary(self, keys: Tensor) -> None:
        if keys.shape != self.keys.shape:
            raise ValueError(f"expected {self.keys.numel()} bigram keys, got {keys.numel()}")
        self.keys.copy_(keys)

    def ids(self, input_ids: Tensor) -> Tensor:
        """(B, L) token ids -> (B, L - 1) bigram ids; bigram k covers tokens k and k + 1."""
        a, b = input_ids[:, :-1], input_ids[:, 1:]
        key = a * self.vocab_size + b
        if self.keys.numel():
            if torch.compiler.is_exporting():  # searchsorted has no ONNX operator
                at = sorted_lookup(self.keys, key)
            else:
                at = torch.searchsorted(self.keys, key).clamp_(max=self.keys.numel() - 1)
            ids = torch.where(self.keys[at] == key, at + 2, 1)
        else:
            ids = torch.ones_like(key)
        return ids.masked_fill((a == self.pad_id) | (b == self.pad_id), 0)

    def forward(self, input_ids: Tensor) -> Tensor:
        e = self.embedding(self.ids(input_ids))  # (B, L - 1, dim)
        if self.project is not None:
            e = self.project(e)
        # token i gets its left bigram (k = i - 1) and its right one (k = i)
        return nn.functional.pad(e, (0, 0, 1, 0)) + nn.functional.pad(e, (0, 0, 0, 1))


class _CharEmbedder(nn.Module):
    """The input embeddings of the from-scratch encoders: characters, plus optional bigrams."""

    _spec: dict[str, Any]

    def _init_embeddings(
        self,
        vocab_size: int,
        dim: int,
        pad_id: int,
        num_bigrams: int | None,
        bigram_size: int | None,
    ) -> None:
        self.tokens = nn.Embedding(vocab_size, dim, padding_idx=pad_id)
        self.bigrams = None
        if num_bigrams is not None:
            width = bigram_size or dim
            self.bigrams = BigramEmbedding(num_bigrams, vocab_size, width, pad_id, out_dim=dim)

    def spec(self) -> dict[str, Any]:
        return dict(self._spec)

    def embed(self, input_ids: Tensor) -> Tensor:
        """(B, L) -> (B, L, H): what VAT perturbs, bigram embeddings included."""
        if self.bigrams is None:
            return self.tokens(input_ids)
        return self.tokens(input_ids) + self.bigrams(input_ids)


def _bigram_spec(num_bigrams: int | None, bigram_size: int | None) -> dict[str, Any]:
    """Spec entries of the bigram table; none without one, so older specs stay valid."""
    if num_bigrams is None:
        return {}
    return {"num_bigrams": num_bigrams, "bigram_size": bigram_size}


class CharTransformerEncoder(_CharEmbedder):
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
        num_bigrams: int | None = None,
        bigram_size: int | None = None,
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
            **_bigram_spec(num_bigrams, bigram_size),
        }
        self.hidden_size = hidden_size
        self.max_length = max_positions
        self._init_embeddings(vocab_size, hidden_size, pad_id, num_bigrams, bigram_size)
        self.positions = nn.Embedding(max_positions, hidden_size)
        self.dropout = Dropout(dropout)
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


class BiLSTMEncoder(_CharEmbedder):
    """A bidirectional LSTM over characters, trained from scratch (``torch.nn.LSTM``).

    Embeddings of ``hidden_size`` (characters, plus bigrams when ``num_bigrams`` is given), then
    ``num_layers`` BiLSTM layers of ``hidden_size // 2`` units per direction, so the output is
    (B, L, hidden_size). Every row runs from its own first and last token, so padding never
    reaches a real token's state (see :meth:`layers`). Dropout on
    the embeddings, between layers and on the output.
    """

    def __init__(
        self,
        vocab_size: int,
        hidden_size: int = 256,
        num_layers: int = 1,
        dropout: float = 0.1,
        pad_id: int = 0,
        num_bigrams: int | None = None,
        bigram_size: int | None = None,
    ):
        super().__init__()
        if hidden_size % 2:
            raise ValueError(f"bilstm hidden_size must be even, got {hidden_size}")
        self._spec = {
            "kind": "bilstm",
            "vocab_size": vocab_size,
            "hidden_size": hidden_size,
            "num_layers": num_layers,
            "dropout": dropout,
            "pad_id": pad_id,
            **_bigram_spec(num_bigrams, bigram_size),
        }
        self.hidden_size = hidden_size
        self.max_length = None
        self._init_embeddings(vocab_size, hidden_size, pad_id, num_bigrams, bigram_size)
        self.dropout = Dropout(dropout)
        self.lstm = nn.LSTM(
            hidden_size,
            hidden_size // 2,
            num_layers=num_layers,
            dropout=dropout if num_layers > 1 else 0.0,
            batch_first=True,
            bidirectional=True,
        )

    def forward(
        self,
        attention_mask: Tensor,
        input_ids: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
    ) -> Tensor:
        if inputs_embeds is None:
            inputs_embeds = self.embed(input_ids)
        return self.dropout(self.layers(self.dropout(inputs_embeds), attention_mask))

    def layers(self, x: Tensor, attention_mask: Tensor) -> Tensor:
        """The LSTM layers over right-padded rows: (B, L, H) -> (B, L, H), zeros on padding.

        Each layer is :func:`gpner.functional.recurrent.bilstm_layer` (every row run from its
        own first and last token, as packing would, without packing's cost); under
        ``torch.export`` it is the op :func:`bilstm_layer` instead, which export writes as one
        ONNX ``LSTM`` per layer with the row lengths.
        """
        lengths = attention_mask.sum(1)  # (B,): real tokens come first in every row
        lstm = self.lstm
        layer_fn = _bilstm_weights_list
        if torch.compiler.is_exporting():
            # ONNX LSTM runs an empty row as one step; its output is masked downstream anyway
            lengths, layer_fn = lengths.clamp(min=1), bilstm_layer()
        for layer in range(lstm.num_layers):
            if layer:
                x = F_dropout(x, lstm.dropout, self.training)
            weights = [
                getattr(lstm, f"{name}_l{layer}{suffix}")
                for suffix in ("", "_reverse")
                for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
            ]
            x = layer_fn(x, lengths, *weights)
        return x


def _bilstm_weights_list(x: Tensor, lengths: Tensor, *weights: Tensor) -> Tensor:
    return F_recurrent.bilstm_layer(x, lengths, list(weights))


@functools.cache
def bilstm_layer():
    """The op ``gpner::bilstm_layer(x, lengths, 8 weights)``: one bidirectional LSTM layer over
    right-padded rows (B, L, H_in) of the given lengths (B,) -> (B, L, 2 H), zeros on padding.

    Its weights are those of one layer of ``nn.LSTM`` (``weight_ih, weight_hh, bias_ih,
    bias_hh``, forward direction then reverse). Run eagerly it is
    :func:`gpner.functional.recurrent.bilstm_layer`; under ``torch.export`` it is one opaque
    node with a known output shape, which :mod:`gpner.export` writes as ONNX ``LSTM`` with
    ``sequence_lens``. Registered on first use (no work at import time).
    """

    @torch.library.custom_op("gpner::bilstm_layer", mutates_args=())
    def op(
        x: Tensor,
        lengths: Tensor,
        w_ih: Tensor,
        w_hh: Tensor,
        b_ih: Tensor,
        b_hh: Tensor,
        w_ih_reverse: Tensor,
        w_hh_reverse: Tensor,
        b_ih_reverse: Tensor,
        b_hh_reverse: Tensor,
    ) -> Tensor:
        weights = [w_ih, w_hh, b_ih, b_hh, w_ih_reverse, w_hh_reverse, b_ih_reverse, b_hh_reverse]
        # a fresh contiguous tensor, as the fake implementation below promises
        return F_recurrent.bilstm_layer(x, lengths, weights).contiguous()

    @op.register_fake
    def _(x, lengths, w_ih, w_hh, *rest):
        return x.new_empty(x.shape[0], x.shape[1], 2 * w_hh.shape[1])

    return op


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
        self.max_length = int(getattr(model.config, "max_position_embeddings", 0) or 512)

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
            # never the model repository's own code, whatever its config asks for
            model = AutoModel.from_pretrained(
                source, add_pooling_layer=False, trust_remote_code=False, **options
            )
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


def _from_char_spec(cls: type[_CharEmbedder], spec: dict[str, Any]) -> _CharEmbedder:
    """``cls(**spec)``, each value first checked against the type of its parameter's default
    (a saved spec is data: a bool or a string where a size belongs is refused, naming it)."""
    import inspect

    params = inspect.signature(cls).parameters
    for key, value in spec.items():
        if key == "kind" or key not in params:
            continue
        default = params[key].default
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if isinstance(default, float):
            ok = number
        elif isinstance(default, int) or default is inspect.Parameter.empty or default is None:
            ok = isinstance(value, int) and not isinstance(value, bool)
            ok = ok or (default is None and value is None)
        else:
            ok = True
        if not ok:
            raise ValueError(f"encoder.{key}: {value!r} is not a valid value")
    return cls(**{k: v for k, v in spec.items() if k != "kind"})


# ---------------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class EncoderKind:
    """One registered kind of encoder: its tokenizer, its builder, its rebuilder, its checks.

    ``tokenizer(config, train_texts)`` makes the tokenizer (a vocabulary from the training
    texts, or a pretrained one); ``build(config, tokenizer, train_texts)`` a freshly
    initialised encoder (pretrained weights loaded; ``train_texts``, possibly None, for what it
    learns a vocabulary of, such as char bigrams); ``from_spec(spec)`` the architecture of a
    saved encoder; ``check(encoder_config)`` raises ``ConfigError`` for settings this kind
    cannot use.
    """

    tokenizer: Callable[[Config, list[str]], Tokenizer]
    build: Callable[[Config, Tokenizer, list[str] | None], nn.Module]
    from_spec: Callable[[dict[str, Any]], nn.Module]
    check: Callable[[EncoderConfig], None] = lambda enc: None


ENCODERS: Registry[EncoderKind] = Registry("encoder")


def _char_tokenizer(config: Config, texts: list[str]) -> Tokenizer:
    from gpner.data.tokenizers import CharTokenizer

    enc = config.encoder
    return CharTokenizer.build(
        texts, min_freq=enc.min_char_freq, max_size=enc.max_vocab, lowercase=bool(enc.lowercase)
    )


def _bigram_vocabulary(
    config: Config, tokenizer: Tokenizer, texts: list[str] | None
) -> Tensor | None:
    """The bigram keys of the training texts when ``encoder.bigrams`` is on, else None."""
    enc = config.encoder
    if not enc.bigrams:
        return None
    if texts is None:
        raise ValueError("encoder.bigrams: building the encoder needs the training texts")
    return bigram_keys(
        (e.ids for e in map(tokenizer.encode, texts)),
        tokenizer.vocab_size,
        tokenizer.pad_id,
        enc.min_bigram_freq,
    )


def _char_builder(make: Callable[..., _CharEmbedder]):
    """A ``build`` for a from-scratch encoder: the shared embedding settings and bigram
    vocabulary, plus the keyword arguments ``make(config)`` adds for its own kind."""

    def build(config: Config, tokenizer: Tokenizer, texts: list[str] | None) -> nn.Module:
        enc = config.encoder
        keys = _bigram_vocabulary(config, tokenizer, texts)
        encoder = make(config)(
            vocab_size=tokenizer.vocab_size,
            hidden_size=enc.hidden_size,
            num_layers=enc.num_layers,
            dropout=enc.dropout,
            pad_id=tokenizer.pad_id,
            num_bigrams=None if keys is None else int(keys.numel()),
            bigram_size=enc.bigram_size,
        )
        if keys is not None:
            encoder.bigrams.set_vocabulary(keys)
        return encoder

    return build


def _char_transformer(config: Config) -> Callable[..., _CharEmbedder]:
    enc = config.encoder

    def make(**kwargs: Any) -> _CharEmbedder:
        return CharTransformerEncoder(
            num_heads=enc.num_heads,
            ffn_size=enc.ffn_size,
            max_positions=config.data.max_length,
            **kwargs,
        )

    return make


def _check_char_transformer(enc: EncoderConfig) -> None:
    from gpner.config import ConfigError

    if enc.hidden_size % enc.num_heads:
        raise ConfigError(
            f"encoder.num_heads: must divide encoder.hidden_size ({enc.hidden_size}), "
            f"got {enc.num_heads}"
        )


def _check_bilstm(enc: EncoderConfig) -> None:
    from gpner.config import ConfigError

    if enc.hidden_size % 2:
        raise ConfigError(
            f"encoder.hidden_size: must be even for kind = 'bilstm' (two directions), "
            f"got {enc.hidden_size}"
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
    if enc.bigrams:
        raise ConfigError("encoder.bigrams: only for the from-scratch encoders, not kind = 'hf'")


ENCODERS.register(
    "char_transformer",
    EncoderKind(
        _char_tokenizer,
        _char_builder(_char_transformer),
        lambda spec: _from_char_spec(CharTransformerEncoder, spec),
        _check_char_transformer,
    ),
    help="a small Transformer over characters, trained from scratch",
)
ENCODERS.register(
    "bilstm",
    EncoderKind(
        _char_tokenizer,
        _char_builder(lambda config: BiLSTMEncoder),
        lambda spec: _from_char_spec(BiLSTMEncoder, spec),
        _check_bilstm,
    ),
    help="a bidirectional LSTM over characters, trained from scratch",
)
ENCODERS.register(
    "hf",
    EncoderKind(
        _hf_tokenizer,
        lambda config, tokenizer, texts: HFEncoder.from_pretrained(config.encoder.path),
        lambda spec: HFEncoder.from_config_dict(spec["config"]),
        _check_hf,
    ),
    help="a pretrained Hugging Face encoder: a local directory, a packaged name or a hub id",
)
