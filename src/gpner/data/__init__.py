"""Data in: spans, readers, tokenizers, alignment and batching. Knows nothing of training."""

from gpner.data.alignment import align_spans, token_span_to_chars
from gpner.data.batching import (
    Batch,
    EncodeStats,
    Feature,
    LengthBucketSampler,
    collate,
    encode_examples,
)
from gpner.data.readers import (
    READERS,
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
from gpner.data.tokenizers import (
    CharTokenizer,
    Encoding,
    HFTokenizer,
    Tokenizer,
    tokenizer_from_state,
)

__all__ = [
    "Batch",
    "CharTokenizer",
    "EncodeStats",
    "Encoding",
    "Feature",
    "HFTokenizer",
    "LengthBucketSampler",
    "Tokenizer",
    "align_spans",
    "collate",
    "encode_examples",
    "token_span_to_chars",
    "tokenizer_from_state",
    "READERS",
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
