"""ONNX export of a trained model: encoder + head, token ids to span logits.

The graph takes ``input_ids`` and ``attention_mask`` (B, L) int64 and returns ``logits``
(B, C, L, L), or (B, C, L, W) for a head with ``max_width``, with dynamic B and L; invalid cells
hold float32's lowest finite value, as in the torch model. Everything else prediction needs
(labels, config, tokenizer) is stored in the file's metadata as ``gpner.json``, so the .onnx file
alone is a deployable model (:class:`gpner.ort.OnnxModel`). Needs ``pip install gpner[onnx]``.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from gpner import functional as F
from gpner import ort
from gpner.model import NERModel

__all__ = ["export_onnx", "fuse_onnx", "band_logits", "METADATA_KEY"]

METADATA_KEY = ort.METADATA_KEY  # one name for the entry, written here and read there
INPUT_NAMES = ("input_ids", "attention_mask")
OUTPUT_NAME = "logits"
OPSET = 18


def band_logits(f: F.SpanFactors) -> Tensor:
    """The band logits (B, C, L, W) of ``f``, as plain tensor operations that export can trace.

    Same values as :func:`gpner.functional.factors_to_logits`, whose fast path loops over blocks
    in Python (the loop depends on L, so a traced graph would fix L). Here the W end positions of
    every start are gathered at once: O(B * C * L * W * D) memory, fine for prediction.
    """
    width = f.max_width
    k = torch.nn.functional.pad(f.k, (0, 0, 0, width - 1))  # (B, C or 1, L + W - 1, D)
    ends = k.unfold(2, width, 1)  # (B, C or 1, L, D, W): ends[..., i, :, w] = k[..., i + w, :]
    logits = (f.q.unsqueeze(-2) @ ends).squeeze(-2)  # (B, C or 1, L, W)
    if f.start_bias is not None:
        end = torch.nn.functional.pad(f.end_bias, (0, width - 1)).unfold(-1, width, 1)
        logits = logits + f.start_bias[..., :, None] + end  # (B, C, L, W)
    else:
        logits = logits.expand(-1, f.num_types, -1, -1)
    mask = f.attention_mask
    if mask is None:
        mask = torch.ones(logits.shape[0], logits.shape[2], dtype=torch.bool, device=k.device)
    valid = F.band_mask(mask, width)  # (B, 1, L, W)
    return logits.masked_fill(~valid, torch.finfo(logits.dtype).min)


class LogitsGraph(nn.Module):
    """What is exported: (input_ids, attention_mask) int64 (B, L) -> logits, as float32."""

    def __init__(self, model: NERModel):
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        factors = self.model.span_factors(input_ids, attention_mask.bool())
        if factors.max_width is None:
            return F.factors_to_logits(factors)
        return band_logits(factors)


def model_metadata(model: NERModel) -> dict[str, Any]:
    """gpner.json for the ONNX file: the model directory's metadata with the tokenizer inline."""
    from gpner.checkpoints import ONNX_FORMAT, model_payload

    meta = model_payload(model)
    del meta["state_dict"]
    meta["format"] = ONNX_FORMAT
    return meta


def export_onnx(
    model: NERModel,
    path: str | Path,
    quantize: str | None = None,
    fuse: bool | None = None,
    **quantize_options: Any,
) -> Path:
    """Write ``model`` as an ONNX graph to ``path``, checked with ``onnx.checker``.

    ``quantize="int8"`` also applies :func:`gpner.quantize.quantize_onnx`, with
    ``quantize_options`` (e.g. ``calibration`` texts). ``fuse`` applies :func:`fuse_onnx`
    (the file then runs on onnxruntime only); default: only for int8, whose file is for
    onnxruntime anyway, so that a plain fp32 export stays standard ONNX.
    """
    import onnx

    if quantize not in (None, "int8"):
        raise ValueError(f"quantize must be None or 'int8', got {quantize!r}")
    if quantize_options and quantize is None:
        raise ValueError(f"{sorted(quantize_options)} apply to quantize='int8' only")
    if fuse is None:
        fuse = quantize is not None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if any(p.dtype != torch.float32 for p in model.parameters()):
        model = copy.deepcopy(model).float()
    was_training = model.training
    graph = LogitsGraph(model.eval())
    # A sample batch of 2 x min(8, L_max) tokens, the second one padded; both axes stay dynamic,
    # L up to the most tokens the encoder takes (its position table), if it has such a limit.
    max_length = model.encoder.max_length
    size = min(8, max_length or 8)
    example = torch.arange(2, 2 + size).repeat(2, 1) % model.tokenizer.vocab_size
    mask = torch.ones_like(example)
    mask[1, size - 2 :] = 0
    batch = torch.export.Dim("batch")
    length = (
        torch.export.Dim("length", max=max_length) if max_length else torch.export.Dim("length")
    )
    axes = {0: batch, 1: length}
    try:
        program = _export(graph, example, mask, axes)
    finally:
        model.train(was_training)
    proto = program.model_proto
    _set_metadata(proto, model_metadata(model))
    onnx.checker.check_model(proto, full_check=True)
    if quantize is None:
        onnx.save_model(fuse_onnx(proto) if fuse else proto, str(path))
        return path
    from gpner.quantize import quantize_onnx  # (it builds on this module)

    with tempfile.TemporaryDirectory() as tmp:
        onnx.save_model(proto, str(Path(tmp) / "fp32.onnx"))
        return quantize_onnx(Path(tmp) / "fp32.onnx", path, fuse=fuse, **quantize_options)


