"""Helpers the report generators share: reading result JSONs, Markdown tables and writing the
generated document. Pure formatting; the numbers come from the JSONs the generators read."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def read_json(path: Path) -> Any:
    """The JSON document at ``path`` (UTF-8)."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def read_json_if(path: Path) -> Any | None:
    """The JSON document at ``path``, or None when there is no such file."""
    return read_json(path) if Path(path).exists() else None


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """A Markdown table, one line each: the header, ``|---|`` separators, the rows."""
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out


def write_lines(path: Path, lines: Sequence[str]) -> None:
    """Write a generated document: ``lines`` joined by newlines, UTF-8; say where."""
    Path(path).write_text("\n".join(lines), encoding="utf-8")
    print(f"wrote {path}")
