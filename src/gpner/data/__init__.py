"""Data in: spans, readers, tokenizers, alignment and batching. Knows nothing of training."""

from gpner.data.spans import Example, Span

__all__ = ["Example", "Span"]
