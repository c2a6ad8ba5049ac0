"""The HTTP API's request and response shapes, for an OpenAPI document that describes the API exactly.

A form's fields are a pydantic model (:func:`search_form`): the request body's OpenAPI schema is generated from
it (:func:`form_body`) and the handler validates the form it read with it (:func:`form_fields`), so the schema
and the validation are one thing. The handlers read the multipart body themselves, to bound its size and its
parts; the file field is read apart. Responses are pydantic models, and every status a route can answer is
declared with the shared ``Error`` body.
"""

from __future__ import annotations

import functools
import json
import re
from typing import Annotated, Literal

from pydantic import (BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError,
                      create_model, field_validator, model_validator)

from cirlab.api import SAYS_SOMETHING
from cirlab.session import HISTORY_MODES, MAX_TURNS

TURN_EXAMPLE = '[{"image_id": "x", "text": "make it red"}, {"text": "shorter"}]'
FILTER_EXAMPLE = '{"family": "colour"} or {"size": [1, 2]}'
Scalar = StrictStr | Annotated[StrictInt, Field(ge=-2**63, le=2**63 - 1)] | StrictBool
# a metadata filter: {field: value or [values]} (cirlab.index.check_filter); a field is named ("" is no field)
Filter = Annotated[dict[str, Scalar | Annotated[list[Scalar], Field(min_length=1)]],
                   Field(json_schema_extra={"not": {"required": [""]}})]


def _one_of(turn):
    if turn.image_id is None and turn.text is None:
        raise ValueError("has neither an image_id nor a text")
    return turn


def history_type(max_text_chars: int):
    """A session's earlier turns (``POST /search``'s ``history``), oldest first: each a gallery image id, a text, or
    both, at most ``MAX_TURNS - 1`` of them. One type for the schema, the form and the Python service."""
    turn = create_model(
        "Turn", __config__=ConfigDict(extra="forbid", json_schema_extra={
            "anyOf": [{"required": ["image_id"]}, {"required": ["text"]}]}),
        __validators__={"one_of": model_validator(mode="after")(_one_of)},
        image_id=(StrictStr | None, Field(None, pattern=SAYS_SOMETHING, description="the gallery image the turn "
                                                                                    "started from")),
        text=(StrictStr | None, Field(None, max_length=max_text_chars, pattern=SAYS_SOMETHING,
                                      description="what the user said")))
    return Annotated[list[turn], Field(max_length=MAX_TURNS - 1)]


class FormError(ValueError):
    """A refused form field: its one-line message, and what it is about as data (:func:`about`)."""

    def __init__(self, message: str, **about: object) -> None:
        super().__init__(message)
        self.about = about


def about(error: ValidationError, field: str | None = None) -> dict:
    """What a validation error is about, as data: the ``field``, and for a session's history the ``turn``
    (1-based) whose entry was refused."""
    loc = ((field,) if field else ()) + tuple(error.errors()[0].get("loc", ()))
    out: dict = {"field": str(loc[0])} if loc else {}
    if loc[:1] == ("history",) and len(loc) > 1 and isinstance(loc[1], int):
        out["turn"] = loc[1] + 1
    return out


def describe(error: ValidationError, field: str | None = None) -> str:
    """A validation error of the search form, of its ``history`` or its ``filter`` as one line that says what to
    send (never a pattern): the first error, where it is (``history turn 3 text``) and what is wrong."""
    first = error.errors()[0]
    loc, kind, ctx = ((field,) if field else ()) + tuple(first.get("loc", ())), first.get("type", ""), first.get("ctx", {})
    if loc[:1] == ("history",):
        if len(loc) == 1:
            if kind == "too_long":
                return (f"history has {ctx.get('actual_length')} earlier turns; a session is limited to {MAX_TURNS} "
                        f"turns, {MAX_TURNS - 1} earlier and the current one: start a new session")
            return f"history must be a JSON list of turns, e.g. {TURN_EXAMPLE}"
        where = f"history turn {loc[1] + 1}" if isinstance(loc[1], int) else "history"
        if len(loc) == 2 or kind in ("model_type", "dict_type"):
            what = ("must be an object with an image_id, a text or both" if kind in ("model_type", "dict_type")
                    else _said(kind, first))
            return f"{where} {what}"
        name = str(loc[2])
        if kind == "extra_forbidden":
            return f"{where} has a field {name[:40]!r}: a turn has an image_id, a text or both"
        return f"{where} {name} {_said(kind, first)}"
    if loc[:1] == ("filter",):
        if len(loc) == 1:
            return f"filter must be a JSON object of field: value pairs, e.g. {FILTER_EXAMPLE}"
        return (f"filter field {str(loc[1])[:40]!r}: give a string, an integer or true/false, or a non-empty list "
                "of them")
    name = ".".join(str(p) for p in loc) or "form"
    message = _said(kind, first)
    return message if message.startswith(name) else f"{name}: {message}"


