"""Prediction and evaluation with a trained model: texts in, character spans out.

Tokenization, windowing, batching and decoding are done here once for every backend. A backend
only maps ``(input_ids, attention_mask)`` (B, L) to logits (B, C, L, L) (or the band
(B, C, L, W)): the torch model itself, or :class:`gpner.ort.OnnxModel` (onnxruntime), which
also carries the ``tokenizer``, ``labels`` and ``config`` read here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor

from gpner import threads
from gpner.data.batching import Feature, batches_by_length, collate, encode_examples
from gpner.data.spans import Example, Span
from gpner.decoding import decode, spans_from_features
from gpner.metrics import SpanMetrics
from gpner.model import NERModel

__all__ = ["predict", "predict_examples", "evaluate", "model_inputs"]

LogitsFn = Callable[[Tensor, Tensor], Tensor]  # (input_ids, attention_mask) (B, L) -> logits


def _features(model: NERModel, texts: Sequence[str]) -> list[Feature]:
    """The model's windows of ``texts``, as in training."""
    unlabelled = [Example(text, []) for text in texts]
    features, _ = encode_examples(
        unlabelled,
        model.tokenizer,
        model.label2id,
        model.config.data.max_length,
        model.config.data.stride,
    )
    return features


def _batches(model: NERModel, features: Sequence[Feature], batch_size: int):
    """``(indices, padded batch)`` pairs, batched by length."""
    # Features without tokens (an empty or whitespace-only text under a char tokenizer) are left
    # out: they have no spans, and no backend need handle a (B, 0) input.
    tokens = [k for k, f in enumerate(features) if f.input_ids]
    for part in batches_by_length([len(features[k].input_ids) for k in tokens], batch_size):
        index = [tokens[k] for k in part]
        threads.poll()  # inside gpner.threads.cores_in_use: follow the free cores
        yield index, collate([features[k] for k in index], model.tokenizer.pad_id)


def model_inputs(
    model: NERModel, texts: Sequence[str | Example], batch_size: int = 64
) -> list[tuple[Tensor, Tensor]]:
    """The ``(input_ids, attention_mask)`` (B, L) batches that :func:`predict` feeds the model
    for ``texts`` (strings or examples): tokenized, windowed and batched by length alike. For
    measuring a backend on real inputs, e.g. calibrating :func:`gpner.quantize.quantize_onnx`."""
    plain = [t.text if isinstance(t, Example) else t for t in texts]
    return [
        (batch.input_ids, batch.attention_mask)
        for _, batch in _batches(model, _features(model, plain), batch_size)
    ]


@contextlib.contextmanager
def _scorer(model: NERModel) -> Iterator[LogitsFn]:
    """The model as a logits function: a torch model in eval mode without autograd, on its own
    device (its training mode is restored afterwards); any other backend is already one."""
    if not isinstance(model, torch.nn.Module):
        yield model
        return
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            yield lambda ids, mask: model(ids.to(device), mask.to(device))
    finally:
        model.train(was_training)


def predict_examples(
    model: NERModel,
    examples: Sequence[Example],
    batch_size: int = 64,
    threshold: float | None = None,
    flat: bool | None = None,
) -> list[list[tuple[Span, float]]]:
    """Predicted ``(Span, score)`` lists, one per example, in example order.

    Long texts are windowed as in training and stitched back to character offsets.
    ``threshold`` and ``flat`` default to the model's training config. ``model`` is a
    :class:`~gpner.model.NERModel` or another backend with the same ``tokenizer``, ``labels``,
    ``config`` and call (e.g. :class:`gpner.ort.OnnxModel`).
    """
    train_cfg = model.config.train
    threshold = train_cfg.threshold if threshold is None else threshold
    flat = train_cfg.flat if flat is None else flat
    features = _features(model, [ex.text for ex in examples])
    width = model.config.head.max_width  # band logits (B, C, L, W) when set
    decoded: list[list] = [[] for _ in features]
    with _scorer(model) as score:
        for index, batch in _batches(model, features, batch_size):
            logits = score(batch.input_ids, batch.attention_mask)
            items = decode(logits, threshold, flat, batch.attention_mask, max_width=width)
            for k, spans in zip(index, items):
                decoded[k] = spans
    by_example = spans_from_features(features, decoded, model.labels, flat=flat)
    return [by_example.get(i, []) for i in range(len(examples))]


def predict(
    model: NERModel, texts: Sequence[str], batch_size: int = 64, **kwargs
) -> list[list[tuple[Span, float]]]:
    """Predicted ``(Span, score)`` lists for raw texts, one list per text.

    ``texts`` is a sequence of strings; a bare string is refused (``TypeError``) rather than
    predicted character by character.
    """
    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings, not one string; for one text: [text]")
    return predict_examples(model, [Example(t, []) for t in texts], batch_size, **kwargs)


def evaluate(model: NERModel, examples: Sequence[Example], batch_size: int = 64, **kwargs) -> dict:
    """Entity-level micro/macro/per-type scores against the examples' gold spans.

    Gold spans that the tokenizer cannot represent still count as gold (as misses), so the score
    is the one on the original annotation.
    """
    predictions = predict_examples(model, examples, batch_size, **kwargs)
    metrics = SpanMetrics()
    metrics.update(
        [[span for span, _ in spans] for spans in predictions], [ex.spans for ex in examples]
    )
    return metrics.compute()
