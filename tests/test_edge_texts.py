"""Texts with nothing to tag, and one very long line, through every interface of every encoder.

The old defect: an empty or whitespace-only text has no tokens under the char tokenizer, and the
BiLSTM could not pack an empty batch, so `gpner predict`, `render`, the service (HTTP 500),
spaCy's component and the onnxruntime backend all failed on it. The cases come from the encoder
registry (a new kind is tested here or fails here) times the interfaces (the API, the CLI's
`predict` and `render`, the service, spaCy, onnxruntime) times the texts below. Each answer must
be no spans or valid spans (offsets inside the text, a known label, a score above the
threshold), never an exception.

The models are tiny and randomly initialised; each one's threshold, a high quantile of its own
span scores, keeps its spans on the long line to thousands, not hundreds of thousands.
"""

import json

import pytest
import torch

import gpner
from gpner.config import load_config
from gpner.encoders import ENCODERS
from gpner.model import build_model, build_tokenizer
from tests.conftest import _synthetic_examples, write_tiny_hf_model

# 100,000 characters: text, an emoji and runs of spaces, so that windows span long gaps
LONG_LINE = ("张三在北京工作。😀" + " " * 91) * 1000
EDGE_TEXTS = ["", " ", "\u3000", "\n", "😀🎉👩\u200d👩\u200d👧", LONG_LINE]
TINY = [
    "data.max_length=32",
    "head.head_size=8",
    "encoder.hidden_size=32",
    "encoder.num_layers=1",
    "encoder.num_heads=2",
    "encoder.ffn_size=64",
]


@pytest.fixture(scope="module", params=list(ENCODERS))
def saved(request, tmp_path_factory):
    """(kind, model directory) of a tiny random model of each registered encoder kind."""
    root = tmp_path_factory.mktemp(f"edge-{request.param}")
    sets = [*TINY, f'encoder.kind="{request.param}"']
    if request.param == "hf":
        sets.append(f'encoder.path="{write_tiny_hf_model(root / "tiny-bert")}"')
    config = load_config(None, sets)
    texts = [ex.text for ex in _synthetic_examples(32, seed=1)]
    torch.manual_seed(0)
    model = build_model(config, ["LOC", "ORG", "PER"], build_tokenizer(config, texts), texts)
    return request.param, gpner.save(model, root / "model"), _threshold(model)


def _threshold(model) -> float:
    """The 98th percentile of the model's span scores on a sample text, rounded."""
    from gpner.inference import model_inputs

    ((ids, mask),) = model_inputs(model, ["张三在北京工作。李四去了上海。" * 2])
    with torch.no_grad():
        logits = model.eval()(ids, mask)  # (1, C, L, L)
    valid = logits[logits > torch.finfo(logits.dtype).min]
    return round(float(torch.quantile(valid, 0.98)), 3)


def assert_valid(texts, records, threshold):
    """One record per text, in order; each span inside its text, labelled, above the threshold."""
    assert [r["text"] for r in records] == list(texts)
    for record in records:
        text = record["text"]
        if not text.strip():
            assert record["spans"] == [], repr(text)
        for span in record["spans"]:
            assert 0 <= span["start"] < span["end"] <= len(text)
            assert span["text"] == text[span["start"] : span["end"]]
            assert span["label"] in {"LOC", "ORG", "PER"}
            assert span["score"] > threshold - 1e-3  # the records round scores to 4 digits


def records(texts, predictions):
    from gpner.data.writers import prediction_record

    return [prediction_record(t, p) for t, p in zip(texts, predictions)]