def _export(graph: nn.Module, example: Tensor, mask: Tensor, axes: dict):
    """torch.export (dynamo) to ONNX: it keeps B and L symbolic where the old tracer fixed them
    (e.g. in ``nn.MultiheadAttention``'s reshapes). Both inputs share the same two axes. gpner's
    own ops (:func:`gpner.encoders.bilstm_layer`) are written by their translations here."""
    from gpner.encoders import bilstm_layer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's notes on its own internals
        return torch.onnx.export(
            graph,
            (example, mask),
            dynamo=True,
            input_names=list(INPUT_NAMES),
            output_names=[OUTPUT_NAME],
            dynamic_shapes=(axes, axes),
            opset_version=OPSET,
            verbose=False,
            custom_translation_table={bilstm_layer()._opoverload: _onnx_bilstm_layer},
        )


def _onnx_bilstm_layer(x, lengths, *weights):
    """``gpner::bilstm_layer`` as one ONNX ``LSTM`` (bidirectional, with ``sequence_lens``, so
    that each row's backward direction starts at its own last token, as packing does)."""
    from onnxscript import opset18 as op

    hidden = weights[1].shape[1]  # weight_hh: (4 H, H)

    def gates(w):  # torch's gate order i, f, g, o along dim 0 -> ONNX's i, o, f, g (c)
        i, f, g, o = (op.Slice(w, [k * hidden], [(k + 1) * hidden], [0]) for k in range(4))
        return op.Concat(i, o, f, g, axis=0)

    def both(fn):  # (forward, reverse) stacked on a leading direction axis
        return op.Concat(*(op.Unsqueeze(fn(weights[d : d + 4]), [0]) for d in (0, 4)), axis=0)

    w = both(lambda p: gates(p[0]))  # (2, 4 H, H_in)
    r = both(lambda p: gates(p[1]))  # (2, 4 H, H)
    b = both(lambda p: op.Concat(gates(p[2]), gates(p[3]), axis=0))  # (2, 8 H)
    steps = op.Transpose(x, perm=[1, 0, 2])  # (L, B, H_in)
    y, _, _ = op.LSTM(
        steps,
        w,
        r,
        b,
        op.Cast(lengths, to=6),  # int32 sequence_lens
        direction="bidirectional",
        hidden_size=hidden,
    )  # (L, 2, B, H)
    return op.Reshape(op.Transpose(y, perm=[2, 0, 1, 3]), [0, 0, -1])  # (B, L, 2 H)


def _set_metadata(proto, meta: dict[str, Any]) -> None:
    for entry in list(proto.metadata_props):
        if entry.key == METADATA_KEY:
            proto.metadata_props.remove(entry)
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(meta, ensure_ascii=False)


def fuse_onnx(proto):
    """``proto`` (an exported ``onnx.ModelProto``) with onnxruntime's transformer graph fusions
    applied: a bias add and its GELU become one ``BiasGelu`` (the exporter writes GELU in an
    operand order that onnxruntime's own session-time fusion does not recognise), attention
    where the pattern matches. They are onnxruntime's ``com.microsoft`` operators, so the result
    runs on onnxruntime only; the values stay fp32 and within the export's parity. Fewer passes
    over the (B, L, 4 H) activations matter most once the matrix products are int8
    (``benchmarks/speed/PREDICT.md``). A graph with nothing to fuse (e.g. the BiLSTM) comes back
    unchanged; the gpner metadata is kept.

    The residual add + LayerNorm fusion is left out: onnxruntime's ``SkipLayerNormalization``
    CPU kernel was several times slower than the two operators it replaces (see
    :data:`gpner.ort.DISABLED_OPTIMIZERS`).
    """
    import onnx
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions("bert")
    options.enable_skip_layer_norm = False
    # opt_level=0: only these graph rewrites, no onnxruntime session baking in what the current
    # CPU supports; num_heads/hidden_size 0: read from the graph.
    with _quiet("onnxruntime.transformers"):
        fused = optimize_model(
            copy.deepcopy(proto), model_type="bert", optimization_options=options, opt_level=0
        ).model
    domains = {entry.domain for entry in fused.opset_import}
    for domain in sorted({node.domain for node in fused.graph.node} - domains - {"ai.onnx"}):
        fused.opset_import.append(onnx.helper.make_opsetid(domain, 1))  # e.g. com.microsoft
    onnx.checker.check_model(fused, full_check=True)
    return fused


@contextlib.contextmanager
def _quiet(name: str):
    """Only errors from logger ``name`` while inside: onnxruntime's tools log routine advice
    at WARNING, which is not the user's to act on."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
