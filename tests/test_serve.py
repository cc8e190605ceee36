"""The HTTP service, against a real uvicorn server on 127.0.0.1 queried with httpx."""

import asyncio
import os
import re
import signal
import sys

import pytest

pytest.importorskip("fastapi", reason="needs pip install fastapi")
httpx = pytest.importorskip("httpx", reason="needs pip install httpx")

import gpner  # noqa: E402
from gpner.data.writers import prediction_record  # noqa: E402
from gpner.serve.app import create_app  # noqa: E402
from gpner.serve.limits import Limits  # noqa: E402
from tests.serve_helpers import (  # noqa: E402
    REQUEST_SECONDS,
    ServeProcess,
    running_server,
)

TEXTS = [
    "北京大学的张三来了",
    "张三在上海工作。",
    # longer than the model's 24-token window: predicted window by window and stitched
    "上海大学的刘备来了，昨天李四说深圳很好，王小明去了杭州。北京大学的赵敏来了，张三在广州工作。",
    "张三在上海工作。😀李四去了北京。",  # a non-BMP character before a mention
    "李四去了北京。e\u0301\u0323李四去了北京。",  # combining marks before a mention
    "🇨🇳👩\u200d👩\u200d👧张三",  # a flag and a ZWJ sequence
    "  昨天赵敏说杭州很好  ",
]


def get(url, **kwargs):
    return httpx.get(url, timeout=REQUEST_SECONDS, **kwargs)


def post(url, **kwargs):
    return httpx.post(url, timeout=REQUEST_SECONDS, **kwargs)


def offline(model, texts, **kwargs):
    return [prediction_record(t, s) for t, s in zip(texts, gpner.predict(model, texts, **kwargs))]


def assert_same_predictions(served, expected, threshold=0.0, tol=2e-3):
    """Equal texts and spans; scores equal within ``tol`` (batches pad differently, so the last
    float bits may differ); a span within ``tol`` of the threshold may be on either side."""
    assert [r["text"] for r in served] == [r["text"] for r in expected]
    for got, want in zip(served, expected):
        a = {(s["start"], s["end"], s["label"]): s for s in got["spans"]}
        b = {(s["start"], s["end"], s["label"]): s for s in want["spans"]}
        for key in a.keys() ^ b.keys():
            score = (a.get(key) or b.get(key))["score"]
            assert abs(score - threshold) <= tol, (got["text"], key, score)
        for key in a.keys() & b.keys():
            assert a[key]["score"] == pytest.approx(b[key]["score"], abs=tol)
            assert a[key]["text"] == got["text"][key[0] : key[1]]


@pytest.fixture(scope="module")
def model(served_model):
    return gpner.load(served_model)


@pytest.fixture(scope="module")
def server(served_model):
    app = create_app(served_model, Limits(max_texts=8, max_chars=400, max_request_bytes=8192))
    with running_server(app) as url:
        yield url, app