def test_api_and_onnxruntime(saved, tmp_path):
    from gpner.export import export_onnx

    kind, path, threshold = saved
    model = gpner.load(path)
    expected = gpner.predict(model, EDGE_TEXTS, threshold=threshold)
    assert_valid(EDGE_TEXTS, records(EDGE_TEXTS, expected), threshold)
    assert sum(map(len, expected)) > 0  # the long line has valid spans to check
    for text in EDGE_TEXTS:  # alone, not only in a batch with other texts
        alone = gpner.predict(model, [text], threshold=threshold)
        assert_valid([text], records([text], alone), threshold)
    # the model itself accepts a batch of texts without tokens: (B, C, 0, 0) logits
    logits = model(torch.zeros(2, 0, dtype=torch.long), torch.zeros(2, 0, dtype=torch.bool))
    assert logits.shape == (2, 3, 0, 0)

    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    pytest.importorskip("onnxscript", reason="the onnx extra is not installed")
    onnx_model = gpner.load(export_onnx(model, tmp_path / "m.onnx"), backend="onnxruntime")
    served = gpner.predict(onnx_model, EDGE_TEXTS, threshold=threshold)
    assert_valid(EDGE_TEXTS, records(EDGE_TEXTS, served), threshold)


def test_cli_predict_and_render(saved, tmp_path, capsys):
    from gpner.cli import main

    kind, path, threshold = saved
    # one text per line: "\n" is the empty line between two others
    lines = ["", " ", "\u3000", "", EDGE_TEXTS[4], LONG_LINE]
    source = tmp_path / "texts.txt"
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    args = [str(path), str(source), "-o", str(out), "--threshold", str(threshold)]
    assert main(["predict", *args]) == 0, capsys.readouterr().err
    written = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert_valid(lines, written, threshold)
    page = tmp_path / "page.html"
    args = [str(path), str(source), "-o", str(page), "--threshold", str(threshold)]
    assert main(["render", *args]) == 0, capsys.readouterr().err
    assert page.read_text(encoding="utf-8").count("张三") >= 1000
    # a file of whitespace-only lines alone: every batch the model gets is without tokens
    blank = tmp_path / "blank.txt"
    blank.write_text("   \n\u3000\n\n", encoding="utf-8")
    assert main(["predict", str(path), str(blank), "-o", str(out)]) == 0
    assert_valid(["   ", "\u3000", ""], [json.loads(x) for x in out.read_text().splitlines()], 0)
    assert main(["render", str(path), str(blank), "-o", str(page)]) == 0


def test_service(saved):
    pytest.importorskip("fastapi", reason="needs pip install fastapi")
    httpx = pytest.importorskip("httpx", reason="needs pip install httpx")
    from gpner.serve.app import create_app
    from gpner.serve.limits import Limits
    from tests.serve_helpers import REQUEST_SECONDS, running_server

    kind, path, threshold = saved
    app = create_app(path, Limits(max_chars=len(LONG_LINE), max_spans=100_000))
    with running_server(app) as url:
        for batch in [[t] for t in EDGE_TEXTS] + [EDGE_TEXTS]:
            body = {"texts": batch, "threshold": threshold}
            answer = httpx.post(f"{url}/predict", json=body, timeout=REQUEST_SECONDS)
            assert answer.status_code == 200, answer.text
            assert_valid(batch, answer.json()["results"], threshold)
        answer = httpx.post(f"{url}/render", json=body, timeout=REQUEST_SECONDS)
        assert answer.status_code == 200, answer.text


def test_spacy_component(saved):
    spacy = pytest.importorskip("spacy", reason="needs pip install spacy")
    import gpner.spacy_component  # noqa: F401  (registers the factory)

    kind, path, threshold = saved
    nlp = spacy.blank("zh")
    nlp.add_pipe("gpner", config={"model": str(path), "threshold": threshold})
    for text in EDGE_TEXTS:
        doc = nlp(text)
        assert doc.text == text
        if not text.strip():
            assert len(doc.spans["gpner"]) == 0 and len(doc.ents) == 0
    for text, doc in zip(EDGE_TEXTS, nlp.pipe(EDGE_TEXTS)):
        assert doc.text == text
        for span in doc.spans["gpner"]:
            assert 0 <= span.start_char < span.end_char <= len(text)
            assert span.label_ in {"LOC", "ORG", "PER"}
