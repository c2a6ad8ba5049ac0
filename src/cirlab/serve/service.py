"""What the HTTP server does, without HTTP: compose and search, gallery files and thumbnails, and
atomic gallery changes. The FastAPI app (``serve.app``) only parses requests and maps errors.

One ``SearchService`` holds one pipeline (encoders + a trained fusion method) and the index it
built. Models load once, at start-up. Searches are batched: concurrent queries are gathered for up to
``batch_window_ms`` (or ``max_batch`` queries) into one encoder batch, one fusion call and one index
search, run on one worker thread (``serve.batching``). Inference and index reads run under one lock
(2 CPU cores gain nothing from interleaving them, and the feature cache is not thread-safe); thumbnails
are served from a small in-memory LRU and do not take the lock. Each answer carries its stage times
(queue, encode, fuse, search); ``info()`` shows rolling percentiles of the last 2,000 searches.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import logging
import re
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import numpy as np
from PIL import Image
from pydantic import TypeAdapter, ValidationError

from cirlab.api import MAX_TEXT_CHARS, Pipeline, Query, check_text
from cirlab.data.triplets import Gallery
from cirlab.encoders.runtime import runtime_name
from cirlab.errors import CirlabError, quoted
from cirlab.images import MAX_PIXELS, decode_image, load_image
from cirlab.index import check_filter, load_index
from cirlab.index.metadata import display_name
from cirlab.index.search import search
from cirlab.index.store import live_version
from cirlab.indexing import Change, add_images, remove_images
from cirlab.serve.batching import MicroBatcher
from cirlab.serve.schema import describe, history_type
from cirlab.session import Turn, check_mode, combine_each, plan

log = logging.getLogger("cirlab.serve")

MAX_K = 100
THUMB_SIZES = (64, 128, 256, 512)
STAGES = ("decode", "queue", "encode", "fuse", "search", "rerank", "total")  # rerank: only with a re-ranker
RECENT = 2000  # searches the rolling percentiles of info() cover


@dataclass
class _Search:
    """One search waiting for its batch: its queries (one, or one per turn of a session whose history mode averages
    them: ``cirlab.session``), k, the ids left out, the gallery id referred to, and the metadata filter."""

    queries: list[Query]
    k: int
    skip: set
    image_id: str | None
    filter: dict | None = None


class ServiceError(CirlabError):
    """An error with the HTTP status it maps to."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def unreadable_gallery_image(image_id: str) -> str:
    """The reply for a gallery file that went bad on disk: the id, never the server's path."""
    return (f"the file of gallery image {quoted(image_id)} is unreadable on the server; "
            "pick another reference, or remove the image from the gallery")


