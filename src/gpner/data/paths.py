"""Where the shared data sets live. Resolved on call, never at import."""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "GPNER_DATA"


def data_root() -> Path:
    """The data directory: ``$GPNER_DATA`` if set, else ``../shared/data`` beside the checkout.

    The checkout is found from this file's location (``src/gpner/data/paths.py``) first and from
    the working directory second, so both an editable install and a run from the repo root work.
    """
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env)
    candidates = [
        Path(__file__).resolve().parents[3].parent / "shared" / "data",
        Path.cwd().parent / "shared" / "data",
    ]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    return candidates[0]


def resolve(path: str | os.PathLike[str]) -> Path:
    """``path`` as typed when it exists (or is absolute), else under ``data_root()`` when it
    exists there, else as typed: a missing file is reported where the user typed it (see
    :func:`not_found`)."""
    p = Path(path)
    if p.is_absolute() or p.exists():
        return p
    under = data_root() / p
    return under if under.exists() else p


def not_found(path: str | os.PathLike[str]) -> str:
    """A missing ``path`` for an error message, with every place :func:`resolve` looked: as
    typed, then (a relative path) under the data root."""
    p = Path(path)
    if p.is_absolute():
        return str(p)
    return f"{p} (looked for as typed, and under the data root as {data_root() / p})"
