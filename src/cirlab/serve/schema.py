"""The HTTP API's request and response shapes, for an OpenAPI document that describes the API exactly.

A form's fields are a pydantic model (:func:`search_form`): the request body's OpenAPI schema is generated from
it (:func:`form_body`) and the handler validates the form it read with it (:func:`form_fields`), so the schema
and the validation are one thing. The handlers read the multipart body themselves, to bound its size and its
parts; the file field is read apart. Responses are pydantic models, and every status a route can answer is
declared with the shared ``Error`` body.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, Field, ValidationError, create_model, field_validator

from cirlab.session import HISTORY_MODES, MAX_TURNS

_SCALAR = r'("[A-Za-z0-9 _.:/-]*"|0|-?[1-9][0-9]{0,8}|true|false)'
_VALUE = rf"({_SCALAR}|\[ ?{_SCALAR}( ?, ?{_SCALAR})* ?\])"
_PAIR = rf'"[A-Za-z_][A-Za-z0-9_.-]*" ?: ?{_VALUE}'
_WORDS = r'"[^"\\\s\x00-\x1f][^"\\\x00-\x1f]*"'  # any JSON string without escapes that says something
_TURN = rf'\{{ ?"(image_id|text)" ?: ?{_WORDS}( ?, ?"(image_id|text)" ?: ?{_WORDS})? ?\}}'
HISTORY_PATTERN = rf"^\[ ?({_TURN}( ?, ?{_TURN}){{0,17}})? ?\]$"  # the server takes any such JSON list
FILTER_PATTERN = rf"^\{{ ?{_PAIR}( ?, ?{_PAIR})* ?\}}$"  # ASCII filters; the server takes any such JSON object


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


class Searched(BaseModel):
    image: bool = Field(description="whether this query had a reference image")
    text: str | None = Field(description="the text it read")


class Query(BaseModel):
    mode: Literal["composed", "text", "image"]
    text: str | None
    image_id: str | None
    k: int
    filter: dict | None = None
    history: int = Field(0, description="how many earlier turns of the session were sent")
    history_mode: Literal[HISTORY_MODES] = "last"
    searched: list[Searched] = Field([], description="the queries the search composed from the turns, by the "
                                                     "history mode: one, or one per turn (mean)")


class SearchResponse(BaseModel):
    query: Query
    results: list[Hit]
    warnings: list[str] = Field([], description="what the server accepted but you may want to know (an upload "
                                                "whose file ends early)")


class GalleryPage(BaseModel):
    total: int
    items: list[Item]


class Added(BaseModel):
    added: list[Item]
    duplicates: list[str] = Field([], description="ids of images sent more than once in this request: each is "
                                                  "stored once")
    size: int
    warnings: list[str] = Field([], description="what the server accepted but you may want to know (an upload "
                                                "whose file ends early)")


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
    rerank: dict | None = None  # the second model that reorders the top candidates: method, checkpoint, candidates


def errors(*statuses: int) -> dict:
    """The ``responses`` entry of a route for these error statuses, each with the ``Error`` body."""
    text = {401: "no valid API token", 403: "gallery changes are off", 404: "no such gallery image",
            405: "method not allowed (see the Allow header)", 413: "too large (bytes or pixels)",
            415: "not an image, or not a form", 422: "a field is missing, malformed or out of range"}
    return {s: {"model": Error, "description": text[s]} for s in statuses}


class _Form(BaseModel):
    """A form's text fields (the file field is read apart; :func:`form_fields` passes the fields it has)."""


def search_form(service, max_k: int) -> type[_Form]:
    """``POST /search``'s fields for one server (a ``serve.service.SearchService``: its text limit, its method).
    The validators are the service's own checks, so a value the schema refuses gets the same one-line message as
    from the Python API. (:func:`form_fields` sends only non-empty text, so a validator never sees an absent k.)"""

    def integer(value: str) -> int:
        try:
            return int(value)
        except ValueError:
            raise ValueError(f"k must be an integer, got {value[:40]!r}") from None

    validators = {
        "k_is_an_integer": field_validator("k", mode="before")(lambda cls, v: service.check_k(integer(v))),
        "text_within_the_limit": field_validator("text", mode="before")(
            lambda cls, v: v if not v.strip() else service.check_text(v) and v),
        "method_served": field_validator("method", mode="before")(lambda cls, v: service.check_method(v) or v),
    }
    return create_model(
        "SearchForm", __base__=_Form, __validators__=validators,
        image_id=(str | None, Field(None, min_length=1, description="a gallery image as the reference (instead of "
                                                                    "an upload)")),
        text=(str | None, Field(None, max_length=service.max_text_chars, pattern=r"\S",
                                description="the modification text; without it, images like the reference")),
        k=(int, Field(12, ge=1, le=max_k, description="how many results")),
        method=(Literal[service.pipe.meta["method"]] | None, Field(None, description="the served method (a server "
                                                                                     "serves one)")),
        history=(str | None, Field(None, max_length=(MAX_TURNS - 1) * (service.max_text_chars + 300),
                                   pattern=HISTORY_PATTERN,
                                   description='a multi-turn session\'s earlier turns, oldest first, a JSON list: '
                                               '[{"image_id": "...", "text": "..."}, ...] (each with an image_id, a '
                                               f'text or both; at most {MAX_TURNS - 1}); read as history_mode says')),
        history_mode=(Literal[HISTORY_MODES], Field("last", description="how the search reads the session: last, "
                                                    "the current turn alone; text, the current reference with every "
                                                    "text so far; mean, the mean of every turn's composed query "
                                                    "(docs/evaluation.md#multi-turn-search)")),
        filter=(str | None, Field(None, max_length=4000, pattern=FILTER_PATTERN,
                                  description='a metadata filter, a JSON object: {"field": value or [values], ...}; '
                                              'keeps the images whose metadata match every field, e.g. '
                                              '{"family": "colour"}')),
    )


