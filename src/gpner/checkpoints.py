"""Saved models and resume states, in formats whose loading never runs code from the file.

A **model directory** (what :func:`save` writes and :func:`load` reads)::

    DIR/model.safetensors   the weights (safetensors: raw tensors and a JSON header)
    DIR/gpner.json          format, versions, config, labels, tokenizer state, encoder spec
    DIR/tokenizer.json      the Hugging Face tokenizer (HF encoders only; the char vocabulary
                            lives in gpner.json)

It rebuilds the model alone: no original encoder directory, no network. Nothing in it is a
pickle, so loading a directory someone shared cannot execute code.

A **resume state** (``output_dir/last.pt``, :func:`save_state` / :func:`load_state`) is a torch
file of plain tensors and containers (optimizer, scheduler, RNG states, history, the model as
above), loaded with ``torch.load(weights_only=True)``: PyTorch's restricted unpickler, which
builds only tensors and plain containers and refuses anything else.

Checkpoints of gpner <= 0.1 (``best.pt``/``last.pt``: full pickles) are refused by both loaders;
:func:`convert_checkpoint` turns them into these formats, and unpickles only when told to trust
the file.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpner._version import __version__
from gpner.atomic import atomic_save, make_temporary_dir
from gpner.config import ConfigError, config_to_dict

if TYPE_CHECKING:
    import torch

    from gpner.model import NERModel

# torch and the model are imported inside the functions: the CLI imports CheckpointError from
# here for every command, and most commands never touch a checkpoint.

__all__ = [
    "CheckpointError",
    "save",
    "load",
    "read_metadata",
    "check_format",
    "model_payload",
    "model_from_payload",
    "save_state",
    "load_state",
    "convert_checkpoint",
    "WEIGHTS_FILE",
    "METADATA_FILE",
    "TOKENIZER_FILE",
]

WEIGHTS_FILE = "model.safetensors"
METADATA_FILE = "gpner.json"
TOKENIZER_FILE = "tokenizer.json"
MODEL_FORMAT = "gpner-model"
STATE_FORMAT = "gpner-train-state"
ONNX_FORMAT = "gpner-onnx"  # the metadata of an ONNX export (gpner.export, gpner.ort)
FORMAT_VERSION = 1
_OWN_FILES = {WEIGHTS_FILE, METADATA_FILE, TOKENIZER_FILE}


class CheckpointError(ValueError):
    """A file or directory that is not a loadable gpner model or resume state."""


def _refusal(error: BaseException) -> str:
    """The reason in torch's weights_only refusal (the global it would not build), in one line."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for line in lines:
        if "WeightsUnpickler error" in line:
            return line.split(" Please use")[0]  # not the advice to allow-list the global
    return f"{type(error).__name__}: {lines[0] if lines else ''}"


# ----------------------------------------------------------------------------- model metadata


def _metadata(model: NERModel) -> tuple[dict[str, Any], str | None]:
    """(gpner.json content, the HF tokenizer JSON to write beside it or None)."""
    tokenizer = dict(model.tokenizer.state_dict())
    tokenizer_json = tokenizer.pop("tokenizer_json", None)
    if tokenizer_json is not None:
        tokenizer["file"] = TOKENIZER_FILE
    meta = {
        "format": MODEL_FORMAT,
        "format_version": FORMAT_VERSION,
        "gpner_version": __version__,
        "labels": list(model.labels),
        "config": config_to_dict(model.config),
        "tokenizer": tokenizer,
        "encoder": model.encoder.spec(),
    }
    return meta, tokenizer_json


def check_format(meta: Any, where: str, expected: str) -> None:
    """CheckpointError unless ``meta`` is gpner metadata of the ``expected`` format, of a
    readable version, with well-typed labels, config, tokenizer and encoder."""
    if not isinstance(meta, dict) or meta.get("format") != expected:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise CheckpointError(f"{where}: not a {expected} file (format {found!r})")
    version = meta.get("format_version")
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        raise CheckpointError(
            f"{where}: format_version {version!r} is not readable by gpner {__version__} "
            f"(reads up to {FORMAT_VERSION}); upgrade gpner"
        )
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise CheckpointError(f"{where}: format_version {version!r} is not a format version")
    for key in ("labels", "config", "tokenizer", "encoder"):
        if key not in meta:
            raise CheckpointError(f"{where}: missing field {key!r}")
    for key in ("config", "tokenizer", "encoder"):
        if not isinstance(meta[key], dict):
            raise CheckpointError(f"{where}: {key} must be an object, got {meta[key]!r:.80}")
    labels = meta["labels"]
    if (
        not isinstance(labels, list)
        or not labels
        or not all(isinstance(label, str) and label for label in labels)
        or len(set(labels)) != len(labels)
    ):
        raise CheckpointError(
            f"{where}: labels must be a list of distinct non-empty strings, got {labels!r:.80}"
        )


