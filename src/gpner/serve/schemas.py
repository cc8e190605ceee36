"""Response shapes, for the OpenAPI docs (answers are built as plain dicts, not validated)."""

from __future__ import annotations

from pydantic import BaseModel, Field

__all__ = ["ErrorBody", "PredictResponse", "RenderResponse", "SpanOut", "TextResult"]


class SpanOut(BaseModel):
    start: int = Field(description="first character, in Unicode code points")
    end: int = Field(description="one past the last character (half-open)")
    label: str
    text: str = Field(description="the mention: text[start:end]")
    score: float = Field(description="the span's logit, rounded to 4 digits")


class TextResult(BaseModel):
    text: str
    spans: list[SpanOut]


class PredictResponse(BaseModel):
    results: list[TextResult] = Field(description="one per request text, in order")


class RenderResponse(PredictResponse):
    html: str = Field(description="the texts with stacked underlines; CSS at /static/render.css")


class ErrorBody(BaseModel):
    error: str = Field(description="a stable code, e.g. too_many_texts, invalid_json")
    detail: str = Field(description="what is wrong, naming the field, index or limit")
    limit: str | None = Field(None, description="the limit exceeded, for 413 answers")
