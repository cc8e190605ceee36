"""Data in: spans, readers, tokenizers, alignment and batching. Knows nothing of training."""

from gpner.data.readers import (
    FORMATS,
    SCHEMES,
    ReadError,
    ReadWarning,
    convert,
    detect_format,
    detect_scheme,
    read,
    spans_to_tags,
    tags_to_spans,
    write_jsonl,
)
from gpner.data.spans import Example, Span

__all__ = [
    "FORMATS",
    "SCHEMES",
    "Example",
    "ReadError",
    "ReadWarning",
    "Span",
    "convert",
    "detect_format",
    "detect_scheme",
    "read",
    "spans_to_tags",
    "tags_to_spans",
    "write_jsonl",
]
