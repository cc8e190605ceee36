"""gpner: span-based named-entity recognition with GlobalPointer, R-Drop and VAT."""

from __future__ import annotations

__version__ = "0.1.0"


def load(path, map_location="cpu"):
    """Rebuild a trained model from a checkpoint file alone (see :func:`gpner.model.load`)."""
    from gpner.model import load as _load

    return _load(path, map_location)


def predict(model, texts, **kwargs):
    """Predicted ``(Span, score)`` lists for raw texts (see :func:`gpner.inference.predict`)."""
    from gpner.inference import predict as _predict

    return _predict(model, texts, **kwargs)