def test_health_info_and_docs(server, model):
    url, _ = server
    health = get(f"{url}/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    info = get(f"{url}/info").json()
    assert info["labels"] == model.labels
    assert info["gpner_version"] == gpner.__version__
    assert info["max_length"] == model.config.data.max_length == 24
    assert info["encoder"] == {"kind": "char_transformer", "name": None}  # no local path
    assert info["head"]["kind"] == "global_pointer"
    assert info["limits"] == {
        "max_texts": 8,
        "max_chars": 400,
        "max_request_bytes": 8192,
        "min_threshold": -10.0,
        "max_spans": 1000,
    }
    schema = get(f"{url}/openapi.json").json()
    body = schema["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]
    assert set(body["schema"]["properties"]) == {"texts", "threshold", "flat"}
    assert "413" in schema["paths"]["/predict"]["post"]["responses"]
    assert get(f"{url}/docs").status_code == 200


def test_info_names_the_encoder_without_the_servers_paths(model):
    import copy
    import json

    from gpner.serve.app import _model_info
    from gpner.serve.batcher import MicroBatcher

    shown = copy.copy(model)
    shown.config = copy.deepcopy(model.config)
    shown.config.encoder.path = "/srv/models/private/m3e-small"
    info = _model_info(shown, Limits(), MicroBatcher(lambda *a: []))
    assert info["encoder"]["name"] == "m3e-small"
    assert "/srv" not in json.dumps(info)


def test_predict_matches_offline_predict(server, model):
    url, _ = server
    response = post(f"{url}/predict", json={"texts": TEXTS})
    assert response.status_code == 200
    served = response.json()["results"]
    assert_same_predictions(served, offline(model, TEXTS))
    assert any(r["spans"] for r in served)
    nested = served[0]["spans"]  # 北京大学 (ORG) holding 北京 (LOC)
    assert {(s["start"], s["end"], s["label"]) for s in nested} >= {(0, 4, "ORG"), (0, 2, "LOC")}
    # the windowed long text finds mentions beyond the first window
    assert any(s["end"] > 24 for s in served[2]["spans"])
    # offsets are code points (UTF-16 would put these one and two units later)
    assert {"start": 13, "end": 15, "label": "LOC", "text": "北京"} in strip_scores(served[3])
    assert {"start": 14, "end": 16, "label": "LOC", "text": "北京"} in strip_scores(served[4])


def strip_scores(record):
    return [
        {k: v for k, v in s.items() if k not in ("score", "probability")} for s in record["spans"]
    ]


def test_threshold_and_flat(server, model):
    url, _ = server
    for body, kwargs in [
        ({"threshold": 1.0}, {"threshold": 1.0}),
        ({"threshold": -0.5, "flat": True}, {"threshold": -0.5, "flat": True}),
    ]:
        served = post(f"{url}/predict", json={"texts": TEXTS, **body}).json()["results"]
        assert_same_predictions(served, offline(model, TEXTS, **kwargs), kwargs["threshold"])
        if kwargs.get("flat"):
            for record in served:
                spans = sorted((s["start"], s["end"]) for s in record["spans"])
                assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))
        else:
            assert all(s["score"] > 1.0 for r in served for s in r["spans"])


def test_limits_answer_413_naming_the_limit(server):
    url, _ = server
    cases = [
        ({"texts": ["张三"] * 9}, "too_many_texts", "max_texts"),
        ({"texts": ["张三", "x" * 401]}, "text_too_long", "max_chars"),
        ({"texts": ["张" * 400] * 8}, "request_too_large", "max_request_bytes"),
    ]
    for body, code, limit in cases:
        response = post(f"{url}/predict", json=body)
        assert response.status_code == 413, response.text
        error = response.json()
        assert error["error"] == code and error["limit"] == limit
        assert limit in error["detail"]
    assert post(f"{url}/predict", json={"texts": ["张三", "x" * 401]}).json()["index"] == 1

    # a chunked body (no Content-Length) is cut off at the limit too
    def chunks():
        yield b'{"texts": ["'
        for _ in range(100):
            yield "张三在上海工作。".encode() * 8
        yield b'"]}'

    response = post(f"{url}/predict", content=chunks())
    assert response.status_code == 413 and response.json()["limit"] == "max_request_bytes"
    # right at the limits is fine
    ok = post(f"{url}/predict", json={"texts": ["李四" * 165] * 8})  # 7.9 kB
    assert ok.status_code == 200, ok.text


