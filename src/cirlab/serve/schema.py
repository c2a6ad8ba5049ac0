"""The HTTP API's request and response shapes, for an OpenAPI document that describes the API exactly.

The handlers read multipart forms themselves (to bound their size and give one-line errors), so
their request bodies are declared here by hand; responses are pydantic models, and every status a
route can answer is declared with the shared ``Error`` body.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class Error(BaseModel):
    error: str = Field(description="what was wrong and what to do, in one line")


class Item(BaseModel):
    id: str
    metadata: dict
    name: str
    image_url: str
    thumbnail_url: str


class Hit(Item):
    score: float


class Query(BaseModel):
    mode: Literal["composed", "text", "image"]
    text: str | None
    image_id: str | None
    k: int
    filter: dict | None = None


class SearchResponse(BaseModel):
    query: Query
    results: list[Hit]


class GalleryPage(BaseModel):
    total: int
    items: list[Item]


class Added(BaseModel):
    added: list[Item]
    duplicates: list[str] = Field([], description="ids of images sent more than once in this request: each is "
                                                  "stored once")
    size: int


class Removed(BaseModel):
    removed: str
    size: int


class Health(BaseModel):
    status: Literal["ok"]
    index_size: int


class Info(BaseModel):
    cirlab_version: str
    model: dict
    encoders: dict
    index: dict
    limits: dict
    gallery_changes: bool
    batching: dict  # window_ms, max_batch
    latency_ms: dict  # rolling p50 / p90 / p99 of each search stage (decode, queue, encode, fuse, search, total)


def errors(*statuses: int) -> dict:
    """The ``responses`` entry of a route for these error statuses, each with the ``Error`` body."""
    text = {401: "no valid API token", 403: "gallery changes are off", 404: "no such gallery image",
            405: "method not allowed (see the Allow header)", 413: "too large (bytes or pixels)",
            415: "not an image, or not a form", 422: "a field is missing, malformed or out of range"}
    return {s: {"model": Error, "description": text[s]} for s in statuses}


def form_body(fields: dict, required: list[str] | None = None, files: str | None = None, many: bool = False,
              rules: dict | None = None) -> dict:
    """An ``openapi_extra`` request body: the same fields as multipart/form-data (with the file field
    ``files`` as binary, an array of them where ``many``) and, without files, as a urlencoded form.
    ``rules``: JSON-schema keywords over the fields (``anyOf``, ``not``) for each form."""
    multipart = dict(fields)
    if files:
        binary = {"type": "string", "format": "binary", "description": "an image file (JPEG, PNG, WebP, GIF, BMP, "
                                                                      "AVIF, TIFF); bytes that do not decode: 415"}
        multipart[files] = {"type": "array", "items": binary, "minItems": 1} if many else binary
    content = {"multipart/form-data": {"schema": {"type": "object", "properties": multipart,
                                                  **({"required": required} if required else {}), **(rules or {})}}}
    if not many:
        plain = {k: v for k, v in (rules or {}).items() if k != "anyOf"}
        if rules and "anyOf" in rules:  # no file in a urlencoded form: one of the remaining fields is needed
            plain["anyOf"] = [r for r in rules["anyOf"] if set(r.get("required", [])) <= set(fields)]
        content["application/x-www-form-urlencoded"] = {"schema": {"type": "object", "properties": fields, **plain}}
    return {"requestBody": {"required": True, "content": content}}
