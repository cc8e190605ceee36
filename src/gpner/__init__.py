"""gpner: span-based named-entity recognition with GlobalPointer, R-Drop and VAT."""

from __future__ import annotations

from gpner._version import __version__

__all__ = ["__version__", "load", "predict", "save"]


def load(path, map_location="cpu", backend="torch"):
    """Rebuild a trained model from its directory alone (see :func:`gpner.checkpoints.load`).

    Never unpickles anything: weights are safetensors, the rest is JSON. ``backend=
    "onnxruntime"`` loads an exported .onnx file instead (see :mod:`gpner.ort`); both kinds go
    to :func:`predict` and :func:`gpner.inference.evaluate` alike.
    """
    if backend == "onnxruntime":
        from gpner.ort import OnnxModel

        return OnnxModel(path)
    if backend != "torch":
        raise ValueError(f"backend must be 'torch' or 'onnxruntime', got {backend!r}")
    from gpner.checkpoints import load as _load

    return _load(path, map_location)


def save(model, directory):
    """Write ``model`` as a self-contained directory (see :func:`gpner.checkpoints.save`)."""
    from gpner.checkpoints import save as _save

    return _save(model, directory)


def predict(model, texts, **kwargs):
    """Predicted ``(Span, score)`` lists for raw texts (see :func:`gpner.inference.predict`)."""
    from gpner.inference import predict as _predict

    return _predict(model, texts, **kwargs)