def _said(kind: str, error: dict) -> str:
    if kind == "string_pattern_mismatch":
        return "is blank: say something, or leave the field out"
    if kind == "string_type":
        return "must be a string"
    return re.sub(r"^(Value error|Assertion failed), ", "", error.get("msg", "invalid"))


class Error(BaseModel):
    error: str = Field(description="what was wrong and what to do, in one line")
    turn: int | None = Field(None, description="the session's turn it is about (1-based; the current one is the last), "
                                               "where one is")
    image_id: str | None = Field(None, description="the gallery image it is about, where one is")
    field: str | None = Field(None, description="the form field it is about, where one is")


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


class Correction(BaseModel):
    turn: int = Field(description="the session's turn whose text it is in (1-based; the current one is the last)")
    from_: str = Field(alias="from", description="the word as typed")
    to: str = Field(description="the word searched for")


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
    corrections: list[Correction] = Field([], description="the words whose spelling was corrected before the search: "
                                                          "known neither to the model nor to English")


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
        text=(str | None, Field(None, max_length=service.max_text_chars, pattern=SAYS_SOMETHING,
                                description="the modification text; without it, images like the reference")),
        k=(int, Field(12, ge=1, le=max_k, description="how many results")),
        method=(Literal[service.pipe.meta["method"]] | None, Field(None, description="the served method (a server "
                                                                                     "serves one)")),
        history=(service.history_type | None, Field(
            None, description=f"a multi-turn session's earlier turns, oldest first, as JSON: {TURN_EXAMPLE} (each "
                              f"with an image_id, a text or both; at most {MAX_TURNS - 1}); one field with the list, or "
                              "one field per turn; read as history_mode says")),
        history_mode=(Literal[HISTORY_MODES], Field("last", description="how the search reads the session: last, "
                                                    "the current turn alone; text, the current reference with every "
                                                    "text so far; mean, the mean of every turn's composed query "
                                                    "(docs/evaluation.md#multi-turn-search)")),
        filter=(Filter | None, Field(None, description=f"a metadata filter as JSON, e.g. {FILTER_EXAMPLE}: keeps the "
                                                       "images whose metadata match every field (one of the values "
                                                       "of a list)")),
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
    kinds = json_fields(model)
    values = {}
    for name in model.model_fields:
        got = form.getlist(name)
        if len(got) > 1 and kinds.get(name) != "array":
            raise ValueError(f"the field {name!r} was sent {len(got)} times; send it once")
        if any(not isinstance(v, str) for v in got):
            raise ValueError(f"the field {name!r} must be text, not a file")
        if "" in got:
            raise ValueError(f"the field {name!r} must be non-empty text, or left out")
        if got:
            values[name] = json_value(name, got, kinds[name]) if name in kinds else got[0]
    try:
        return model.model_validate(values)
    except ValidationError as e:
        raise FormError(describe(e), **about(e)) from None


@functools.cache
def json_fields(model: type[BaseModel]) -> dict[str, str]:
    """The form's fields that hold JSON (an ``array`` or an ``object``), by name."""
    return {name: prop["type"] for name, prop in openapi_properties(model).items()
            if prop.get("type") in ("array", "object")}


