"""Request limits of the server (no web dependency, so the CLI can show their defaults)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

__all__ = ["Limits"]


@dataclass(frozen=True)
class Limits:
    """Request limits; each one is named in the error that enforces it."""

    max_texts: int = 128  # texts per request
    max_chars: int = 10_000  # characters (code points) per text
    max_request_bytes: int = 1 << 20  # request body
    # The lowest decoding threshold a request may ask for (a logit; sigmoid(-10) is about 5e-5):
    # below it nearly every cell of a long text would be a span.
    min_threshold: float = -10.0
    max_spans: int = 1000  # spans predicted per text; a text with more gets a 413, not an answer

    def as_dict(self) -> dict:
        return asdict(self)
