"""Files written so that a reader sees the old content or the new one, never a part.

Everything gpner and its benchmarks write in place (resume states, result JSONs, annotation
files) goes through :func:`atomic_write`: a temporary file in the same directory, flushed to
disk, then renamed over the target; on any error the temporary is removed and the old file
stays as it was.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_save", "atomic_write", "atomic_write_json", "make_temporary_dir"]


def _create(path: Path) -> tuple[int, str]:
    """A new temporary file beside ``path``, opened for writing: ``(fd, name)``. Created with
    mode 0666 less the user's umask, as a plain ``open`` would (``tempfile.mkstemp`` makes
    0600 files, which the rename would carry to the target)."""
    for _ in range(100):
        tmp = path.parent / f"{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), str(tmp)
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name beside {path}")


def make_temporary_dir(path: Path) -> Path:
    """A new empty directory beside ``path`` (hidden), mode 0777 less the user's umask, as
    ``mkdir`` makes it (``tempfile.mkdtemp`` makes 0700 ones)."""
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}"
        try:
            tmp.mkdir()
            return tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name beside {path}")


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "w", **open_kwargs: Any) -> Iterator[IO]:
    """Open a temporary file next to ``path`` for writing; on a clean exit it replaces ``path``.

    ``mode`` is "w" or "wb"; ``open_kwargs`` go to :func:`open` (e.g. ``encoding``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create(path)
    try:
        with os.fdopen(fd, mode, **open_kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save(obj)`` to ``path`` atomically."""
    import torch

    with atomic_write(path, "wb") as handle:
        torch.save(obj, handle)


def atomic_write_json(path: str | os.PathLike[str], payload: Any, **dump_kwargs: Any) -> None:
    """``payload`` as JSON (indent 1, UTF-8 unescaped unless ``dump_kwargs`` say otherwise),
    with a final newline, written atomically."""
    options = {"indent": 1, "ensure_ascii": False, **dump_kwargs}
    with atomic_write(path, "w", encoding="utf-8") as handle:
        json.dump(payload, handle, **options)
        handle.write("\n")
