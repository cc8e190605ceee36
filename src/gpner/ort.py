"""The onnxruntime backend: an exported .onnx file as a prediction model.

:class:`OnnxModel` carries the ``tokenizer``, ``labels`` and ``config`` read from the file's
metadata and maps ``(input_ids, attention_mask)`` to logits with an onnxruntime session; the
tokenization, windowing, batching and decoding of :mod:`gpner.inference` are shared with the
torch model. Needs ``pip install gpner[onnx]``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from gpner.config import Config, ConfigError, config_from_dict
from gpner.data.tokenizers import Tokenizer, tokenizer_from_state
from gpner.onnx_metadata import METADATA_KEY

__all__ = ["OnnxModel", "session_options", "DISABLED_OPTIMIZERS"]

ONNX_FILE = "model.onnx"  # the file looked for when a directory is given

# onnxruntime's session-time graph rewrites that gpner turns off. SkipLayerNormFusion turns a
# residual Add + LayerNormalization into one SkipLayerNormalization, whose CPU kernel is slower
# than the two operators it replaces at prediction shapes (benchmarks/speed/bench_predict.py
# times both; the numbers are in benchmarks/speed/PREDICT.md).
DISABLED_OPTIMIZERS = ("SkipLayerNormFusion",)


def session_options(threads: int | None = None, spinning: bool | None = None):
    """The ``onnxruntime.SessionOptions`` of :class:`OnnxModel` (see there)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Every batch has its own (B, L): a memory plan kept for one shape is replanned for the
    # next.
    options.enable_mem_pattern = False
    if spinning is None:
        spinning = os.environ.get("OMP_WAIT_POLICY", "").upper() == "ACTIVE"
    options.add_session_config_entry("session.intra_op.allow_spinning", str(int(spinning)))
    return options


def _metadata(path: Path, props: dict[str, str]) -> dict[str, Any]:
    """The ``gpner.json`` metadata of an ONNX file, checked the way a model directory's is (its
    format, a readable version, the fields and their types)."""
    from gpner.checkpoints import ONNX_FORMAT, CheckpointError, check_format

    raw = props.get(METADATA_KEY)
    if raw is None:
        raise CheckpointError(f"{path}: no {METADATA_KEY} metadata; not exported by gpner")
    try:
        meta = json.loads(raw)
    except (json.JSONDecodeError, RecursionError) as error:
        raise CheckpointError(
            f"{path}: its {METADATA_KEY} metadata is not JSON ({error})"
        ) from None
    check_format(meta, f"{path} ({METADATA_KEY} metadata)", ONNX_FORMAT)
    return meta


class OnnxModel:
    """A model exported by :func:`gpner.export.export_onnx`, run by onnxruntime on the CPU.

    ``threads``: onnxruntime's intra-op threads (default: torch's thread count, so the two
    backends compare on equal terms). ``spinning``: whether idle intra-op threads spin-wait for
    the next op (lower latency on an otherwise idle CPU) or sleep (kinder to a shared one);
    default: spin only under ``OMP_WAIT_POLICY=ACTIVE``, the setting that makes torch's OpenMP
    threads spin, so that both backends wait alike.
    """

    def __init__(self, path: str | Path, threads: int | None = None, spinning: bool | None = None):
        import onnxruntime as ort

        from gpner.checkpoints import CheckpointError

        path = Path(path)
        if path.is_dir():
            path = path / ONNX_FILE
        if not path.is_file():
            raise FileNotFoundError(
                f"no ONNX model {path}; write one with: gpner export MODEL_DIR {path}"
            )
        options = session_options(threads, spinning)
        try:
            self.session = ort.InferenceSession(
                str(path),
                options,
                providers=["CPUExecutionProvider"],
                disabled_optimizers=list(DISABLED_OPTIMIZERS),
            )
        except Exception as error:  # onnxruntime's own error types (invalid protobuf, ...)
            raise CheckpointError(
                f"{path}: not a readable ONNX model ({str(error).splitlines()[0][:200]})"
            ) from None
        meta = _metadata(path, self.session.get_modelmeta().custom_metadata_map)
        self.path = path
        self.labels: list[str] = list(meta["labels"])
        try:
            self.config: Config = config_from_dict(meta["config"])
        except ConfigError as error:  # checked as strictly as a model directory's config
            raise ConfigError(f"{path} ({METADATA_KEY} metadata): {error}") from None
        try:
            self.tokenizer: Tokenizer = tokenizer_from_state(meta["tokenizer"])
        except Exception as error:  # anything a foreign or corrupt tokenizer state raises
            raise CheckpointError(
                f"{path} ({METADATA_KEY} metadata): not a readable tokenizer "
                f"({type(error).__name__}: {str(error)[:200]})"
            ) from None
        self.gpner_version = meta.get("gpner_version")

    @property
    def label2id(self) -> dict[str, int]:
        return {label: i for i, label in enumerate(self.labels)}

    def __call__(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """(B, L) ids and mask -> logits (B, C, L, L) or (B, C, L, W), float32."""
        feed = {
            "input_ids": input_ids.cpu().numpy().astype("int64", copy=False),
            "attention_mask": attention_mask.cpu().numpy().astype("int64"),
        }
        (logits,) = self.session.run(None, feed)
        return torch.from_numpy(logits)

    def __repr__(self) -> str:
        return f"OnnxModel({str(self.path)!r}, labels={self.labels})"