class SearchService:
    def __init__(self, pipeline: Pipeline, index_dir: str | Path, max_upload_bytes: int = 10 * 2**20,
                 max_text_chars: int = MAX_TEXT_CHARS, max_pixels: int = MAX_PIXELS, api_token: str | None = None,
                 batch_window_ms: float = 5.0, max_batch: int = 32, rerank=None) -> None:
        if max_text_chars > MAX_TEXT_CHARS:  # Pipeline.compose refuses longer texts whatever the server allows
            raise CirlabError(f"max_text_chars can be at most {MAX_TEXT_CHARS}, got {max_text_chars}")
        self.pipe = pipeline
        self.rerank = rerank  # a cirlab.rerank.Reranker: a second model reorders the top candidates
        self.index_dir = Path(index_dir)
        self.index, self.manifest = load_index(self.index_dir, pipeline.model.embed_dim, pipeline.identity)
        self.max_upload_bytes, self.max_text_chars, self.max_pixels = max_upload_bytes, max_text_chars, max_pixels
        self.api_token = api_token or None
        self.lock = threading.RLock()
        self._thumbs: OrderedDict[tuple[str, int], bytes] = OrderedDict()
        self._thumb_lock = threading.Lock()
        self._names = [self._name(i, m) for i, m in zip(self.index.ids, self.index.metadata)]
        self.history_type = history_type(max_text_chars)  # POST /search's history: the form's type is this one
        self.history = TypeAdapter(self.history_type)
        self.batcher = MicroBatcher(self._run_batch, batch_window_ms / 1e3, max_batch)
        self._recent: dict[str, deque] = {s: deque(maxlen=RECENT) for s in STAGES + ("batch",)}

    def close(self) -> None:
        """Stop the batch worker (searches after this are refused)."""
        self.batcher.close()

    # -- queries ------------------------------------------------------------------------------
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
        reference: str | Image.Image | None = image
        if image_id:
            reference = self.path_of(image_id)
        if reference is None and text is None:
            raise ServiceError(422, "send a text, a reference (image or image_id), or both")
        turns = self.session_turns(history or [], history_mode) + [Turn(reference, text)]
        queries = [Query(t.reference, t.text) for t in plan(turns, history_mode)]
        item = _Search(queries, k, {image_id} if image_id else set(), image_id, filter or None)
        decode = (timing or {}).get("decode", 0.0)
        start = time.perf_counter()
        (results, batch_stages), queued, size = self.batcher.submit(item)
        stages = {"decode": decode, "queue": queued, **batch_stages, "total": time.perf_counter() - start + decode}
        if timing is not None:
            timing.update(stages)
        self._record({**stages, "batch": size})
        mode = "composed" if reference is not None and text else "text" if text else "image"
        return {"query": {"mode": mode, "text": text, "image_id": image_id, "k": k, "filter": filter or None,
                          "history": len(turns) - 1, "history_mode": history_mode,
                          "searched": [{"image": q.image is not None, "text": q.text} for q in queries]},
                "results": results}

    def session_turns(self, history: list, mode: str) -> list[Turn]:
        """A session's earlier turns from the request's ``history`` (a list of ``{"image_id", "text"}``, or of the
        form's validated turns), checked by the form's own type (``schema.history_type``), each reference and text
        then as a search's own are."""
        try:
            check_mode(mode)
            history = self.history.validate_python(history)
        except CirlabError as e:
            raise ServiceError(422, str(e)) from None
        except ValidationError as e:
            raise ServiceError(422, describe(e, "history")) from None
        return [Turn(self.path_of(t.image_id) if t.image_id is not None else None, self.check_text(t.text))
                for t in history]

    def _run_batch(self, items: list[_Search]) -> list:
        """One batch of searches: one encoder batch, one fusion call a kind, one index search. Each item gets
        ``(results, stage seconds)`` or its own error."""
        stages: dict[str, float] = {}
        with self.lock:
            self.refresh()
            parts: dict = {}
            flat = [q for i in items for q in i.queries]
            vectors = combine_each(self.pipe.compose_many(flat, stages, parts), [len(i.queries) for i in items])
            firsts = list(itertools.accumulate([0] + [len(i.queries) for i in items]))[:-1]
            ok = [n for n, v in enumerate(vectors) if not isinstance(v, Exception)]
            second = self._second_vectors(items, flat, stages)
            start = time.perf_counter()
            ranked: dict[int, list] = {}
            # a search the re-ranker could not compose (a text-only query and no text head) keeps the first order
            for rerank in (False, True):
                group = [n for n in ok if (second[n] is not None) == rerank]
                if not group:
                    continue
                scoring = self.pipe.rescoring([vectors[n] for n in group],
                                              {m: parts[firsts[n]] for m, n in enumerate(group)
                                               if len(items[n].queries) == 1 and firsts[n] in parts})
                reorder = self.rerank.served_scoring(np.stack([second[n] for n in group]), self.index) if rerank else None
                found = search(self.index, np.stack([vectors[n] for n in group]), [items[n].k for n in group],
                               [items[n].skip for n in group], [items[n].filter for n in group], scoring, reorder)
                ranked.update(zip(group, found))
            stages["search"] = time.perf_counter() - start
            answers = {n: [self.item(i, score=s) for i, s in rows] for n, rows in ranked.items()}
        return [(answers[n], stages) if n in answers else
                self._query_error(it, vectors[n]) for n, it in enumerate(items)]

    def _second_vectors(self, items: list[_Search], flat: list[Query], stages: dict) -> list:
        """The re-ranker's query vector of each search (None: no re-ranker, or it cannot compose that search)."""
        if self.rerank is None:
            return [None] * len(items)
        start = time.perf_counter()
        second = self.rerank.query_vectors(flat, [len(i.queries) for i in items])
        stages["rerank"] = time.perf_counter() - start
        return second

    @staticmethod
    def _query_error(item: _Search, error: Exception) -> ServiceError:
        """The reply for a search whose query failed: a gallery file that went bad is named by its id (the current
        reference's) or as one of the session's, never by the server's path."""
        files = [str(q.image) for q in item.queries if isinstance(q.image, (str, Path))]
        if not any(f in str(error) for f in files):
            return ServiceError(422, str(error))
        if item.image_id and str(error).find(files[-1]) >= 0:
            return ServiceError(422, unreadable_gallery_image(item.image_id))
        return ServiceError(422, "the file of a gallery image in this session's history is unreadable on the "
                                 "server; start the session again from another image")

    def _record(self, stages: dict) -> None:
        for stage, value in stages.items():
            self._recent[stage].append(value)

    def latency(self) -> dict:
        """Rolling percentiles (ms) of each stage over the last searches, and the mean batch size."""
        out: dict = {"searches": len(self._recent["total"])}
        for stage in STAGES:
            values = np.array(self._recent[stage]) * 1e3
            if len(values):
                out[stage] = {f"p{q}": round(float(np.percentile(values, q)), 2) for q in (50, 90, 99)}
        if self._recent["batch"]:
            out["mean_batch"] = round(float(np.mean(self._recent["batch"])), 2)
        return out

    # -- gallery ------------------------------------------------------------------------------
    @staticmethod
    def _name(image_id: str, meta: dict) -> str:
        return display_name(meta) or Path(str(meta.get("path", image_id))).stem

    def item(self, image_id: str, score: float | None = None) -> dict:
        row = self.index.row_of[image_id]
        meta = {k: v for k, v in self.index.metadata[row].items() if k != "path"}  # no server paths leave it
        out = {"id": image_id, "metadata": meta, "name": self._names[row],
               "image_url": f"/images/{quote(image_id, safe='')}",
               "thumbnail_url": f"/images/{quote(image_id, safe='')}?size=256"}
        if score is not None:
            out = {"id": image_id, "score": round(score, 6), **{k: v for k, v in out.items() if k != "id"}}
        return out

    def path_of(self, image_id: str) -> Path:
        """The file of a gallery id. Only ids in the index have files: no path is ever built from a request."""
        with self.lock:
            row = self.index.row_of.get(image_id)
            path = self.index.metadata[row].get("path") if row is not None else None
        if not path:
            raise ServiceError(404, f"no gallery image with id {quoted(image_id)}")
        path = Path(path)
        if not path.is_file():
            raise ServiceError(404, f"the file of gallery image {quoted(image_id)} is gone from disk")
        return path

    def thumbnail(self, image_id: str, size: int) -> bytes:
        if size not in THUMB_SIZES:
            raise ServiceError(422, f"thumbnail size must be one of {', '.join(map(str, THUMB_SIZES))}, got {size}")
        key = (image_id, size)
        with self._thumb_lock:
            if key in self._thumbs:
                self._thumbs.move_to_end(key)
                return self._thumbs[key]
        path = self.path_of(image_id)
        try:
            im = load_image(path)
        except CirlabError:
            raise ServiceError(415, unreadable_gallery_image(image_id)) from None
        im.thumbnail((size, size))
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=85)
        data = buf.getvalue()
        with self._thumb_lock:
            self._thumbs[key] = data
            while len(self._thumbs) > 4096:
                self._thumbs.popitem(last=False)
        return data

    def browse(self, q: str = "", offset: int = 0, limit: int = 24, random: bool = False, seed: int | None = None) -> dict:
        """Gallery items whose name or id contains ``q`` (case-insensitive), a page at a time, or a random pick."""
        limit = max(1, min(limit, MAX_K))
        if seed is not None and not 0 <= seed < 2**63:
            raise ServiceError(422, f"seed must be between 0 and 2**63 - 1, got {seed}")
        with self.lock:
            self.refresh()
            ids = self.index.ids
            if q.strip():
                needle = q.strip().lower()
                rows = [r for r, (i, n) in enumerate(zip(ids, self._names)) if needle in n.lower() or needle in i.lower()]
            else:
                rows = list(range(len(ids)))
            total = len(rows)
            if random:
                rng = np.random.default_rng(seed)
                pick = rng.choice(total, min(limit, total), replace=False) if total else []
                rows = [rows[p] for p in pick]
            else:
                rows = rows[max(0, offset):max(0, offset) + limit]
            return {"total": total, "items": [self.item(ids[r]) for r in rows]}

    # -- changes (token-protected in the app) -------------------------------------------------
    def add_images(self, files: list[tuple[str, bytes]]) -> dict:
        """Store uploaded images under ``INDEX/files/``, embed them and save the index as a new version (through
        :func:`cirlab.indexing.add_images`). The same image sent twice is stored once, and said so."""
        if not files:
            raise ServiceError(422, "send one or more files in the field 'image'")
        decoded = [(name, data, self.decode_upload(data, name)) for name, data in files]  # all checked first
        folder = self.index_dir / "files"
        folder.mkdir(exist_ok=True)
        ids, paths, names = [], [], []
        for name, data, im in decoded:
            stem = re.sub(r"[^A-Za-z0-9_-]+", "-", Path(name).stem).strip("-")[:40] or "upload"
            image_id = f"{stem}-{hashlib.sha1(data).hexdigest()[:8]}"
            path = folder / f"{image_id}.{'png' if im.mode == 'RGBA' else 'jpg'}"
            if image_id not in ids:
                im.save(path, quality=95)
            ids.append(image_id)
            paths.append(path.resolve())
            names.append({"name": Path(name).stem})
        with self.lock:
            done = self._commit(lambda held: add_images(self.pipe, self.index_dir, Gallery(ids, paths), names, held,
                                                        progress=False))
            return {"added": [self.item(i) for i in done.added], "duplicates": sorted(set(done.duplicates)),
                    "size": done.total, "warnings": self.upload_warnings([(n, im) for n, _, im in decoded])}

    def remove_image(self, image_id: str) -> None:
        with self.lock:
            if image_id not in self.index.row_of:
                raise ServiceError(404, f"no gallery image with id {quoted(image_id)}")
            self._commit(lambda held: remove_images(self.index_dir, [image_id], self.pipe, held))

    def _commit(self, change) -> Change:
        """Apply a change (a function of the index held, returning a :class:`cirlab.indexing.Change`) through the
        one write path, which takes the index's writer lock and picks up another writer's versions first, so
        neither loses the other's rows; on failure, reload the live version. Call under the lock."""
        try:
            done = change(self.index)
            self.index = done.index
            return done
        except Exception:
            self.index, self.manifest = load_index(self.index_dir, self.pipe.model.embed_dim, self.pipe.identity)
            raise
        finally:
            self._names = [self._name(i, m) for i, m in zip(self.index.ids, self.index.metadata)]

    def refresh(self) -> None:
        """Load the live version where another writer (``cirlab index add``) saved a newer one. Call under the lock."""
        if live_version(self.index_dir) not in (None, self.index.version):
            self.index, self.manifest = load_index(self.index_dir, self.pipe.model.embed_dim, self.pipe.identity)
            self._names = [self._name(i, m) for i, m in zip(self.index.ids, self.index.metadata)]

    def info(self) -> dict:
        meta = self.pipe.meta
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
            "batching": {"window_ms": self.batcher.window_s * 1e3, "max_batch": self.batcher.max_batch},
            "latency_ms": self.latency(),
            "rerank": self.rerank.info() if self.rerank else None,
        }
