"""The HTTP service: a FastAPI app over :func:`gpner.inference.predict` and :mod:`gpner.render`.

``create_app(model)`` builds it; ``gpner serve`` runs it with uvicorn. Endpoints: ``POST
/predict``, ``POST /render``, ``GET /health``, ``GET /info``, the page at ``/`` and the OpenAPI
schema at ``/openapi.json`` (interactive docs at ``/docs``).
"""

from __future__ import annotations

import json
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, Response

from gpner.serve.batcher import MicroBatcher, QueueFull
from gpner.serve.limits import Limits
from gpner.serve.requests import (
    ApiError,
    PredictRequest,
    check_span_counts,
    parse_predict_request,
)
from gpner.serve.schemas import ErrorBody, PredictResponse, RenderResponse

__all__ = ["create_app"]


def _json(body: Any, status: int = 200) -> Response:
    # Texts are checked for lone surrogates before they can reach an answer, so UTF-8 is safe.
    data = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return Response(data, status_code=status, media_type="application/json")


def _error(error: ApiError) -> Response:
    # ASCII escapes: an error may quote a key of the request, which can hold anything.
    return Response(
        json.dumps(error.body()).encode("ascii"),
        status_code=error.status,
        media_type="application/json",
    )


class _BodyTooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware: a request body over ``max_bytes`` gets a 413 before it is read whole."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _too_large(self, got: int | None) -> ApiError:
        seen = f"{got} bytes" if got is not None else "more bytes"
        return ApiError(
            413,
            "request_too_large",
            f"request body of {seen} exceeds max_request_bytes={self.max_bytes}",
            limit="max_request_bytes",
            max=self.max_bytes,
            got=got,
        )

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await _error(self._too_large(int(length)))(scope, receive, send)
        received = 0
        started = False

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _BodyTooLarge
            return message

        async def tracked_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracked_send)
        except _BodyTooLarge:
            if not started:
                await _error(self._too_large(None))(scope, receive, send)


def _asset(package: str, name: str) -> str:
    return resources.files(package).joinpath(name).read_text(encoding="utf-8")


def _model_info(model, limits: Limits, batcher: MicroBatcher) -> dict:
    from gpner import __version__
    from gpner.hub import display_name

    cfg = model.config
    return {
        "gpner_version": __version__,
        "labels": list(model.labels),
        # the encoder's name, never the server's directory layout
        "encoder": {"kind": cfg.encoder.kind, "name": display_name(cfg.encoder.path)},
        "head": {
            "kind": cfg.head.kind,
            "head_size": cfg.head.head_size,
            "max_width": cfg.head.max_width,
        },
        "max_length": cfg.data.max_length,
        "stride": cfg.data.stride,
        "threshold": cfg.train.threshold,
        "flat": cfg.train.flat,
        "offsets": "half-open, in Unicode code points",
        "limits": limits.as_dict(),
        "batching": {
            "max_batch": batcher.max_batch,
            "max_wait_ms": batcher.max_wait * 1000,
            "max_queue": batcher.max_queue,
        },
    }


_BODY_DOC = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": PredictRequest.model_json_schema()}},
    }
}
_ERRORS = {
    413: {"model": ErrorBody, "description": "a limit was exceeded (named in `limit`)"},
    422: {
        "model": ErrorBody,
        "description": "malformed JSON, wrong types, bad texts, a threshold below min_threshold",
    },
    503: {"model": ErrorBody, "description": "too many texts queued"},
}


def create_app(
    model,
    limits: Limits | None = None,
    max_batch: int = 32,
    max_wait_ms: float = 2.0,
    max_queue: int = 4096,
) -> FastAPI:
    """The app serving ``model`` (a loaded model, or a path for :func:`gpner.load`).

    ``max_batch`` texts at most are gathered for one model call, waiting at most ``max_wait_ms``
    for them; ``max_batch=1`` serves request by request (the benchmark's baseline).
    """
    from gpner import load
    from gpner.data.writers import prediction_record
    from gpner.inference import predict
    from gpner.render import label_colors, render_legend, render_text, stylesheet

    if isinstance(model, str | Path):
        model = load(model)
    model.eval()
    limits = limits or Limits()
    colors = label_colors(model.labels)

    def run_model(texts, threshold, flat):
        return predict(model, texts, batch_size=max_batch, threshold=threshold, flat=flat)

    batcher = MicroBatcher(run_model, max_batch, max_wait_ms / 1000, max_queue)
    page = _asset(__package__ + ".static", "index.html")
    script = _asset(__package__ + ".static", "page.js")
    css = stylesheet()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await batcher.start()
        try:
            yield
        finally:
            await batcher.stop()

    app = FastAPI(
        title="gpner",
        summary="Named entities, nested ones included, with a GlobalPointer model",
        version=_model_info(model, limits, batcher)["gpner_version"],
        lifespan=lifespan,
    )
    app.state.batcher = batcher
    app.state.model = model
    app.add_middleware(BodyLimit, max_bytes=limits.max_request_bytes)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> Response:
        return _error(error)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, error: Exception) -> Response:
        return _error(ApiError(500, "internal_error", f"{type(error).__name__} (see server log)"))

    async def predictions(request: Request) -> tuple[PredictRequest, list]:
        with batcher.arriving():  # a batch being gathered waits for this one
            parsed = parse_predict_request(await request.body(), limits)
            try:
                job = batcher.enqueue(parsed.texts, parsed.threshold, parsed.flat)
            except QueueFull as error:
                raise ApiError(503, "busy", str(error), limit="max_queue") from None
        spans = await job
        check_span_counts(spans, limits)
        return parsed, spans

    @app.post(
        "/predict",
        openapi_extra=_BODY_DOC,
        responses={200: {"model": PredictResponse}, **_ERRORS},
        summary="Entity spans of each text",
    )
    async def predict_endpoint(request: Request) -> Response:
        """Per text, every predicted span: half-open code-point offsets, label, mention text and
        score (the span's logit; > threshold means predicted). Long texts are windowed as in
        ``gpner predict``."""
        parsed, spans = await predictions(request)
        results = [prediction_record(t, s) for t, s in zip(parsed.texts, spans)]
        return _json({"results": results})

    @app.post(
        "/render",
        openapi_extra=_BODY_DOC,
        responses={200: {"model": RenderResponse}, **_ERRORS},
        summary="Predictions and their HTML rendering",
    )
    async def render_endpoint(request: Request) -> Response:
        """As ``/predict``, plus ``html``: the texts with their spans drawn as stacked underlines
        (the markup of ``gpner render``; style sheet at ``/static/render.css``)."""
        parsed, spans = await predictions(request)
        results = [prediction_record(t, s) for t, s in zip(parsed.texts, spans)]
        markup = "\n".join(render_text(t, s, colors) for t, s in zip(parsed.texts, spans))
        return _json({"results": results, "html": markup})

    @app.get("/health", summary="Whether the model worker is running")
    async def health() -> Response:
        if not batcher.alive:
            return _json({"status": "down"}, 503)
        stats = batcher.stats
        return _json({"status": "ok", "batches": stats.batches, "texts": stats.texts})

    @app.get("/info", summary="Model and server settings")
    async def info() -> Response:
        return _json(_model_info(model, limits, batcher))

    @app.get("/", include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page.replace("{{legend}}", render_legend(colors)))

    @app.get("/static/page.js", include_in_schema=False)
    async def page_script() -> Response:
        return Response(script, media_type="text/javascript")

    @app.get("/static/render.css", include_in_schema=False)
    async def page_css() -> Response:
        return Response(css, media_type="text/css")

    return app
