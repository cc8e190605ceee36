"""The request body of ``/predict``: parsed by hand so that every bad input gets a clear 4xx.

Order of checks: body size (413, done by the app's middleware before the body is read whole),
UTF-8 and JSON syntax (422), field types (422), the size limits ``max_texts`` and ``max_chars``
(413), the threshold's floor ``min_threshold`` (422), then the texts themselves (422): a lone
surrogate (not encodable as UTF-8, so no answer could carry it back) or a NUL (U+0000). Every
error names its field, index and limit. After prediction, :func:`check_span_counts` enforces
``max_spans`` (413), so no request can make the server build an unbounded answer.
"""

from __future__ import annotations

import json

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gpner.serve.limits import Limits

__all__ = ["ApiError", "Limits", "PredictRequest", "check_span_counts", "parse_predict_request"]


class ApiError(Exception):
    """An error answer: HTTP ``status``, a stable ``code`` and a message; extra fields go along."""

    def __init__(self, status: int, code: str, message: str, **extra) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra

    def body(self) -> dict:
        return {"error": self.code, "detail": self.message, **self.extra}


class PredictRequest(BaseModel):
    """Texts to tag; ``threshold`` (on the logit) and ``flat`` default to the model's own."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    texts: list[str] = Field(min_length=1, description="texts to tag (an empty one gets no spans)")
    threshold: float | None = Field(None, description="decoding threshold on the span logit")
    flat: bool | None = Field(None, description="keep only non-overlapping spans")


def _loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


def _validation_error(error: ValidationError) -> ApiError:
    problems = [
        {"field": _loc(e["loc"]), "type": e["type"], "message": e["msg"]}
        for e in error.errors(include_url=False, include_input=False, include_context=False)
    ]
    summary = "; ".join(f"{p['field']}: {p['message']}" for p in problems)
    return ApiError(422, "invalid_request", summary, errors=problems)


def _check_text(index: int, text: str, limits: Limits) -> None:
    if len(text) > limits.max_chars:
        raise ApiError(
            413,
            "text_too_long",
            f"texts[{index}] has {len(text)} characters, more than max_chars={limits.max_chars}",
            limit="max_chars",
            max=limits.max_chars,
            got=len(text),
            index=index,
        )
    for position, char in enumerate(text):
        code = ord(char)
        if 0xD800 <= code <= 0xDFFF:
            raise ApiError(
                422,
                "lone_surrogate",
                f"texts[{index}] has a lone surrogate U+{code:04X} at character {position}; "
                "send text as UTF-8 or as valid UTF-16 escape pairs",
                index=index,
                position=position,
            )
        if code == 0:
            raise ApiError(
                422,
                "nul_character",
                f"texts[{index}] has a NUL character (U+0000) at character {position}",
                index=index,
                position=position,
            )


def parse_predict_request(body: bytes, limits: Limits) -> PredictRequest:
    """The validated request, or :class:`ApiError` naming what is wrong with it."""
    if not body:
        raise ApiError(422, "invalid_request", 'empty body; send JSON like {"texts": ["..."]}')
    try:
        decoded = body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ApiError(
            422,
            "invalid_utf8",
            f"the body is not UTF-8: byte {error.start} ({body[error.start]:#04x})",
            position=error.start,
        ) from None
    try:
        obj = json.loads(decoded)
    except json.JSONDecodeError as error:
        raise ApiError(
            422,
            "invalid_json",
            f"malformed JSON at line {error.lineno} column {error.colno}: {error.msg}",
            line=error.lineno,
            column=error.colno,
        ) from None
    except (RecursionError, ValueError) as error:  # absurd nesting, integers too long to parse
        raise ApiError(422, "invalid_json", f"unparseable JSON: {type(error).__name__}") from None
    if isinstance(obj, dict) and isinstance(obj.get("texts"), list):
        count = len(obj["texts"])
        if count > limits.max_texts:
            raise ApiError(
                413,
                "too_many_texts",
                f"{count} texts, more than max_texts={limits.max_texts}",
                limit="max_texts",
                max=limits.max_texts,
                got=count,
            )
    try:
        request = PredictRequest.model_validate(obj)
    except ValidationError as error:
        raise _validation_error(error) from None
    if request.threshold is not None and request.threshold < limits.min_threshold:
        raise ApiError(
            422,
            "threshold_too_low",
            f"threshold {request.threshold} is below min_threshold={limits.min_threshold}",
            limit="min_threshold",
            min=limits.min_threshold,
            got=request.threshold,
        )
    for index, text in enumerate(request.texts):
        _check_text(index, text, limits)
    return request


def check_span_counts(spans: list[list], limits: Limits) -> None:
    """413 naming ``max_spans`` when a text of the request has more predicted spans than it."""
    for index, found in enumerate(spans):
        if len(found) > limits.max_spans:
            raise ApiError(
                413,
                "too_many_spans",
                f"texts[{index}] has {len(found)} predicted spans, more than "
                f"max_spans={limits.max_spans}; raise the threshold or split the text",
                limit="max_spans",
                max=limits.max_spans,
                got=len(found),
                index=index,
            )
