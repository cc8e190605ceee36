"""gpner's metadata inside an exported .onnx file: one JSON entry, ``gpner.json``.

It holds everything prediction needs besides the graph (labels, config, tokenizer, encoder
architecture, and for an int8 file a ``quantization`` record), so the .onnx file alone is a
deployable model. :mod:`gpner.export` writes it, :mod:`gpner.quantize` carries it over to the
int8 file, :mod:`gpner.ort` reads it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gpner.model import NERModel

__all__ = ["METADATA_KEY", "model_metadata", "proto_metadata", "read_metadata", "set_metadata"]

METADATA_KEY = "gpner.json"


def model_metadata(model: NERModel) -> dict[str, Any]:
    """gpner.json for the ONNX file: the model directory's metadata with the tokenizer inline."""
    from gpner.checkpoints import ONNX_FORMAT, model_payload

    meta = model_payload(model)
    del meta["state_dict"]
    meta["format"] = ONNX_FORMAT
    return meta


def set_metadata(proto, meta: dict[str, Any]) -> None:
    """Write ``meta`` as the gpner.json entry of ``proto`` (an ``onnx.ModelProto``), replacing
    any earlier one."""
    for entry in list(proto.metadata_props):
        if entry.key == METADATA_KEY:
            proto.metadata_props.remove(entry)
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(meta, ensure_ascii=False)


def read_metadata(entries: Mapping[str, str]) -> dict[str, Any] | None:
    """The gpner.json entry of a file's metadata entries (key -> string; e.g. an onnxruntime
    session's ``custom_metadata_map``), or ``None`` when the file was not exported by gpner."""
    raw = entries.get(METADATA_KEY)
    return None if raw is None else json.loads(raw)


def proto_metadata(proto) -> dict[str, Any] | None:
    """:func:`read_metadata` of an ``onnx.ModelProto``."""
    return read_metadata({entry.key: entry.value for entry in proto.metadata_props})
