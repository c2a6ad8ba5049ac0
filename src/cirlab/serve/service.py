"""What the HTTP server does, without HTTP, in three rooms: the query executor (``serve.queries``: batching, sessions,
re-ranking), the gallery keeper (``serve.gallery``: the index, files, thumbnails, browsing, changes, reload) and this
front desk, which checks each request once and hands it to the right room. The FastAPI app (``serve.app``) only
parses requests and maps errors.

One ``SearchService`` holds one pipeline (encoders + a trained fusion method) and the index it
built. Models load once, at start-up. Searches are batched: concurrent queries are gathered for up to
``batch_window_ms`` (or ``max_batch`` queries) into one encoder batch, one fusion call and one index
search, run on one worker thread (``serve.batching``). Inference and index reads run under one lock
(2 CPU cores gain nothing from interleaving them, and the feature cache is not thread-safe); thumbnails
are served from a small in-memory LRU and do not take the lock. Each answer carries its stage times
(queue, encode, fuse, search); ``info()`` shows rolling percentiles of the last 2,000 searches.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from PIL import Image
from pydantic import TypeAdapter, ValidationError

from cirlab.api import MAX_TEXT_CHARS, Pipeline, Query, check_text
from cirlab.encoders.runtime import runtime_name
from cirlab.errors import CirlabError, quoted
from cirlab.images import MAX_PIXELS, decode_image
from cirlab.index import check_filter
from cirlab.serve.errors import ServiceError, unreadable_gallery_image
from cirlab.serve.gallery import MAX_K, THUMB_SIZES, GalleryKeeper
from cirlab.serve.queries import STAGES, QueryExecutor, Search
from cirlab.serve.schema import about, describe, history_type
from cirlab.session import Turn, check_mode, plan

log = logging.getLogger("cirlab.serve")

__all__ = ["MAX_K", "STAGES", "THUMB_SIZES", "SearchService", "ServiceError", "unreadable_gallery_image"]


class SearchService:
    def __init__(self, pipeline: Pipeline, index_dir: str | Path, max_upload_bytes: int = 10 * 2**20,
                 max_text_chars: int = MAX_TEXT_CHARS, max_pixels: int = MAX_PIXELS, api_token: str | None = None,
                 batch_window_ms: float = 5.0, max_batch: int = 32, rerank=None) -> None:
        if max_text_chars > MAX_TEXT_CHARS:  # Pipeline.compose refuses longer texts whatever the server allows
            raise CirlabError(f"max_text_chars can be at most {MAX_TEXT_CHARS}, got {max_text_chars}")
        self.pipe = pipeline
        self.max_upload_bytes, self.max_text_chars, self.max_pixels = max_upload_bytes, max_text_chars, max_pixels
        self.api_token = api_token or None
        self.gallery = GalleryKeeper(pipeline, index_dir, threading.RLock())
        self.queries = QueryExecutor(pipeline, self.gallery, rerank, batch_window_ms, max_batch)
        self.history_type = history_type(max_text_chars)  # POST /search's history: the form's type is this one
        self.history = TypeAdapter(self.history_type)

    @property
    def index(self):
        """The index searched now (the gallery keeper's: it reloads another writer's versions)."""
        return self.gallery.index

    def close(self) -> None:
        """Stop the batch worker (searches after this are refused)."""
        self.queries.close()

    # -- checks of a request's fields ---------------------------------------------------------
    def check_text(self, text: str | None) -> str | None:
        """None for no text (a search by the reference alone); else the text within the server's limit."""
        if not (text or "").strip():
            return None
        try:
            return check_text(text, self.max_text_chars)
        except CirlabError as e:
            raise ServiceError(422, str(e)) from None

    def check_k(self, k: int) -> int:
        if not 1 <= k <= MAX_K:
            raise ServiceError(422, f"k must be between 1 and {MAX_K}, got {k}")
        return k

    def check_method(self, method: str | None) -> None:
        """A request may name the method it expects: it must be the one served."""
        if method and method != self.pipe.meta["method"]:
            raise ServiceError(422, f"this server serves method {self.pipe.meta['method']!r}, not {quoted(method)}: "
                                    f"start one with a {method} model (cirlab serve --model ...)")

    def decode_upload(self, data: bytes, name: str) -> Image.Image:
        if len(data) > self.max_upload_bytes:
            raise ServiceError(413, f"{name} is {len(data) / 2**20:.1f} MB; uploads are limited to "
                                    f"{self.max_upload_bytes / 2**20:.0f} MB")
        from cirlab.images import ImageTooLarge, UnreadableImage

        try:
            image = decode_image(data, name, self.max_pixels)
        except ImageTooLarge as e:
            raise ServiceError(413, str(e)) from None
        except UnreadableImage as e:
            raise ServiceError(415, f"{e}; send a JPEG, PNG, WebP, GIF or BMP image") from None
        if image.info.get("ends_early"):
            log.warning("accepted %s, whose file ends early", name)
        return image

    @staticmethod
    def upload_warnings(named: list[tuple[str, Image.Image]]) -> list[str]:
        """What to tell the sender of these decoded uploads: each file that ends early."""
        return [f"{name}: the file ends early (its last bytes are missing); it was read as far as it goes"
                for name, im in named if im.info.get("ends_early")]

    # -- searches (the query executor) --------------------------------------------------------
    def search(self, text: str | None, k: int = 12, image: Image.Image | None = None, image_id: str | None = None,
               method: str | None = None, timing: dict | None = None, filter: dict | None = None,
               history: list | None = None, history_mode: str = "last") -> dict:
        """Top-k for (reference, text). Reference: an uploaded image or a gallery id (left out of its own
        results, and read from its stored features). No reference: a text-to-image search; no text: images
        that look like the reference. ``filter``: keep images whose metadata match (``{field: value or
        [values]}``). ``history``: a session's earlier turns, oldest first (``{"image_id": ..., "text": ...}``
        each), read as ``history_mode`` says (``cirlab.session``). ``timing`` (a dict; ``decode`` may be in it
        already) receives the seconds of each stage."""
        k = self.check_k(k)
        text = self.check_text(text)
        try:
            check_filter(filter)
        except CirlabError as e:
            raise ServiceError(422, str(e)) from None
        self.check_method(method)
        if image is not None and image_id:
            raise ServiceError(422, "send either an image or an image_id, not both")
        reference = self.gallery.path_of(image_id) if image_id else image
        if reference is None and text is None:
            raise ServiceError(422, "send a text, a reference (image or image_id), or both")
        said = self.session_turns(history or [], history_mode) + [(image_id, Turn(reference, text))]
        turns, corrections = self.spelled([t for _, t in said])
        files = {str(t.reference): (n, i) for n, (i, t) in enumerate(said, 1) if i is not None}
        queries = [Query(t.reference, t.text) for t in plan(turns, history_mode)]
        item = Search(queries, k, {image_id} if image_id else set(), filter or None, files, len(turns))
        results, stages = self.queries.run(item, (timing or {}).get("decode", 0.0))
        if timing is not None:
            timing.update(stages)
        mode = "composed" if reference is not None and text else "text" if text else "image"
        return {"query": {"mode": mode, "text": text, "image_id": image_id, "k": k, "filter": filter or None,
                          "history": len(turns) - 1, "history_mode": history_mode,
                          "searched": [{"image": q.image is not None, "text": q.text} for q in queries],
                          "corrections": corrections},
                "results": results}

    def spelled(self, turns: list[Turn]) -> tuple[list[Turn], list[dict]]:
        """Each turn with its text's spelling corrected (``Pipeline.spell``), and what changed, by turn (1-based)."""
        out, changes = [], []
        for n, turn in enumerate(turns, 1):
            text, fixed = self.pipe.spell(turn.text)
            out.append(Turn(turn.reference, text))
            changes += [{"turn": n, **c} for c in fixed]
        return out, changes

    def session_turns(self, history: list, mode: str) -> list[tuple[str | None, Turn]]:
        """A session's earlier turns from the request's ``history`` (a list of ``{"image_id", "text"}``, or of the
        form's validated turns), checked by the form's own type (``schema.history_type``), each text then as a
        search's own is: (the turn's gallery id, the turn with its file and text)."""
        try:
            check_mode(mode)
            history = self.history.validate_python(history)
        except CirlabError as e:
            raise ServiceError(422, str(e)) from None
        except ValidationError as e:
            raise ServiceError(422, describe(e, "history"), **about(e, "history")) from None
        return [(t.image_id, Turn(self.gallery.path_of(t.image_id) if t.image_id is not None else None,
                                  self.check_text(t.text))) for t in history]

    # -- the gallery (the gallery keeper) ------------------------------------------------------
    def add_images(self, files: list[tuple[str, bytes]]) -> dict:
        """Store uploaded images under ``INDEX/files/``, embed them and save the index as a new version. The same
        image sent twice is stored once, and said so."""
        if not files:
            raise ServiceError(422, "send one or more files in the field 'image'")
        decoded = [(name, data, self.decode_upload(data, name)) for name, data in files]  # all checked first
        done = self.gallery.add(decoded)
        with self.gallery.lock:
            return {"added": [self.gallery.item(i) for i in done.added], "duplicates": sorted(set(done.duplicates)),
                    "size": done.total, "warnings": self.upload_warnings([(n, im) for n, _, im in decoded])}

    def remove_image(self, image_id: str) -> None:
        self.gallery.remove(image_id)

    def info(self) -> dict:
        meta, rerank = self.pipe.meta, self.queries.rerank
        return {
            "model": {"method": meta["method"], "checkpoint": self.pipe.path.name if self.pipe.path else None,
                      "fusion": self.pipe.identity["fusion"], "embed_dim": self.pipe.model.embed_dim,
                      "text_search": self.pipe.text_search},
            "encoders": {"image": self.pipe.image_encoder.id, "text": self.pipe.text_encoder.id,
                         "runtime": runtime_name(self.pipe.image_encoder)},
            "index": {"size": len(self.index), "backend": self.index.spec, "dim": self.index.dim},
            "limits": {"upload_bytes": self.max_upload_bytes, "text_chars": self.max_text_chars,
                       "pixels": self.max_pixels, "k": MAX_K},
            "gallery_changes": self.api_token is not None,
            "batching": {"window_ms": self.queries.batcher.window_s * 1e3, "max_batch": self.queries.batcher.max_batch},
            "latency_ms": self.queries.latency(),
            "rerank": rerank.info() if rerank else None,
        }
