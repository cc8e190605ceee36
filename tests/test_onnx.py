"""ONNX export and the onnxruntime backend: parity with the torch model, on tiny random models.

The cases come from the registries: every encoder kind of ``ENCODERS``, with and without char
bigrams where its config accepts them, so a new kind or option is exported here or fails here;
every head of ``HEADS`` in both layouts (full (B, C, L, L), band (B, C, L, W)) for the char
encoders and for the HF one. Each case is exported once per module.
"""

import json

import pytest
import torch

pytest.importorskip("onnx", reason="the onnx extra is not installed (pip install gpner[onnx])")
pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
pytest.importorskip("onnxscript", reason="the onnx extra is not installed")

import onnx  # noqa: E402

import gpner  # noqa: E402
from gpner.config import ConfigError, load_config  # noqa: E402
from gpner.data.batching import collate, encode_examples  # noqa: E402
from gpner.data.spans import Example  # noqa: E402
from gpner.encoders import ENCODERS  # noqa: E402
from gpner.export import export_onnx, fuse_onnx  # noqa: E402
from gpner.heads import HEADS  # noqa: E402
from gpner.inference import predict_examples  # noqa: E402
from gpner.model import build_model, build_tokenizer  # noqa: E402
from gpner.ort import OnnxModel  # noqa: E402
from gpner.quantize import choose_fp32, quantize_onnx  # noqa: E402
from tests.conftest import _synthetic_examples, write_tiny_hf_model  # noqa: E402

TINY = {
    "data.max_length": 32,
    "head.head_size": 8,
    "encoder.hidden_size": 32,
    "encoder.num_layers": 1,
    "encoder.num_heads": 2,
    "encoder.ffn_size": 64,
    "encoder.min_bigram_freq": 1,
}
# What a variant needs beyond TINY (the HF path is filled in when the tiny model is written),
# and the options worth a path of their own in the graph: two BiLSTM layers, a narrow bigram
# table projected up.
EXTRA = {
    ("hf", False): {"encoder.path": '"tiny-bert"'},
    ("bilstm", False): {"encoder.num_layers": 2},
    ("char_transformer", True): {"encoder.bigram_size": 8},
}


def _settings(kind: str, bigrams: bool) -> dict:
    sets = {**TINY, "encoder.kind": f'"{kind}"', "encoder.bigrams": str(bigrams).lower()}
    return {**sets, **EXTRA.get((kind, bigrams), {})}


def _variants() -> list[tuple[str, bool]]:
    """(kind, bigrams) for every registered encoder and every bigram setting its config takes."""
    out = []
    for kind in ENCODERS:
        for bigrams in (False, True):
            try:
                load_config(None, [f"{k}={v}" for k, v in _settings(kind, bigrams).items()])
            except ConfigError:
                if not bigrams:
                    raise  # every kind is exported without bigrams
                continue
            out.append((kind, bigrams))
    return out


LAYOUTS = [(head, width) for head in HEADS for width in (None, 5)]
VARIANTS = _variants()
# (encoder kind, bigrams, head, max_width): the variants take the head layouts in turn; the HF
# encoder gets every head layout the turn did not give it (at least both heads)
CASES = [(*v, *LAYOUTS[i % len(LAYOUTS)]) for i, v in enumerate(VARIANTS)]
CASES += [
    (kind, bigrams, head, width)
    for kind, bigrams in VARIANTS
    if kind == "hf"
    for head, width in LAYOUTS
    if head not in {c[2] for c in CASES if c[0] == "hf"}
][:1]
LABELS = ["LOC", "ORG", "PER"]


def test_every_registered_encoder_option_and_head_layout_is_exported():
    assert {c[0] for c in CASES} == set(ENCODERS)
    assert {(c[0], c[1]) for c in CASES} == set(VARIANTS)
    assert any(c[1] for c in CASES)  # the bigram option reaches the graph
    assert {c[2:] for c in CASES} == set(LAYOUTS)
    assert {c[2] for c in CASES if c[0] == "hf"} == set(HEADS)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def export_case(tmp_path_factory):
    """case -> (torch model, OnnxModel, .onnx path) of a tiny random model, each exported once."""
    done = {}

    def get(case):
        if case not in done:
            done[case] = _export(case, tmp_path_factory.mktemp("onnx"))
        return done[case]

    return get


