"""The HTTP API and the web page (FastAPI): ``cirlab serve --index DIR``.

    POST   /search            multipart: image (file) or image_id, text, k, method -> {"query", "results"}
    GET    /images/{id}       the gallery file; ?size=64|128|256|512 a JPEG thumbnail
    GET    /gallery           ?q=&offset=&limit= or ?random=1: gallery items for picking a reference
    POST   /gallery           (bearer token) multipart image files -> added, index saved atomically
    DELETE /gallery/{id}      (bearer token) -> removed, index saved atomically
    GET    /health, /info, /docs (OpenAPI), / (the page)

Every error is JSON ``{"error": "..."}`` with a fitting status: 401/403 auth, 404 unknown id, 413
too large (bytes or pixels), 415 not an image, 422 bad fields, 500 never expected (logged).
"""

from __future__ import annotations

import hmac
import logging
import time
from importlib import resources

from fastapi import APIRouter, FastAPI, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPBearer
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException
from starlette.routing import Match

from cirlab import __version__
from cirlab.errors import quoted
from cirlab.serve.schema import (Added, GalleryPage, Health, Info, Removed, SearchResponse, errors, form_body, form_fields,
                                 known_fields, openapi_properties, search_form)
from cirlab.serve.service import MAX_K, STAGES, THUMB_SIZES, SearchService, ServiceError

log = logging.getLogger("cirlab.serve")
GALLERY_FILES = 32  # images one POST /gallery may add


class BodyTooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware: refuse a request body over ``limit`` bytes with 413, by its Content-Length or,
    for a chunked body, as soon as the bytes read pass the limit (nothing larger is ever buffered)."""

    def __init__(self, app, limit: int, gallery_files: int = 1) -> None:
        self.app, self.limit, self.gallery_files = app, limit, gallery_files

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        # an add to the gallery may carry several images; everything else at most one
        many = scope.get("method") == "POST" and scope.get("path") == "/gallery"
        limit = self.limit * (self.gallery_files if many else 1)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            return await _send_json(send, 413, f"the request is {int(length) / 2**20:.1f} MB; uploads are limited to "
                                               f"{self.limit / 2**20:.0f} MB" + (" per image" if many else ""))
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge()
            return message

        return await self.app(scope, limited, send)


async def _send_json(send, status: int, message: str) -> None:
    response = JSONResponse({"error": message}, status_code=status)
    await send({"type": "http.response.start", "status": status, "headers": response.raw_headers})
    await send({"type": "http.response.body", "body": response.body})


def create_app(service: SearchService) -> FastAPI:
    """The app: its error handlers, three routers (searches, the gallery, the page and its documents) and the body
    limit."""
    app = FastAPI(title="cirlab", version=__version__, docs_url=None, redoc_url=None,
                  description="Composed image retrieval: a reference image plus a modification text.")
    # the offline Swagger UI (swagger-ui-bundle 4.x) renders OpenAPI 3.0 documents, not 3.1
    app.openapi_version = "3.0.3"
    routers = [search_router(service), gallery_router(service), page_router(service)]
    for router in routers:
        app.include_router(router)
    add_error_handlers(app, service.max_upload_bytes, [r for router in routers for r in router.routes])
    # the body limit leaves room for the form's other fields around one maximal image
    app.add_middleware(BodyLimit, limit=service.max_upload_bytes + 64 * 1024, gallery_files=GALLERY_FILES)
    return app


def add_error_handlers(app: FastAPI, max_upload_bytes: int, routes: list) -> None:
    """Every error as JSON ``{"error": "...", ...}`` with its status; nothing unexpected takes the server down.
    ``routes``: the app's routes, whose methods a 405 names."""

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, e: ServiceError):
        return JSONResponse({"error": str(e), **e.about}, status_code=e.status)

    @app.exception_handler(BodyTooLarge)
    async def _too_large(request: Request, e: BodyTooLarge):
        return JSONResponse({"error": f"the request is over the {max_upload_bytes / 2**20:.0f} MB upload limit"},
                            status_code=413)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException):  # 404 no route, 405 (with its Allow header)
        headers = dict(getattr(e, "headers", None) or {})
        if e.status_code == 405:  # Starlette names the first matching route's methods only: name every route's
            allowed = {m for r in routes if getattr(r, "methods", None)
                       and r.matches(request.scope)[0] != Match.NONE for m in r.methods}
            headers["Allow"] = ", ".join(sorted(allowed))
        return JSONResponse({"error": str(e.detail)}, status_code=e.status_code, headers=headers or None)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, e: RequestValidationError):
        first = e.errors()[0] if e.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path"))
        return JSONResponse({"error": f"{where or 'request'}: {first.get('msg', 'invalid')}"}, status_code=422)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, e: Exception):
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return JSONResponse({"error": f"internal error ({type(e).__name__}); the server is still up"}, status_code=500)


