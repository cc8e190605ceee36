"""The spaCy component on blank zh and en pipelines: every span in doc.spans, scores beside them,
the best non-overlapping ones in doc.ents, misaligned spans reported and never dropped silently."""

import logging
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import tomllib

spacy = pytest.importorskip("spacy", reason="needs pip install spacy")

import gpner  # noqa: E402
import gpner.spacy_component  # noqa: E402, F401  (registers the factory here, too)
from gpner.data.spans import Example, Span  # noqa: E402
from gpner.decoding import greedy_flat_chars  # noqa: E402


def _english_examples(count, seed):
    """English sentences with PER/LOC and a nested ORG (``Boston University`` holds ``Boston``)."""
    import random

    rng = random.Random(seed)
    people = ["John Smith", "Mary Jones", "Anna Lee", "Tom Brown", "Wei Zhang"]
    places = ["Paris", "Berlin", "New York", "Tokyo", "Boston"]
    templates = ["{p} works in {l}.", "{l} University hired {p}.", "Yesterday {p} visited {l}."]
    examples = []
    for _ in range(count):
        template = rng.choice(templates)
        p, l = rng.choice(people), rng.choice(places)
        text = template.format(p=p, l=l)
        spans = [Span(text.index(p), text.index(p) + len(p), "PER")]
        at = text.index(l)
        spans.append(Span(at, at + len(l), "LOC"))
        if "University" in text:
            spans.append(Span(at, at + len(l) + len(" University"), "ORG"))
        examples.append(Example(text, sorted(spans)))
    return examples


@pytest.fixture(scope="module")
def english_model(tmp_path_factory):
    from gpner.config import load_config
    from gpner.data.readers import write_jsonl
    from gpner.training import train
    from tests.conftest import tiny_config_overrides

    root = tmp_path_factory.mktemp("english_model")
    write_jsonl(_english_examples(64, seed=1), root / "train.jsonl")
    write_jsonl(_english_examples(16, seed=2), root / "dev.jsonl")
    overrides = tiny_config_overrides(
        root / "train.jsonl",
        root / "dev.jsonl",
        root / "run",
        **{"train.epochs": 12, "data.max_length": 48},
    )
    return train(load_config(None, overrides)).best_path


def check_doc(doc, predicted, key="gpner"):
    """doc.spans holds exactly the aligned predictions with their scores; doc.ents the best
    non-overlapping ones; the rest are listed as misaligned."""
    group = doc.spans[key]
    written = [(s.start_char, s.end_char, s.label_) for s in group]
    misaligned = group.attrs["misaligned"]
    assert len(written) + sum(m["mapped_to"] is None for m in misaligned) == len(predicted)
    scores = dict(zip(written, group.attrs["scores"].tolist()))
    for span, score in predicted:
        key3 = (span.start, span.end, span.label)
        if key3 in scores:
            assert scores[key3] == pytest.approx(score, abs=1e-6)
        else:
            assert any((m["start"], m["end"], m["label"]) == key3 for m in misaligned)
    aligned = [(Span(s, e, label), scores[(s, e, label)]) for s, e, label in written]
    expected_ents = [(s.start, s.end, s.label) for s, _ in greedy_flat_chars(aligned)]
    assert [(e.start_char, e.end_char, e.label_) for e in doc.ents] == expected_ents


def test_blank_zh_gets_nested_spans_and_flat_ents(served_model):
    nlp = spacy.blank("zh")
    component = nlp.add_pipe("gpner", config={"model": str(served_model)})
    texts = ["北京大学的张三来了", "张三在上海工作。", "上海大学的刘备来了，昨天李四说深圳很好。"]
    predicted = gpner.predict(gpner.load(served_model), texts)
    docs = [nlp(t) for t in texts]
    for doc, spans in zip(docs, predicted):
        check_doc(doc, spans)
        assert not doc.spans["gpner"].attrs["misaligned"]  # one token per character
    first = {(s.text, s.label_) for s in docs[0].spans["gpner"]}
    assert {("北京", "LOC"), ("北京大学", "ORG"), ("张三", "PER")} <= first  # nested kept
    assert [(e.text, e.label_) for e in docs[0].ents] == [("北京", "LOC"), ("张三", "PER")]
    # nlp.pipe batches the texts and gives the same annotations
    piped = list(nlp.pipe(texts, batch_size=2))
    for a, b in zip(docs, piped):
        assert [(s.start, s.end, s.label_) for s in a.spans["gpner"]] == [
            (s.start, s.end, s.label_) for s in b.spans["gpner"]
        ]
        assert a.ents == b.ents or [(e.start, e.end) for e in a.ents] == [
            (e.start, e.end) for e in b.ents
        ]
    assert component.stats["docs"] == 6 and component.stats["misaligned"] == 0
    # the annotations survive spaCy's own serialisation
    again = spacy.tokens.Doc(nlp.vocab).from_bytes(docs[0].to_bytes())
    assert (
        again.spans["gpner"].attrs["scores"].tolist()
        == docs[0].spans["gpner"].attrs["scores"].tolist()
    )


