"""The HTML renderer: stacked underlines keep nested and crossing spans apart, text intact."""

from html.parser import HTMLParser

from hypothesis import given, settings
from hypothesis import strategies as st

from gpner.cli import main
from gpner.data.spans import Span
from gpner.render import assign_slots, label_colors, render_page, render_text


class _Collect(HTMLParser):
    """Text content, one record per tag element, and per segment its text and line slots."""

    def __init__(self):
        super().__init__()
        self.text, self.tags, self.segments, self.stack = [], [], [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        cls = attrs.get("class", "")
        self.stack.append(cls)
        if cls == "gpner-seg":
            self.segments.append({"text": "", "slots": []})
        elif cls == "gpner-line":
            slot = int(attrs["style"].split("--slot:")[1].split(";")[0])
            self.segments[-1]["slots"].append(slot)
        elif cls == "gpner-tag":
            self.tags.append(attrs)

    def handle_endtag(self, tag):
        self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)
        if self.stack and self.stack[-1] == "gpner-seg":
            self.segments[-1]["text"] += data


def parse(markup):
    parser = _Collect()
    parser.feed(markup)
    return parser


def test_nested_spans_get_their_own_rows_inner_first():
    spans = [Span(0, 4, "ORG"), Span(0, 2, "LOC"), Span(5, 7, "PER")]
    assert assign_slots(spans) == [1, 0, 0]
    crossing = [Span(0, 3, "A"), Span(2, 5, "B"), Span(4, 6, "C")]
    assert assign_slots(crossing) == [0, 1, 0]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 30), st.integers(1, 8), st.sampled_from("ABC")), max_size=12)
)
def test_overlapping_spans_never_share_a_row(raw):
    spans = sorted({Span(a, a + w, label) for a, w, label in raw})
    slots = assign_slots(spans)
    for i, a in enumerate(spans):
        below = {slots[j] for j, b in enumerate(spans) if j != i and b.overlaps(a)}
        assert slots[i] not in below
        # lowest free row given the spans placed before it (shorter ones, then by position)
        assert slots[i] <= len(below)
        for j, b in enumerate(spans):
            if _contains(a, b) and (b.end - b.start) < (a.end - a.start):
                assert slots[j] < slots[i]  # the inner one is nearer the text


def test_markup_keeps_the_text_and_shows_every_span():
    text = "北京大学的<b>张三</b> & 😀李四"
    spans = [
        (Span(0, 4, "ORG"), 0.62),
        (Span(0, 2, "LOC"), 1.47),
        (Span(8, 10, "PER"), 1.97),
        (Span(1, 3, "LOC"), 0.01),  # crosses ORG's inner LOC
        (Span(18, 20, "PER"), 2.0),
    ]
    colors = label_colors(["LOC", "ORG", "PER"])
    parsed = parse(render_text(text, spans, colors))
    assert "".join(parsed.text) == text  # escaped markup reads back as the input, nothing added
    got = {(int(t["data-start"]), int(t["data-end"]), t["data-label"]) for t in parsed.tags}
    assert got == {(s.start, s.end, s.label) for s, _ in spans}
    for tag in parsed.tags:
        assert "score" in tag["title"] and tag["data-score"]
    # each segment draws one line per covering span, each span keeping its row throughout:
    # LOC [0,2) row 0, the crossing LOC [1,3) row 1, ORG [0,4) around both row 2
    by_text = {seg["text"]: seg["slots"] for seg in parsed.segments}
    assert sorted(by_text["北"]) == [0, 2]
    assert sorted(by_text["京"]) == [0, 1, 2]
    assert sorted(by_text["大"]) == [1, 2]
    assert sorted(by_text["学"]) == [2]
    assert sorted(by_text["李四"]) == [0]
    assert "<b>" not in render_text(text, spans, colors)


def _reference_slots(spans):
    """The row rule in its plain quadratic form: shortest first, the lowest row no overlapping
    span already placed has."""
    order = sorted(range(len(spans)), key=lambda k: (spans[k].end - spans[k].start, spans[k]))
    slots, placed = [0] * len(spans), []
    for k in order:
        taken = {slots[p] for p in placed if spans[p].overlaps(spans[k])}
        slots[k] = min(set(range(len(taken) + 1)) - taken)
        placed.append(k)
    return slots


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 30), st.integers(1, 8), st.sampled_from("ABC")), max_size=16)
)
def test_rows_and_segments_equal_the_plain_definitions(raw):
    # The renderer finds rows and covering spans by characters and a sweep (linear in the spans'
    # lengths; the old pairwise scans grew with the square of a long text's number of spans).
    spans = sorted({Span(a, a + w, label) for a, w, label in raw})
    assert assign_slots(spans) == _reference_slots(spans)
    text = "张三在北京工作。" * 5
    scored = [(span, 1.0) for span in spans]
    parsed = parse(render_text(text, scored, label_colors(["A", "B", "C"])))
    assert "".join(parsed.text) == text
    slots = _reference_slots(spans)
    bounds = sorted({0, len(text)} | {x.start for x in spans} | {x.end for x in spans})
    expected = [
        sorted(slots[k] for k, x in enumerate(spans) if x.start <= a and b <= x.end)
        for a, b in zip(bounds, bounds[1:])
    ]
    assert [sorted(seg["slots"]) for seg in parsed.segments] == [e for e in expected if e]


def test_page_is_self_contained(tmp_path):
    page = render_page(["张三在上海工作。"], [[(Span(0, 2, "PER"), 1.0)]], ["LOC", "PER"], "t<i>")
    assert "<script" not in page and "http" not in page and "@import" not in page
    assert ".gpner-line" in page and "t&lt;i&gt;" in page
    assert page.count('class="gpner-key"') == 2


def test_render_command(served_model, tmp_path, capsys):
    texts = tmp_path / "texts.txt"
    texts.write_text("北京大学的张三来了\n张三在上海工作。\n", encoding="utf-8")
    out = tmp_path / "out.html"
    assert main(["render", str(served_model), str(texts), "-o", str(out)]) == 0
    parsed = parse(out.read_text(encoding="utf-8"))
    tags = {(int(t["data-start"]), int(t["data-end"]), t["data-label"]) for t in parsed.tags}
    assert {(0, 4, "ORG"), (0, 2, "LOC"), (5, 7, "PER")} <= tags
    assert "spans in 2 texts" in capsys.readouterr().err


def _contains(a, b):
    """Whether span ``b`` lies within span ``a`` (labels ignored)."""
    return a.start <= b.start and b.end <= a.end