@pytest.fixture(params=CASES, ids=["-".join(map(str, c)) for c in CASES])
def exported(request, export_case):
    return export_case(request.param)


def _export(case, root):
    kind, bigrams, head, width = case
    sets = {**_settings(kind, bigrams), "head.kind": f'"{head}"'}
    if width:
        sets["head.max_width"] = width
    if kind == "hf":
        sets["encoder.path"] = f'"{write_tiny_hf_model(root / "bert")}"'
    config = load_config(None, [f"{k}={v}" for k, v in sets.items()])
    torch.manual_seed(0)
    texts = [ex.text for ex in _synthetic_examples(64, seed=3)]
    model = build_model(config, LABELS, build_tokenizer(config, texts), texts).eval()
    path = export_onnx(model, root / "model.onnx")
    return model, OnnxModel(path, threads=1), path


def _examples(shared: bool) -> list[Example]:
    if not shared:
        return _synthetic_examples(40, seed=4)
    from gpner.data.paths import data_root
    from gpner.data.readers import read

    path = data_root() / "cluener" / "dev.json"
    if not path.is_file():
        pytest.skip(f"CLUENER dev not found at {path} (set GPNER_DATA to point at it)")
    return read(path)[:300]


def _assert_same_logits(model, runtime, examples):
    features, _ = encode_examples(
        [Example(ex.text, []) for ex in examples],
        model.tokenizer,
        model.label2id,
        model.config.data.max_length,
        model.config.data.stride,
    )
    features.sort(key=lambda f: len(f.input_ids))
    for start in range(0, len(features), 16):
        batch = collate(features[start : start + 16], model.tokenizer.pad_id)
        with torch.no_grad():
            expected = model(batch.input_ids, batch.attention_mask)
        got = runtime(batch.input_ids, batch.attention_mask)
        assert got.shape == expected.shape and got.dtype == torch.float32
        low = torch.finfo(torch.float32).min
        valid = expected > low
        assert torch.equal(got > low, valid)  # the same cells are masked
        torch.testing.assert_close(got[valid], expected[valid], atol=1e-4, rtol=0)


@pytest.mark.parametrize("shared", [False, True], ids=["synthetic", "cluener-dev"])
def test_onnxruntime_matches_torch(exported, shared):
    model, runtime, _ = exported
    examples = _examples(shared)
    _assert_same_logits(model, runtime, examples)
    # the same pipeline around either backend: identical spans, scores within 1e-4
    for flat in (False, True):
        expected = predict_examples(model, examples, batch_size=16, flat=flat)
        got = predict_examples(runtime, examples, batch_size=16, flat=flat)
        assert [[s for s, _ in x] for x in got] == [[s for s, _ in x] for x in expected]
        scores = [abs(a - b) for x, y in zip(got, expected) for (_, a), (_, b) in zip(x, y)]
        assert max(scores, default=0.0) <= 1e-4
    assert sum(len(x) for x in expected) > 0  # a random model still predicts something


def test_export_has_dynamic_axes_and_carries_the_model(exported):
    model, runtime, path = exported
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    for graph_input in proto.graph.input:
        dims = graph_input.type.tensor_type.shape.dim
        assert [d.dim_param != "" for d in dims] == [True, True]  # B and L are symbolic
    meta = json.loads({p.key: p.value for p in proto.metadata_props}["gpner.json"])
    assert meta["labels"] == LABELS and meta["format"] == "gpner-onnx"
    assert runtime.labels == model.labels and runtime.config == model.config
    assert runtime.tokenizer.state_dict() == model.tokenizer.state_dict()
    # one token, the window length, and the longest input the encoder takes (if it has a limit)
    lengths = {1, model.config.data.max_length, model.encoder.max_length or 2 * 32}
    for batch, length in zip((1, 3, 2), sorted(lengths)):
        ids = torch.randint(4, runtime.tokenizer.vocab_size, (batch, length))
        mask = torch.ones(batch, length, dtype=torch.bool)
        with torch.no_grad():
            expected = model(ids, mask)
        torch.testing.assert_close(runtime(ids, mask), expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    "policy, spinning, expected",
    [(None, None, "0"), ("PASSIVE", None, "0"), ("active", None, "1"), ("PASSIVE", True, "1")],
)
def test_idle_threads_spin_only_when_torch_s_would(
    export_case, monkeypatch, policy, spinning, expected
):
    path = export_case(CASES[0])[2]
    if policy is None:
        monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    else:
        monkeypatch.setenv("OMP_WAIT_POLICY", policy)
    options = OnnxModel(path, threads=1, spinning=spinning).session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == expected