def test_a_client_cannot_make_the_server_build_an_unbounded_answer(served_model, model):
    # The old defect: a 6 KB request with threshold -1e30 made the tiny model answer 10.5 MB.
    long_text = TEXTS[2] * 4
    flood = offline(model, [long_text], threshold=-10.0)[0]["spans"]
    cap = len(offline(model, [long_text])[0]["spans"])  # what the model's own threshold finds
    assert len(flood) > cap  # at the floor this text has more spans than the cap
    app = create_app(served_model, Limits(min_threshold=-10.0, max_spans=cap))
    with running_server(app) as url:
        low = post(f"{url}/predict", json={"texts": ["张三"], "threshold": -1e30})
        assert low.status_code == 422, low.text
        assert low.json()["limit"] == "min_threshold" and "min_threshold" in low.json()["detail"]
        for endpoint in ("predict", "render"):
            body = {"texts": ["张三", long_text], "threshold": -10.0}
            capped = post(f"{url}/{endpoint}", json=body)
            assert capped.status_code == 413, capped.text
            error = capped.json()
            assert error["error"] == "too_many_spans" and error["limit"] == "max_spans"
            assert (
                error["index"] == 1
                and error["got"] == len(flood)
                and "max_spans" in error["detail"]
            )
        # at the model's own threshold the same texts are answered
        fine = post(f"{url}/predict", json={"texts": ["张三在上海工作。", long_text]})
        assert fine.status_code == 200
        assert get(f"{url}/info").json()["limits"]["max_spans"] == cap
        assert get(f"{url}/health").json()["status"] == "ok"


def test_empty_and_whitespace_texts_get_no_spans_not_a_refusal(server, model):
    # A document sent line by line has empty lines; the old service refused the whole batch.
    url, _ = server
    texts = ["北京大学的张三来了", "", " ", "\u3000\t", "\n", "张三在上海工作。"]
    for endpoint in ("predict", "render"):
        response = post(f"{url}/{endpoint}", json={"texts": texts})
        assert response.status_code == 200, response.text
        results = response.json()["results"]
        assert [r["text"] for r in results] == texts
        assert [r["spans"] for r in results[1:5]] == [[]] * 4
    assert_same_predictions(results, offline(model, texts))


BAD_BODIES = [
    (b"", 422, "invalid_request"),
    (b"{", 422, "invalid_json"),
    (b'{"texts": ["a",]}', 422, "invalid_json"),
    (b"\xff\xfe{}", 422, "invalid_utf8"),
    (b'{"texts": ["\xe5\x8c"]}', 422, "invalid_utf8"),  # a UTF-8 sequence cut short
    (b"[1, 2]", 422, "invalid_request"),
    (b'"texts"', 422, "invalid_request"),
    (b"{}", 422, "invalid_request"),
    (b'{"texts": "abc"}', 422, "invalid_request"),
    (b'{"texts": [1]}', 422, "invalid_request"),
    (b'{"texts": [null]}', 422, "invalid_request"),
    (b'{"texts": [["a"]]}', 422, "invalid_request"),
    (b'{"texts": []}', 422, "invalid_request"),
    (b'{"texts": ["a"], "threshold": "0.5"}', 422, "invalid_request"),
    (b'{"texts": ["a"], "threshold": NaN}', 422, "invalid_request"),
    (b'{"texts": ["a"], "threshold": 1e999}', 422, "invalid_request"),
    (b'{"texts": ["a"], "flat": "yes"}', 422, "invalid_request"),
    (b'{"texts": ["a"], "flat": 1}', 422, "invalid_request"),
    (b'{"texts": ["a"], "extra": 1}', 422, "invalid_request"),
    (b'{"te\\ud800xts": ["a"]}', 422, "invalid_request"),  # a lone surrogate in a key
    (b'{"texts": ["\\ud800"]}', 422, "lone_surrogate"),
    (b'{"texts": ["ab\\udfff"]}', 422, "lone_surrogate"),
    (b'{"texts": ["a\\u0000b"]}', 422, "nul_character"),
    (b'{"texts": ["a"], "threshold": ' + b"1" * 5000 + b"}", 422, "invalid_json"),
    (b"[" * 3000 + b"]" * 3000, 422, "invalid_json"),
]


