"""Dynamic int8 quantisation of an exported model, with the products that must stay fp32 chosen
by measurement.

onnxruntime's dynamic quantisation makes the weights of the matrix products int8 and quantises
each product's input on the fly, one scale per call. That costs precision where the input is
long-tailed: a transformer FFN's down-projection reads a GELU's output, where a few large values
set the scale and the many small ones lose their bits. Keeping every such product fp32 keeps the
F1 but also a third of the work in fp32; :func:`quantize_onnx` with ``calibration`` texts keeps
only the few that matter, measured on the model's own outputs
(``benchmarks/speed/PREDICT.md``). :func:`fuse_onnx`, onnxruntime's graph fusions, runs first.
Needs ``pip install gpner[onnx]``.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gpner import functional as F
from gpner.data.spans import Example
from gpner.onnx_metadata import METADATA_KEY, proto_metadata, set_metadata

__all__ = [
    "fuse_onnx",
    "quantize_onnx",
    "after_gelu",
    "choose_fp32",
    "quantization_record",
    "GELU_OPS",
]

# onnxruntime's fused GELU operators (fuse_onnx writes BiasGelu)
GELU_OPS = frozenset({"Gelu", "BiasGelu", "FastGelu", "QuickGelu"})


def after_gelu(proto) -> list[str]:
    """Names of the matrix products of ``proto`` that read a fused GELU's output: a transformer
    FFN's down-projection."""
    gelu_outputs = {out for node in proto.graph.node if node.op_type in GELU_OPS
                    for out in node.output}  # fmt: skip
    return [
        node.name
        for node in proto.graph.node
        if node.op_type in ("MatMul", "Gemm") and node.input[0] in gelu_outputs
    ]


def _quantize(source: Path, target: Path, per_channel: bool, fp32: Sequence[str]) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet("root"):  # quantize_dynamic advises its optional pre-processing there
        quantize_dynamic(
            str(source),
            str(target),
            weight_type=QuantType.QInt8,
            per_channel=per_channel,
            nodes_to_exclude=list(fp32),
        )


def choose_fp32(
    source: str | Path,
    candidates: Sequence[str],
    texts: Sequence[str | Example],
    budget: int = 1,
    *,
    per_channel: bool = True,
    batch_size: int = 32,
) -> tuple[list[str], list[dict[str, float]]]:
    """Which ``budget`` of the ``candidates`` (product names in the fp32 model ``source``) to
    keep fp32 when everything else becomes int8, chosen greedily on ``texts``.

    Each step keeps fp32 the candidate that brings the int8 model's logits closest to
    ``source``'s, closeness measured by the GlobalPointer divergence
    ``D(s, t) = sum_valid (sigmoid(s) - sigmoid(t)) (s - t)`` summed over the texts' valid
    cells: the symmetric KL of every cell's entity/no-entity decision, so a change that moves a
    score across the threshold weighs more than one far from it. Returns the chosen names in
    order and, per step, every tried candidate's divergence. Costs one quantisation and one pass
    over ``texts`` per tried candidate. Use training texts, not the set the F1 is reported on.
    """
    from gpner.inference import model_inputs
    from gpner.ort import OnnxModel

    if budget < 0:
        raise ValueError(f"budget must be >= 0, got {budget}")
    source = Path(source)
    reference = OnnxModel(source)
    width = reference.config.head.max_width
    batches = [(ids, mask.bool()) for ids, mask in model_inputs(reference, texts, batch_size)]
    targets = [reference(ids, mask).double() for ids, mask in batches]

    def divergence(path: Path) -> float:
        runtime = OnnxModel(path)
        return sum(
            F.global_pointer_kl(t, runtime(ids, mask).double(), mask, "sum", max_width=width).item()
            for (ids, mask), t in zip(batches, targets)
        )

    chosen: list[str] = []
    steps: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        trial = Path(tmp) / "trial.onnx"
        for _ in range(min(budget, len(candidates))):
            scores = {}
            for name in candidates:
                if name not in chosen:
                    _quantize(source, trial, per_channel, [*chosen, name])
                    scores[name] = divergence(trial)
            chosen.append(min(scores, key=scores.__getitem__))
            steps.append(scores)
    return chosen, steps


def quantize_onnx(
    source: str | Path,
    target: str | Path,
    *,
    per_channel: bool = True,
    fuse: bool = True,
    fp32_after_gelu: bool = True,
    calibration: Sequence[str | Example] | None = None,
    fp32_budget: int = 1,
) -> Path:
    """Dynamic int8 quantisation of an exported model: the weights of the matrix multiplications
    become int8, activations are quantised on the fly per call (onnxruntime's
    ``quantize_dynamic``). The gpner metadata is kept, with a ``quantization`` entry saying what
    stayed fp32 and why; ``target`` is checked like an export.

    ``per_channel``: one scale per output column of each weight instead of one per matrix
    (columns of very different range keep their precision: fewer changed spans for the same
    speed). ``fuse``: apply :func:`fuse_onnx` first, so that the int8 products feed
    fused kernels instead of chains of small fp32 operators. ``fp32_after_gelu``: keep the
    products that read a GELU's output (:func:`after_gelu`, found in the fused graph) in fp32;
    with ``calibration`` texts (from the training data), only ``fp32_budget`` of them, chosen by
    :func:`choose_fp32` -- faster, with the F1 checked on the texts' model outputs rather than
    assumed. Without ``fp32_after_gelu`` every product is int8.
    """
    import onnx

    source, target = Path(source), Path(target)
    proto = onnx.load_model(str(source))
    meta = proto_metadata(proto)
    if meta is None:
        raise ValueError(f"{source}: no {METADATA_KEY} metadata; not exported by gpner")
    target.parent.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {"weights": "int8", "per_channel": per_channel, "fused": fuse}
    with tempfile.TemporaryDirectory() as tmp:
        if fuse:
            proto = fuse_onnx(proto)
            source = Path(tmp) / "fused.onnx"
            onnx.save_model(proto, str(source))
        fp32 = after_gelu(proto) if fp32_after_gelu else []
        if fp32 and calibration is not None:
            fp32, steps = choose_fp32(
                source, fp32, calibration, fp32_budget, per_channel=per_channel
            )
            record["calibration"] = {"texts": len(calibration), "budget": fp32_budget,
                                     "divergence": steps}  # fmt: skip
        record["fp32_products"] = fp32
        _quantize(source, target, per_channel, fp32)
    proto = onnx.load_model(str(target))
    set_metadata(proto, {**meta, "quantization": record})
    onnx.checker.check_model(proto, full_check=True)
    onnx.save_model(proto, str(target))
    return target


def quantization_record(path: str | Path) -> dict[str, Any]:
    """The ``quantization`` entry :func:`quantize_onnx` wrote into an int8 file's gpner
    metadata: what stayed fp32, and the calibration that chose it."""
    import onnx

    proto = onnx.load_model(str(path), load_external_data=False)
    return proto_metadata(proto)["quantization"]


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
    CPU kernel is slower than the two operators it replaces (see
    :data:`gpner.ort.DISABLED_OPTIMIZERS`; measured in ``benchmarks/speed/PREDICT.md``).
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