def read_metadata(directory: str | Path) -> dict[str, Any]:
    """``gpner.json`` of a model directory, checked, with the tokenizer state made complete
    (``tokenizer_json`` read from its file), so :func:`gpner.model.model_from_parts` can use it."""
    directory = Path(directory)
    _refuse_pickle(directory)
    meta_path = directory / METADATA_FILE
    if not meta_path.is_file():
        raise CheckpointError(
            f"{directory}: no {METADATA_FILE}; a gpner model directory holds {METADATA_FILE} and "
            f"{WEIGHTS_FILE} (written by gpner.save or gpner train)"
        )
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{meta_path}: not valid JSON ({error})") from None
    check_format(meta, str(meta_path), MODEL_FORMAT)
    tokenizer = dict(meta["tokenizer"])
    if "file" in tokenizer:
        name = tokenizer.pop("file")
        if Path(name).name != name:  # a file beside gpner.json, never a path elsewhere
            raise CheckpointError(f"{meta_path}: tokenizer.file must be a file name, got {name!r}")
        try:
            tokenizer["tokenizer_json"] = (directory / name).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise CheckpointError(
                f"{directory / name}: cannot read the tokenizer ({error})"
            ) from None
    meta["tokenizer"] = tokenizer
    return meta


def _refuse_pickle(path: Path) -> None:
    if path.is_file() and path.suffix == ".onnx":
        raise CheckpointError(
            f"{path} is an ONNX export: load it with backend='onnxruntime' (--backend onnxruntime)"
        )
    if path.is_file() and path.name in _OWN_FILES:
        raise CheckpointError(
            f"{path} is one file of a gpner model directory; pass the directory itself: "
            f"{path.parent}"
        )
    if path.is_file():
        raise CheckpointError(
            f"{path} is a file, not a gpner model directory. Checkpoints of gpner <= 0.1 "
            "(best.pt) are pickles, which can run code when loaded, so gpner does not load them; "
            f"convert one you trust with: gpner convert-checkpoint {path} NEW_DIR"
        )
    if not path.exists():
        raise FileNotFoundError(f"model directory {path} does not exist")


# ------------------------------------------------------------------------ model directories