def test_bad_inputs_get_clear_4xx_and_the_worker_survives(server):
    url, app = server
    with httpx.Client(base_url=url) as client:
        for body, status, code in BAD_BODIES:
            response = client.post("/predict", content=body)
            assert response.status_code == status, (body[:40], response.text)
            error = response.json()
            assert error["error"] == code, (body[:40], error)
            assert error["detail"], body[:40]
        lone = client.post("/predict", content=b'{"texts": ["ok", "ab\\ud800"]}').json()
        assert lone["index"] == 1 and lone["position"] == 2 and "U+D800" in lone["detail"]
        field = client.post("/predict", content=b'{"texts": ["a", 3]}').json()
        assert "texts[1]" in field["detail"]
        assert client.get("/predict").status_code == 405
        assert client.get("/nowhere").status_code == 404
        assert client.get("/health").json()["status"] == "ok"
        # a valid escaped surrogate pair is one non-BMP character, not an error
        pair = client.post("/predict", content=b'{"texts": ["\\ud83d\\ude00\\u5f20\\u4e09"]}')
        assert pair.status_code == 200 and pair.json()["results"][0]["text"] == "😀张三"
        assert client.post("/predict", json={"texts": TEXTS[:2]}).status_code == 200
    assert app.state.batcher.alive


def test_concurrent_clients_get_their_own_answers(served_model, model):
    app = create_app(served_model, max_batch=16, max_wait_ms=20)
    people, places = ["张三", "李四", "王小明", "赵敏", "刘备"], ["北京", "上海", "广州", "深圳"]
    requests = [
        [
            f"{people[k % 5]}在{places[k % 4]}工作。",
            f"{places[(k + 1) % 4]}大学的{people[k % 3]}来了",
        ][: 1 + k % 2]
        for k in range(24)
    ]
    expected = {t: r for t, r in zip(sum(requests, []), offline(model, sum(requests, [])))}

    async def clients(url):
        async with httpx.AsyncClient(base_url=url, timeout=REQUEST_SECONDS) as client:
            return await asyncio.gather(
                *[client.post("/predict", json={"texts": t}) for t in requests]
            )

    with running_server(app) as url:
        responses = asyncio.run(clients(url))
    for texts, response in zip(requests, responses):
        assert response.status_code == 200
        served = response.json()["results"]
        assert [r["text"] for r in served] == texts
        assert_same_predictions(served, [expected[t] for t in texts])
    stats = app.state.batcher.stats
    assert stats.texts == sum(len(t) for t in requests)
    assert stats.batches < len(requests) and stats.largest > 1  # requests shared model calls
    assert stats.largest <= 16 + 1  # a batch stops gathering once max_batch texts are in


def test_a_failing_model_call_fails_its_request_not_the_server(served_model):
    model = gpner.load(served_model)
    calls = {"n": 0}
    forward = model.forward

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("simulated failure")
        return forward(*args, **kwargs)

    model.forward = flaky
    app = create_app(model)
    with running_server(app) as url:
        first = post(f"{url}/predict", json={"texts": ["张三在上海工作。"]})
        assert first.status_code == 500 and first.json()["error"] == "internal_error"
        second = post(f"{url}/predict", json={"texts": ["张三在上海工作。"]})
        assert second.status_code == 200 and second.json()["results"][0]["spans"]
        assert get(f"{url}/health").json()["status"] == "ok"


def test_render_endpoint_returns_the_offline_markup(server, model):
    from gpner.render import label_colors, render_text

    url, _ = server
    body = post(f"{url}/render", json={"texts": TEXTS[:2]}).json()
    expected = gpner.predict(model, TEXTS[:2])
    assert body["results"] == offline(model, TEXTS[:2])
    colors = label_colors(model.labels)
    assert body["html"] == "\n".join(render_text(t, p, colors) for t, p in zip(TEXTS, expected))
    page = get(f"{url}/")
    assert page.status_code == 200 and 'src="static/page.js"' in page.text
    assert "http" not in re.sub(r"<footer>.*</footer>", "", page.text, flags=re.S)  # no CDN
    assert get(f"{url}/static/page.js").headers["content-type"].startswith("text/javascript")
    assert ".gpner-line" in get(f"{url}/static/render.css").text


