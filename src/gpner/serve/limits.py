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

    def as_dict(self) -> dict:
        return asdict(self)