def save(model: NERModel, directory: str | Path) -> Path:
    """Write ``model`` as a self-contained model directory; returns its path.

    The directory is written beside its final place and swapped in, so a reader (or a run killed
    mid-write) sees the old model or the new one, never a mix. An existing ``directory`` must be
    a gpner model directory (or empty): files of other kinds are never deleted.
    """
    from safetensors.torch import save_model

    directory = Path(directory)
    if directory.is_file():
        raise CheckpointError(f"{directory} is a file; gpner.save writes a directory")
    if directory.is_dir():
        foreign = sorted(p.name for p in directory.iterdir() if p.name not in _OWN_FILES)
        if foreign:
            raise CheckpointError(
                f"{directory} holds files that are not part of a gpner model ({foreign[:3]}); "
                "give an empty or new directory"
            )
    directory.parent.mkdir(parents=True, exist_ok=True)
    meta, tokenizer_json = _metadata(model)
    tmp = make_temporary_dir(directory)  # modes from the user's umask, as the files below
    try:
        (tmp / METADATA_FILE).write_text(
            json.dumps(meta, indent=1, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        if tokenizer_json is not None:
            (tmp / TOKENIZER_FILE).write_text(tokenizer_json, encoding="utf-8")
        save_model(model, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        # safetensors writes 0600; give the weights the mode gpner.json got from the umask
        os.chmod(tmp / WEIGHTS_FILE, (tmp / METADATA_FILE).stat().st_mode & 0o777)
        for path in tmp.iterdir():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
        _swap_in(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def _swap_in(new: Path, directory: Path) -> None:
    """Rename ``new`` to ``directory``, replacing an old one (moved aside, then deleted)."""
    if not directory.exists():
        os.replace(new, directory)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{directory.name}.old.", dir=directory.parent))
    os.rmdir(old)
    os.replace(directory, old)
    os.replace(new, directory)
    shutil.rmtree(old, ignore_errors=True)


def load(directory: str | Path, map_location: str | torch.device = "cpu") -> NERModel:
    """Rebuild a model from its directory alone, in eval mode. Never unpickles anything."""
    from safetensors import SafetensorError
    from safetensors.torch import load_model

    directory = Path(directory)
    meta = read_metadata(directory)
    model = _architecture(directory, meta)
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{directory}: no {WEIGHTS_FILE}")
    try:
        missing, unexpected = load_model(model, weights, strict=False, device=str(map_location))
    except (SafetensorError, OSError) as error:
        raise CheckpointError(
            f"{weights}: not a readable safetensors file ({_first_line(error)})"
        ) from None
    except Exception as error:  # shapes or dtypes differ from what gpner.json describes
        raise CheckpointError(
            f"{weights} does not match the model described by {METADATA_FILE}: "
            f"{str(error).strip().splitlines()[-1].strip()[:300] if str(error).strip() else ''}"
        ) from None
    if missing or unexpected:  # safetensors returns them as sets
        raise CheckpointError(
            f"{weights} does not match the model described by {METADATA_FILE}: "
            f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
        )
    return model.to(map_location).eval()


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0][:300] if lines else ''}"


def _architecture(directory: Path, meta: dict[str, Any]) -> NERModel:
    """The model ``gpner.json`` describes (random weights); whatever in it cannot be built is a
    CheckpointError naming the file at fault (``tokenizer.json`` for the HF tokenizer)."""
    from gpner.data.tokenizers import tokenizer_from_state
    from gpner.model import model_from_parts

    meta_path = directory / METADATA_FILE
    tokenizer_file = directory / TOKENIZER_FILE if "tokenizer_json" in meta["tokenizer"] else None
    try:
        tokenizer = tokenizer_from_state(meta["tokenizer"])
    except Exception as error:  # anything a corrupt file can make it raise
        where = tokenizer_file or f"{meta_path} (tokenizer)"
        raise CheckpointError(f"{where}: not a readable tokenizer ({_first_line(error)})") from None
    try:
        return model_from_parts(meta["config"], meta["labels"], tokenizer, meta["encoder"])
    except ConfigError as error:  # a saved config is checked as strictly as a TOML file
        raise ConfigError(f"{meta_path}: {error}") from None
    except Exception as error:  # an encoder spec no encoder can be built from
        raise CheckpointError(
            f"{meta_path}: describes no model this gpner can build ({_first_line(error)})"
        ) from None


# ------------------------------------------------------------------------------ resume states


def model_payload(model: NERModel) -> dict[str, Any]:
    """The model as plain containers and tensors, for a resume state."""
    meta, tokenizer_json = _metadata(model)
    if tokenizer_json is not None:
        meta["tokenizer"] = {**meta["tokenizer"], "tokenizer_json": tokenizer_json}
        del meta["tokenizer"]["file"]
    meta["format"] = STATE_FORMAT
    return {**meta, "state_dict": model.state_dict()}


def model_from_payload(payload: dict[str, Any]) -> NERModel:
    """The model of a resume state (or of an old pickle checkpoint's payload)."""
    from gpner.model import model_from_parts

    spec = payload.get("encoder", payload.get("encoder_spec"))
    model = model_from_parts(payload["config"], payload["labels"], payload["tokenizer"], spec)
    model.load_state_dict(payload["state_dict"])
    return model


def save_state(path: str | Path, state: dict[str, Any]) -> None:
    """Write a resume state atomically. ``state`` (from :func:`model_payload` plus the trainer's
    entries) must hold only tensors and plain containers, or :func:`load_state` refuses it."""
    path = Path(path)
    if state.get("format") != STATE_FORMAT:
        raise ValueError("a resume state starts from model_payload(model)")
    atomic_save(state, path)


def load_state(path: str | Path) -> dict[str, Any]:
    """A resume state, read with ``torch.load(weights_only=True)`` (no code from the file runs)."""
    import torch

    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as error:
        raise CheckpointError(
            f"{path}: not a plain-tensor resume state ({_refusal(error)}). "
            "States written by gpner <= 0.1 "
            "are full pickles that can run code; gpner does not load them. If you trust this one: "
            f"gpner convert-checkpoint {path} {path} --trust-pickle"
        ) from None
    check_format(state, str(path), STATE_FORMAT)
    return state


# ------------------------------------------------------------------------------- conversion


def _plain(obj: Any) -> Any:
    """Numpy arrays and scalars (e.g. the numpy RNG state) -> tensors and Python numbers."""
    import numpy as np
    import torch

    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj.astype(np.int64) if obj.dtype == np.uint32 else obj.copy())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v) for v in obj)
    return obj


def convert_checkpoint(source: str | Path, target: str | Path, trust: bool = False) -> str:
    """Convert a gpner <= 0.1 pickle checkpoint; returns ``"model"`` or ``"state"``.

    A model checkpoint (``best.pt``) becomes a model directory at ``target``; a resume state
    (``last.pt``, with optimizer and RNG states) becomes a new-format resume state file. The file
    is first read with ``torch.load(weights_only=True)``, which runs no code; only when that fails
    and ``trust`` is set is it fully unpickled, which runs whatever code the file embeds.
    """
    import torch

    source = Path(source)
    try:
        payload = torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if not trust:
            raise CheckpointError(
                f"{source}: a restricted load (no code runs) was refused ({_refusal(error)}). "
                "Reading it needs a full unpickle, which runs any "
                "code the file embeds; if you trust where it came from, pass --trust-pickle"
            ) from None
        payload = torch.load(source, map_location="cpu", weights_only=False)
    if not isinstance(payload, dict) or "state_dict" not in payload or "config" not in payload:
        raise CheckpointError(f"{source}: not a gpner checkpoint")
    payload = _plain(payload)
    model = model_from_payload(payload)
    if "optimizer" not in payload:
        save(model, target)
        return "model"
    state = model_payload(model)
    state.update({k: v for k, v in payload.items() if k not in state and k != "encoder_spec"})
    state["format"], state["format_version"] = STATE_FORMAT, FORMAT_VERSION
    save_state(target, state)
    return "state"