async def read_form(request: Request, max_files: int = 1):
    """The request's form, within the limits (files, fields, 64 KB a field), or a one-line refusal."""
    if not request.headers.get("content-type", "").startswith(("multipart/form-data", "application/x-www-form")):
        raise ServiceError(415, "send the fields as multipart/form-data (an image file and/or text, k)")
    try:
        return await request.form(max_files=max_files, max_fields=16, max_part_size=64 * 1024)
    except (MultiPartException, StarletteHTTPException) as e:  # Starlette turns the former into a 400
        message = str(getattr(e, "message", None) or getattr(e, "detail", "")) or "unreadable form"
        if "maximum size" in message.lower():
            raise ServiceError(413, f"a form field is over the 64 KB limit ({message})") from None
        raise ServiceError(422, f"malformed form: {message}") from None


async def read_upload(service: SearchService, upload, timing: dict):
    """The form's ``image`` decoded (None where none was sent), its decoding time in ``timing``."""
    if isinstance(upload, UploadFile):
        data = await upload.read()
        if not data:
            return None
        start = time.perf_counter()
        image = await run_in_threadpool(service.decode_upload, data, upload.filename or "image")
        timing["decode"] = time.perf_counter() - start
        return image
    if upload not in (None, ""):
        raise ServiceError(422, "the field 'image' must be a file upload; send a gallery id as 'image_id'")
    return None


def search_router(service: SearchService) -> APIRouter:
    router = APIRouter()
    SearchForm = search_form(service, MAX_K)

    @router.post("/search", summary="Composed search: reference (upload or gallery id) + modification text",
                 response_model=SearchResponse, responses=errors(404, 413, 415, 422),
                 openapi_extra=form_body(openapi_properties(SearchForm), files="image", rules={
                     "anyOf": [{"required": ["text"]}, {"required": ["image"]}, {"required": ["image_id"]}],
                     "not": {"required": ["image", "image_id"]}}))
    async def search(request: Request, response: Response):
        form = await read_form(request)
        timing = {"decode": 0.0}
        upload = form.get("image")
        image = await read_upload(service, upload, timing)
        try:
            fields = form_fields(SearchForm, form, files=("image",))
        except ValueError as e:  # a FormError says which field (and turn) as data
            raise ServiceError(422, str(e), **getattr(e, "about", {})) from None
        body = await run_in_threadpool(service.search, fields.text, fields.k, image, fields.image_id, fields.method,
                                       timing, fields.filter, fields.history, fields.history_mode)
        body["warnings"] = service.upload_warnings([(upload.filename or "image", image)] if image else [])
        response.headers["Server-Timing"] = ", ".join(f"{stage};dur={timing[stage] * 1e3:.2f}"
                                                      for stage in STAGES if stage in timing)
        return body

    return router