def known_fields(form, names) -> None:
    """Refuse (``ValueError``, one line) a form with a field outside ``names``: the schema allows no other."""
    unknown = sorted(set(form.keys()) - set(names))
    if unknown:
        shown = ", ".join(repr(n[:40]) for n in unknown[:3]) + (f" and {len(unknown) - 3} more" if len(unknown) > 3 else "")
        raise ValueError(f"unknown field(s) {shown}: the form takes {', '.join(names)}")


def form_fields(model: type[_Form], form, files: tuple[str, ...] = ()) -> _Form:
    """The form's text fields validated by ``model``; a refused one raises ``ValueError`` with one line naming
    the field. A field the model does not have (other than the file fields ``files``), a field sent twice, or a
    file where text belongs, is refused too."""
    known_fields(form, [*model.model_fields, *files])
    values = {}
    for name in model.model_fields:
        got = form.getlist(name)
        if len(got) > 1:
            raise ValueError(f"the field {name!r} was sent {len(got)} times; send it once")
        if got and not isinstance(got[0], str):
            raise ValueError(f"the field {name!r} must be text, not a file")
        if got == [""]:
            raise ValueError(f"the field {name!r} must be non-empty text, or left out")
        if got:
            values[name] = got[0]
    try:
        return model.model_validate(values)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "form"
        message = re.sub(r"^(Value error|Assertion failed), ", "", first.get("msg", "invalid"))
        raise ValueError(message if message.startswith(where) else f"{where}: {message}") from None


def openapi_properties(model: type[BaseModel]) -> dict:
    """A model's fields as OpenAPI 3.0 properties: an optional field is its own type (absent means None, so no
    ``null`` is offered), without pydantic's titles and null defaults."""
    out = {}
    for name, prop in model.model_json_schema()["properties"].items():
        options = [o for o in prop.pop("anyOf", []) if o.get("type") != "null"]
        if options:
            prop.update(options[0])
        prop.pop("title", None)
        if prop.get("default", 0) is None:
            prop.pop("default")
        if "const" in prop:  # a Literal of one value
            prop["enum"] = [prop.pop("const")]
        out[name] = prop
    return out


def form_body(fields: dict, required: list[str] | None = None, files: str | None = None, many: bool = False,
              rules: dict | None = None) -> dict:
    """An ``openapi_extra`` request body: the same fields as multipart/form-data (with the file field
    ``files`` as binary, an array of them where ``many``) and, without files, as a urlencoded form.
    ``rules``: JSON-schema keywords over the fields (``anyOf``, ``not``) for each form. No other field is
    allowed (the handlers refuse one: :func:`known_fields`)."""
    multipart = dict(fields)
    if files:
        binary = {"type": "string", "format": "binary", "description": "an image file (JPEG, PNG, WebP, GIF, BMP, "
                                                                      "AVIF, TIFF); bytes that do not decode: 415"}
        multipart[files] = {"type": "array", "items": binary, "minItems": 1} if many else binary
    content = {"multipart/form-data": {"schema": {"type": "object", "properties": multipart,
                                                  "additionalProperties": False,
                                                  **({"required": required} if required else {}), **(rules or {})}}}
    if not many:
        plain = {k: v for k, v in (rules or {}).items() if k != "anyOf"}
        if rules and "anyOf" in rules:  # no file in a urlencoded form: one of the remaining fields is needed
            plain["anyOf"] = [r for r in rules["anyOf"] if set(r.get("required", [])) <= set(fields)]
        content["application/x-www-form-urlencoded"] = {"schema": {"type": "object", "properties": fields,
                                                                   "additionalProperties": False, **plain}}
    return {"requestBody": {"required": True, "content": content}}