def _ops(path) -> set[str]:
    return {node.op_type for node in onnx.load(str(path)).graph.node}


def test_fused_export_matches_torch_and_fuses_the_transformers(exported, tmp_path):
    model, _, path = exported
    fused = tmp_path / "fused.onnx"
    onnx.save_model(fuse_onnx(onnx.load(str(path))), str(fused))
    proto = onnx.load(str(fused))
    onnx.checker.check_model(proto, full_check=True)
    assert "gpner.json" in {p.key for p in proto.metadata_props}
    if model.config.encoder.kind in ("hf", "char_transformer"):
        # bias + GELU became onnxruntime's fused kernel (a BiLSTM has none to fuse)
        assert "BiasGelu" in _ops(fused), _ops(fused)
        assert "com.microsoft" in {entry.domain for entry in proto.opset_import}
    assert "SkipLayerNormalization" not in _ops(fused)  # the slow kernel is left out
    _assert_same_logits(model, OnnxModel(fused, threads=1), _examples(False))


def test_sessions_do_not_fuse_residual_layernorm(export_case, tmp_path, monkeypatch):
    import onnxruntime as ort

    from gpner.ort import DISABLED_OPTIMIZERS, session_options

    path = export_case(next(c for c in CASES if c[0] == "hf"))[2]
    written = {}
    for name, disabled in (("default", None), ("gpner", list(DISABLED_OPTIMIZERS))):
        options = session_options(threads=1)
        options.optimized_model_filepath = str(tmp_path / f"{name}.onnx")
        ort.InferenceSession(str(path), options, disabled_optimizers=disabled)
        written[name] = _ops(tmp_path / f"{name}.onnx")
    # onnxruntime would fuse them (so the setting matters); gpner's sessions keep them apart
    assert "SkipLayerNormalization" in written["default"]
    assert "SkipLayerNormalization" not in written["gpner"]
    assert "LayerNormalization" in written["gpner"]
    seen = []
    real = ort.InferenceSession

    def spy(*args, **kwargs):
        seen.append(kwargs.get("disabled_optimizers"))
        return real(*args, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", spy)
    OnnxModel(path, threads=1)
    assert seen == [list(DISABLED_OPTIMIZERS)]  # OnnxModel's sessions use the same list


def test_int8_quantisation_keeps_the_model_close(export_case, tmp_path):
    model, runtime, path = export_case(CASES[0])  # the char model, full layout
    target = quantize_onnx(path, tmp_path / "int8.onnx")
    ops = {node.op_type for node in onnx.load(str(target)).graph.node}
    assert "DynamicQuantizeLinear" in ops or "MatMulInteger" in ops, ops
    int8 = gpner.load(target, backend="onnxruntime")
    assert int8.labels == LABELS
    examples = _examples(False)
    batch = collate(
        encode_examples(examples, model.tokenizer, model.label2id, 32, 16)[0][:8],
        model.tokenizer.pad_id,
    )
    fp32 = runtime(batch.input_ids, batch.attention_mask)
    quantised = int8(batch.input_ids, batch.attention_mask)
    valid = fp32 > torch.finfo(torch.float32).min
    error = (quantised[valid] - fp32[valid]).abs().max()
    assert 0 < error < 0.1 * fp32[valid].abs().max()  # changed, but only a little


def _weight_scales(path) -> list[tuple[int, ...]]:
    """Shapes of the weight scales quantize_dynamic wrote (one per quantised matrix)."""
    proto = onnx.load(str(path))
    return [tuple(t.dims) for t in proto.graph.initializer if t.name.endswith("_scale")]


def test_int8_is_per_channel_and_fused_by_default(export_case, tmp_path):
    hf = next(c for c in CASES if c[0] == "hf")
    model, runtime, path = export_case(hf)
    default = quantize_onnx(path, tmp_path / "default.onnx")
    plain = quantize_onnx(path, tmp_path / "plain.onnx", per_channel=False, fuse=False)
    # per channel: a scale per output column (a vector); per tensor: one scale (a scalar)
    assert any(len(shape) == 1 and shape[0] > 1 for shape in _weight_scales(default))
    assert _weight_scales(plain) and all(shape in ((), (1,)) for shape in _weight_scales(plain))
    assert "BiasGelu" in _ops(default)
    assert "BiasGelu" not in _ops(plain)
    # the FFN down-projections (they read the GELU) keep fp32 weights; the other products don't
    graph = onnx.load(str(default)).graph
    gelu_out = {o for n in graph.node if n.op_type == "BiasGelu" for o in n.output}
    readers = [n for n in graph.node if gelu_out & set(n.input)]
    assert readers and {n.op_type for n in readers} == {"MatMul"}, readers
    assert model.config.encoder.kind == "hf" and len(readers) == 2  # one per layer (tiny BERT)
    all_int8 = quantize_onnx(path, tmp_path / "all.onnx", fp32_after_gelu=False)

    def int8_products(target) -> int:
        return sum(n.op_type == "MatMulInteger" for n in onnx.load(str(target)).graph.node)

    assert int8_products(all_int8) == int8_products(default) + 2  # those two, int8 here
    ids = torch.randint(4, model.tokenizer.vocab_size, (3, 12))
    mask = torch.ones(3, 12, dtype=torch.bool)
    fp32 = runtime(ids, mask)
    for target in (default, plain):
        got = gpner.load(target, backend="onnxruntime")(ids, mask)
        assert (got - fp32).abs().max() < 0.1 * fp32.abs().max()


def test_cli_export_then_predict_and_evaluate_with_onnxruntime(tiny_checkpoint, tmp_path, capsys):
    from gpner.cli import main

    checkpoint, data = tiny_checkpoint
    target = tmp_path / "tiny.onnx"
    assert main(["export", str(checkpoint), str(target)]) == 0
    assert "wrote the ONNX model" in capsys.readouterr().err
    # the default export is standard ONNX; --fuse writes onnxruntime's own operators
    assert {e.domain for e in onnx.load(str(target)).opset_import} <= {"", "ai.onnx"}
    fused = tmp_path / "fused.onnx"
    assert main(["export", str(checkpoint), str(fused), "--fuse"]) == 0
    assert "wrote the fused ONNX model" in capsys.readouterr().err
    dev = str(data / "dev.jsonl")
    outputs = {}
    for backend, model in (("torch", checkpoint), ("onnxruntime", target)):
        out = tmp_path / f"{backend}.jsonl"
        assert main(["predict", str(model), dev, "-o", str(out), "--backend", backend]) == 0
        outputs[backend] = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
        assert main(["evaluate", str(model), dev, "--backend", backend]) == 0
        outputs[backend + "-metrics"] = json.loads(capsys.readouterr().out)["micro"]
    spans = {k: [[(s["start"], s["end"], s["label"]) for s in r["spans"]] for r in v]
             for k, v in outputs.items() if "metrics" not in k}  # fmt: skip
    assert spans["onnxruntime"] == spans["torch"] and any(spans["torch"])
    assert outputs["onnxruntime-metrics"] == outputs["torch-metrics"]
    # a model directory is not an .onnx file, and the reverse
    assert main(["predict", str(target), dev, "--backend", "torch"]) == 2
    assert main(["predict", str(checkpoint), dev, "--backend", "onnxruntime"]) == 2
    assert "gpner export" in capsys.readouterr().err


def _reference_divergence(s: torch.Tensor, t: torch.Tensor, mask: torch.Tensor) -> float:
    """D(s, t) summed over valid cells (i <= j, both tokens real), in float64, written out."""
    s, t = s.double(), t.double()
    valid = (mask[:, None, :, None] & mask[:, None, None, :]).expand_as(s)
    valid = valid & torch.ones_like(s, dtype=torch.bool).triu()
    return float(((torch.sigmoid(s) - torch.sigmoid(t)) * (s - t))[valid].sum())


def _hf_int8(tmp_path, export_case, **options):
    hf = next(c for c in CASES if c[0] == "hf" and c[3] is None)  # the full layout
    model, runtime, path = export_case(hf)
    target = quantize_onnx(path, tmp_path / "int8.onnx", **options)
    meta = json.loads({p.key: p.value for p in onnx.load(str(target)).metadata_props}["gpner.json"])
    return model, runtime, path, target, meta["quantization"]


def _int8_products(path) -> int:
    return sum(n.op_type == "MatMulInteger" for n in onnx.load(str(path)).graph.node)


def test_calibrated_int8_keeps_fp32_the_product_whose_int8_moves_the_scores_most(
    export_case, tmp_path
):
    from gpner.inference import model_inputs

    texts = [ex.text for ex in _synthetic_examples(24, seed=5)]
    model, _, path, target, record = _hf_int8(tmp_path, export_case, calibration=texts)
    (scores,) = record["calibration"]["divergence"]  # one step: budget 1 of the 2 candidates
    assert len(scores) == 2 and record["calibration"]["texts"] == 24
    assert record["fp32_products"] == [min(scores, key=scores.get)]
    assert _int8_products(target) == _int8_products(
        quantize_onnx(path, tmp_path / "all.onnx", fp32_after_gelu=False)
    ) - 1
    # the recorded divergence is that of the written model, by a plain float64 reference
    fused = tmp_path / "fused.onnx"
    onnx.save_model(fuse_onnx(onnx.load(str(path))), str(fused))
    reference, int8 = OnnxModel(fused, threads=1), OnnxModel(target, threads=1)
    total = sum(
        _reference_divergence(reference(ids, mask), int8(ids, mask), mask.bool())
        for ids, mask in model_inputs(model, texts, 32)
    )
    assert total > 0
    assert abs(total - scores[record["fp32_products"][0]]) <= 1e-6 * total


def test_fp32_budget_bounds_the_products_kept(export_case, tmp_path):
    texts = [ex.text for ex in _synthetic_examples(8, seed=6)]
    *_, none = _hf_int8(tmp_path, export_case, calibration=texts, fp32_budget=0)
    assert none["fp32_products"] == [] and none["calibration"]["divergence"] == []
    *_, every = _hf_int8(tmp_path, export_case, calibration=texts, fp32_budget=5)
    # two steps: the second tries only the candidate the first left
    steps = every["calibration"]["divergence"]
    assert len(every["fp32_products"]) == 2 and [len(s) for s in steps] == [2, 1]
    *_, default = _hf_int8(tmp_path, export_case)  # no calibration: every GELU reader
    assert sorted(default["fp32_products"]) == sorted(every["fp32_products"])
    assert "calibration" not in default
    with pytest.raises(ValueError, match="budget"):
        choose_fp32(tmp_path / "int8.onnx", ["x"], texts, budget=-1)
    model, *_ = export_case(next(c for c in CASES if c[0] == "hf"))
    with pytest.raises(ValueError, match="calibration.*int8"):
        export_onnx(model, tmp_path / "fp32.onnx", calibration=texts)  # fp32: nothing to choose


def test_model_inputs_are_the_batches_predict_feeds(export_case):
    from gpner.inference import model_inputs

    model, runtime, _ = export_case(CASES[0])
    texts = [ex.text for ex in _synthetic_examples(20, seed=7)] + ["x" * 80]  # one windowed
    seen = []

    class Spy:
        def __getattr__(self, name):
            return getattr(runtime, name)

        def __call__(self, ids, mask):
            seen.append((ids, mask))
            return runtime(ids, mask)

    gpner.inference.predict(Spy(), texts, batch_size=8)
    batches = model_inputs(model, texts, batch_size=8)
    assert len(batches) == len(seen) > 2
    for (ids, mask), (want_ids, want_mask) in zip(batches, seen):
        assert torch.equal(ids, want_ids) and torch.equal(mask, want_mask)


def test_cli_export_int8_calibrated(export_case, tmp_path, capsys):
    from gpner.cli import main
    from gpner.data.readers import write_jsonl

    hf = next(c for c in CASES if c[0] == "hf" and c[3] is None)
    model, _, _ = export_case(hf)
    saved = tmp_path / "model"
    gpner.save(model, saved)
    data = tmp_path / "train.jsonl"
    write_jsonl(_synthetic_examples(30, seed=8), data)
    target = tmp_path / "int8.onnx"
    args = ["export", str(saved), str(target), "--int8", "--calibrate", str(data)]
    assert main([*args, "--calibrate-texts", "12"]) == 0
    err = capsys.readouterr().err
    assert "wrote the int8-quantised fused ONNX model" in err
    assert f"chosen on 12 texts of {data}" in err
    assert main(["export", str(saved), str(target), "--calibrate", str(data)]) == 2
    assert "--int8" in capsys.readouterr().err
    assert main([*args, "--fp32-budget", "-1"]) == 2