def gallery_router(service: SearchService) -> APIRouter:
    router, gallery = APIRouter(), service.gallery
    bearer = HTTPBearer(auto_error=False, description="CIRLAB_API_TOKEN, for gallery changes")

    def check_token(request: Request) -> None:
        if service.api_token is None:
            raise ServiceError(403, "gallery changes are off: start the server with CIRLAB_API_TOKEN set to allow them")
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), service.api_token.encode()):
            raise ServiceError(401, "a valid API token is needed: send 'Authorization: Bearer <CIRLAB_API_TOKEN>'")

    @router.get("/images/{image_id:path}", summary="A gallery image, or its JPEG thumbnail with ?size=",
                response_class=Response, responses={200: {"content": {"image/*": {"schema": {"type": "string",
                                                                                            "format": "binary"}}},
                                                          "description": "the image file or thumbnail"},
                                                    **errors(404, 415, 422)})
    async def image(image_id: str, size: int = Query(None, description=f"one of {list(THUMB_SIZES)}; absent: the file",
                                                     json_schema_extra={"enum": list(THUMB_SIZES)})):
        if size is None:
            path = await run_in_threadpool(gallery.path_of, image_id)
            return FileResponse(path, headers={"Cache-Control": "public, max-age=3600"})
        data = await run_in_threadpool(gallery.thumbnail, image_id, size)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "public, max-age=3600"})

    @router.get("/gallery", summary="Browse the gallery: a name filter and a page, or a random pick",
                response_model=GalleryPage, responses=errors(422))
    async def browse(q: str = Query("", max_length=200), offset: int = Query(0, ge=0, le=2**31),
                     limit: int = Query(24, ge=1, le=MAX_K), random: bool = False,
                     seed: int = Query(None, ge=0, le=2**63 - 1, description="random: the pick's seed (absent: "
                                                                              "a new pick each time)")):
        return await run_in_threadpool(gallery.browse, q, offset, limit, random, seed)

    @router.post("/gallery", summary="Add images (bearer token)", status_code=201, response_model=Added,
                 responses=errors(401, 403, 413, 415, 422), dependencies=[Security(bearer)],
                 openapi_extra=form_body({}, ["image"], files="image", many=GALLERY_FILES))
    async def add(request: Request):
        check_token(request)
        form = await read_form(request, max_files=GALLERY_FILES)
        try:
            known_fields(form, ["image"])
        except ValueError as e:
            raise ServiceError(422, str(e)) from None
        if not all(isinstance(upload, UploadFile) for upload in form.getlist("image")):
            raise ServiceError(422, "the field 'image' must hold file uploads")
        files = [(upload.filename or "upload", await upload.read()) for upload in form.getlist("image")]
        return await run_in_threadpool(service.add_images, files)

    @router.delete("/gallery/{image_id:path}", summary="Remove an image (bearer token)", response_model=Removed,
                   responses=errors(401, 403, 404), dependencies=[Security(bearer)])
    async def remove(image_id: str, request: Request):
        check_token(request)
        await run_in_threadpool(service.remove_image, image_id)
        return {"removed": image_id, "size": len(service.index)}

    return router


def page_router(service: SearchService) -> APIRouter:
    """Health, info, the web page and its assets, and the offline API documents."""
    router = APIRouter()
    static = resources.files("cirlab.serve") / "static"

    @router.get("/health", response_model=Health)
    async def health():
        return {"status": "ok", "index_size": len(service.index)}

    @router.get("/info", response_model=Info)
    async def info():
        return {"cirlab_version": __version__, **service.info()}

    @router.get("/docs", include_in_schema=False)
    async def docs():  # Swagger UI from the swagger-ui-bundle package: works offline, unlike the CDN default
        return get_swagger_ui_html(openapi_url="/openapi.json", title="cirlab API",
                                   swagger_js_url="/docs-assets/swagger-ui-bundle.js",
                                   swagger_css_url="/docs-assets/swagger-ui.css",
                                   swagger_favicon_url="/docs-assets/favicon-32x32.png")

    @router.get("/docs-assets/{name}", include_in_schema=False)
    async def docs_asset(name: str):
        from swagger_ui_bundle import swagger_ui_path

        types = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css",
                 "favicon-32x32.png": "image/png"}
        if name not in types:  # a fixed list, as for the page's assets
            raise ServiceError(404, f"no asset {quoted(name)}")
        return Response((swagger_ui_path / name).read_bytes(), media_type=types[name],
                        headers={"Cache-Control": "public, max-age=86400"})

    @router.get("/", include_in_schema=False)
    async def page():
        return HTMLResponse((static / "index.html").read_text(encoding="utf-8"))

    @router.get("/static/{name}", include_in_schema=False)
    async def asset(name: str):
        types = {"app.js": "text/javascript", "style.css": "text/css"}
        if name not in types:  # a fixed list: no path from a request reaches the file system
            raise ServiceError(404, f"no asset {quoted(name)}")
        return Response((static / name).read_text(encoding="utf-8"), media_type=types[name])

    return router


def serve(index: str, pipe, host: str = "127.0.0.1", port: int = 8000, max_upload_mb: float = 10.0,
          batch_window_ms: float = 5.0, max_batch: int = 32, rerank=None) -> None:
    """Serve ``pipe`` (an ``api.Pipeline``: a checkpoint's, or a zero-shot method's) over the index, loaded once,
    with uvicorn until interrupted; ``rerank``: a ``cirlab.rerank.Reranker`` beside ``pipe``."""
    import os

    import uvicorn

    service = SearchService(pipe, index, max_upload_bytes=int(max_upload_mb * 2**20),
                            api_token=os.environ.get("CIRLAB_API_TOKEN"), batch_window_ms=batch_window_ms,
                            max_batch=max_batch, rerank=rerank)
    app = create_app(service)
    print(f"cirlab serve: {service.info()['model']['method']}{' re-ranked by ' + rerank.name if rerank else ''} "
          f"over {len(service.index)} images "
          f"({service.index.spec}) at http://{host}:{port}/", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