def test_gpner_serve_command(served_model, tmp_path):
    """`gpner serve` itself, in a subprocess on a port the OS picks."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([os.path.abspath("src"), os.environ.get("PYTHONPATH", "")]),
    }
    cmd = [
        sys.executable,
        "-m",
        "gpner",
        "serve",
        str(served_model),
        "--port",
        "0",
        "--max-texts",
        "2",
        "--max-queue",
        "7",
        "--max-spans",
        "9",
        "--min-threshold",
        "-3",
    ]
    server = ServeProcess(cmd, env)
    try:
        url = server.wait_ready()
        assert get(f"{url}/health").json()["status"] == "ok"
        info = get(f"{url}/info").json()
        assert info["batching"]["max_queue"] == 7
        assert info["limits"]["max_spans"] == 9 and info["limits"]["min_threshold"] == -3
        response = post(f"{url}/predict", json={"texts": ["北京大学的张三来了"]})
        assert response.status_code == 200 and response.json()["results"][0]["spans"]
        assert post(f"{url}/predict", json={"texts": ["a"] * 3}).json()["limit"] == "max_texts"
    finally:
        server.stop()
    # uvicorn shuts down cleanly on SIGTERM, and a clean shutdown exits 0
    assert "Application shutdown complete" in server.log
    assert server.process.returncode == 0, server.log


def test_serve_and_render_errors_are_one_line(tmp_path, capsys, served_model):
    from gpner.cli import main

    assert main(["serve", str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err.strip() == f"gpner: error: no such model: {tmp_path / 'nope'}"
    out = tmp_path / "out.html"
    assert main(["render", str(served_model), str(tmp_path / "none.txt"), "-o", str(out)]) == 2
    assert "gpner: error: no such input file" in capsys.readouterr().err
    assert not out.exists()


def test_sigterm_under_load_answers_every_accepted_request(served_model):
    """SIGTERM while requests are in flight: each accepted request gets its full answer, new
    connections are refused, and the exit status is 0 (a real `gpner serve` on 127.0.0.1)."""
    import threading
    import time

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.abspath("src"), ""])}
    # one request per model call, so that the requests queue up behind the model
    cmd = [sys.executable, "-m", "gpner", "serve", str(served_model), "--port", "0",
           "--max-batch", "1", "--threads", "1"]  # fmt: skip
    server = ServeProcess(cmd, env)
    texts = [TEXTS[2] * 20] * 8  # about 1900 characters each, windowed
    outcomes: list = []
    try:
        url = server.wait_ready()

        def client():
            try:
                answer = post(f"{url}/predict", json={"texts": texts})
                outcomes.append(answer.status_code == 200 and len(answer.json()["results"]))
            except httpx.ConnectError:  # refused: sent after the server stopped accepting
                outcomes.append("refused")
            except httpx.HTTPError as error:  # accepted, then dropped: the failure looked for
                outcomes.append(f"{type(error).__name__}: {error}")

        clients = [threading.Thread(target=client) for _ in range(12)]
        for thread in clients:
            thread.start()
        deadline = time.monotonic() + REQUEST_SECONDS
        while get(f"{url}/health").json()["batches"] < 2:  # the model is working through them
            assert time.monotonic() < deadline, "the requests never reached the model"
            time.sleep(0.02)
        server.process.send_signal(signal.SIGTERM)
        refused = False
        while server.process.poll() is None and time.monotonic() < deadline:
            try:
                httpx.get(f"{url}/health", timeout=REQUEST_SECONDS)
            except httpx.ConnectError:
                refused = True  # a new connection, refused while the others are answered
                break
            except httpx.HTTPError:
                pass
            time.sleep(0.01)
        for thread in clients:
            thread.join(REQUEST_SECONDS)
        server.process.wait(REQUEST_SECONDS)
    finally:
        server.stop()
    assert refused
    assert len(outcomes) == 12 and set(outcomes) <= {len(texts), "refused"}, outcomes
    assert outcomes.count(len(texts)) >= 2  # those the model had started on, at least
    assert server.process.returncode == 0, server.log