def test_blank_en_maps_character_offsets_onto_tokens(english_model):
    nlp = spacy.blank("en")
    nlp.add_pipe("gpner", config={"model": str(english_model)})
    texts = [
        "Boston University hired Mary Jones.",
        "John Smith works in New York.",
        "Yesterday Wei Zhang visited Tokyo.",
    ]
    predicted = gpner.predict(gpner.load(english_model), texts)
    docs = list(nlp.pipe(texts))
    for doc, spans in zip(docs, predicted):
        check_doc(doc, spans)
    found = {(s.text, s.label_, s.end - s.start) for d in docs for s in d.spans["gpner"]}
    # check_doc held every span to its characters; which names a 12-epoch tiny model finds
    # varies with its training, so only the shapes the mapping must handle are required:
    # several two-token spans, and a nested pair (a span inside another)
    assert ("New York", "LOC", 2) in found
    assert sum(n == 2 for _, _, n in found) >= 3
    assert ("Boston University", "ORG", 2) in found and ("Boston", "LOC", 1) in found


def test_misaligned_spans_are_reported_never_dropped(served_model, caplog):
    # Chinese has no spaces, so a blank English tokenizer makes the sentence one token (and
    # the full stop another): every predicted name falls inside a token.
    text = "张三在上海工作。"
    predicted = gpner.predict(gpner.load(served_model), [text])[0]
    assert predicted
    strict = spacy.blank("en")
    component = strict.add_pipe("gpner", config={"model": str(served_model)})
    with caplog.at_level(logging.WARNING, logger="gpner.spacy"):
        doc = strict(text)
    assert len(doc) == 2 and len(doc.spans["gpner"]) == 0 and not doc.ents
    misaligned = doc.spans["gpner"].attrs["misaligned"]
    assert [(m["start"], m["end"], m["label"]) for m in misaligned] == [
        (s.start, s.end, s.label) for s, _ in predicted
    ]
    assert all(
        m["text"] == text[m["start"] : m["end"]] and m["mapped_to"] is None for m in misaligned
    )
    assert component.stats["misaligned"] == len(predicted) and component.stats["written"] == 0
    assert f"{len(predicted)} of {len(predicted)} predicted spans do not align" in caplog.text

    expand = spacy.blank("en")
    expand.add_pipe("gpner", config={"model": str(served_model), "alignment_mode": "expand"})
    doc = expand(text)
    check_doc(doc, predicted)
    assert len(doc.spans["gpner"]) == len(predicted)  # widened to the token, each one listed
    assert all(m["mapped_to"] == [0, 7] for m in doc.spans["gpner"].attrs["misaligned"])
    assert len(doc.ents) == 1


def test_bad_configs_fail_clearly(served_model):
    nlp = spacy.blank("zh")
    with pytest.raises(ValueError, match="needs config"):
        nlp.add_pipe("gpner")
    with pytest.raises(ValueError, match="alignment_mode"):
        nlp.add_pipe("gpner", config={"model": str(served_model), "alignment_mode": "loose"})


def test_factory_is_an_entry_point(served_model):
    """`pyproject.toml` declares the factory; where the package is installed with it (as in CI),
    spaCy finds "gpner" without any import of gpner."""
    root = Path(__file__).resolve().parents[1]
    declared = tomllib.loads((root / "pyproject.toml").read_text())["project"]["entry-points"]
    assert declared["spacy_factories"]["gpner"] == "gpner.spacy_component:make_gpner"
    installed = metadata.entry_points(group="spacy_factories").select(name="gpner")
    if not installed:
        if os.environ.get("CI"):
            pytest.fail("the spacy_factories entry point is not installed (pip install -e .)")
        pytest.skip("this environment's gpner was installed before the entry point existed")
    code = (
        "import spacy, sys; nlp = spacy.blank('zh'); "
        f"nlp.add_pipe('gpner', config={{'model': {str(served_model)!r}}}); "
        "doc = nlp('北京大学的张三来了'); print(sorted(s.label_ for s in doc.spans['gpner']))"
    )
    env = {**os.environ, "PYTHONPATH": str(root / "src")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert "'ORG'" in out.stdout