def json_value(name: str, texts: list[str], kind: str):
    """A JSON field's value from the form: one JSON text; an array's field may also come once per item (as a form
    repeats an array: ``history={...}&history={...}``), and a lone object is a one-item array."""
    values = []
    for text in texts:
        try:
            values.append(json.loads(text))
        except json.JSONDecodeError as e:
            example = TURN_EXAMPLE if kind == "array" else FILTER_EXAMPLE
            raise ValueError(f"the field {name!r} is not JSON ({e.msg} at character {e.pos + 1}): send e.g. "
                             f"{example}") from None
    if kind == "array" and (len(values) > 1 or isinstance(values[0], dict)):
        return values  # one item per field
    return values[0]


def openapi_properties(model: type[BaseModel]) -> dict:
    """A model's fields as OpenAPI 3.0 properties: an optional field is its own type (absent means None, so no
    ``null`` is offered), without pydantic's titles and null defaults, its nested models written in place."""
    schema = model.model_json_schema()
    return {name: _openapi(prop, schema.get("$defs", {})) for name, prop in schema["properties"].items()}


def _openapi(node, defs: dict):
    """A pydantic JSON schema node as OpenAPI 3.0 (see :func:`openapi_properties`)."""
    if isinstance(node, list):
        return [_openapi(n, defs) for n in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        node = {**defs[node["$ref"].rsplit("/", 1)[1]], **{k: v for k, v in node.items() if k != "$ref"}}
    node = dict(node)
    if "anyOf" in node:
        options = [o for o in node.pop("anyOf") if o.get("type") != "null"]
        if len(options) == 1:
            node = {**options[0], **node}
        elif options:
            node["anyOf"] = options
    node.pop("title", None)
    if "default" in node and node["default"] is None:
        node.pop("default")
    if "const" in node:  # a Literal of one value
        node["enum"] = [node.pop("const")]
    nested = ("properties", "additionalProperties", "items", "anyOf", "not")
    return {k: (_openapi(v, defs) if k in nested and k != "properties" else
                {n: _openapi(p, defs) for n, p in v.items()} if k == "properties" else v) for k, v in node.items()}


def form_body(fields: dict, required: list[str] | None = None, files: str | None = None, many: int = 0,
              rules: dict | None = None) -> dict:
    """An ``openapi_extra`` request body: the same fields as multipart/form-data (with the file field
    ``files`` as binary, an array of 1 to ``many`` of them where ``many``) and, without files or JSON fields, as a
    urlencoded form. A field whose type is an array or an object is sent as JSON (its ``encoding``). ``rules``:
    JSON-schema keywords over the fields (``anyOf``, ``not``) for each form. No other field is allowed (the
    handlers refuse one: :func:`known_fields`)."""
    multipart = dict(fields)
    if files:
        binary = {"type": "string", "format": "binary", "description": "an image file (JPEG, PNG, WebP, GIF, BMP, "
                                                                      "AVIF, TIFF); bytes that do not decode: 415"}
        multipart[files] = {"type": "array", "items": binary, "minItems": 1, "maxItems": many} if many else binary
    encoding = {name: {"contentType": "application/json"} for name, prop in fields.items()
                if prop.get("type") in ("array", "object")}
    extra = {"encoding": encoding} if encoding else {}
    content = {"multipart/form-data": {"schema": {"type": "object", "properties": multipart,
                                                  "additionalProperties": False,
                                                  **({"required": required} if required else {}), **(rules or {})},
                                       **extra}}
    # a urlencoded form is stated only without JSON fields: OpenAPI 3.0's tools serialise an object or an array in
    # one by its style (an object's pairs become fields of the form), never as JSON; the server still reads a
    # urlencoded form, a JSON field as JSON (docs/serving.md)
    if not many and not encoding:
        plain = {k: v for k, v in (rules or {}).items() if k != "anyOf"}
        if rules and "anyOf" in rules:  # no file in a urlencoded form: one of the remaining fields is needed
            plain["anyOf"] = [r for r in rules["anyOf"] if set(r.get("required", [])) <= set(fields)]
        content["application/x-www-form-urlencoded"] = {"schema": {"type": "object", "properties": fields,
                                                                   "additionalProperties": False, **plain}}
    return {"requestBody": {"required": True, "content": content}}
