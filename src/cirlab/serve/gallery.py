"""The gallery keeper of the server: the index it searches, its files and thumbnails, browsing, and gallery changes
through the one write path (``cirlab.indexing``), picking up the versions another writer saved."""

from __future__ import annotations

import hashlib
import io
import re
import threading
from collections import OrderedDict
from pathlib import Path
from urllib.parse import quote

import numpy as np

from cirlab.data.triplets import Gallery
from cirlab.errors import CirlabError, quoted
from cirlab.images import load_image
from cirlab.index import load_index
from cirlab.index.metadata import display_name
from cirlab.index.store import live_version
from cirlab.indexing import Change, add_images, remove_images
from cirlab.serve.errors import ServiceError, unreadable_gallery_image

MAX_K = 100  # results one search or one page of the gallery returns at most
THUMB_SIZES = (64, 128, 256, 512)
THUMBS_KEPT = 4096


class GalleryKeeper:
    """The index over the gallery and everything about its images. ``lock`` (shared with the query executor: the
    index is read under it) guards the index; thumbnails have their own small lock and LRU."""

    def __init__(self, pipe, index_dir: str | Path, lock: threading.RLock) -> None:
        self.pipe, self.index_dir, self.lock = pipe, Path(index_dir), lock
        self.index, self.manifest = load_index(self.index_dir, pipe.model.embed_dim, pipe.identity)
        self._names = self._read_names()
        self._thumbs: OrderedDict[tuple[str, int], bytes] = OrderedDict()
        self._thumb_lock = threading.Lock()

    def _read_names(self) -> list[str]:
        return [display_name(m) or Path(str(m.get("path", i))).stem for i, m in zip(self.index.ids, self.index.metadata)]

    def item(self, image_id: str, score: float | None = None) -> dict:
        """What a reply says of a gallery image: its id, (score,) metadata without its server path, name and URLs."""
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
        with self._thumb_lock:
            self._thumbs[key] = buf.getvalue()
            while len(self._thumbs) > THUMBS_KEPT:
                self._thumbs.popitem(last=False)
        return buf.getvalue()

    def browse(self, q: str = "", offset: int = 0, limit: int = 24, random: bool = False, seed: int | None = None) -> dict:
        """Gallery items whose name or id contains ``q`` (case-insensitive), a page at a time, or a random pick."""
        limit = max(1, min(limit, MAX_K))
        if seed is not None and not 0 <= seed < 2**63:
            raise ServiceError(422, f"seed must be between 0 and 2**63 - 1, got {seed}")
        with self.lock:
            self.refresh()
            ids, needle = self.index.ids, q.strip().lower()
            rows = [r for r, (i, n) in enumerate(zip(ids, self._names)) if needle in n.lower() or needle in i.lower()] \
                if needle else list(range(len(ids)))
            total = len(rows)
            if random:
                pick = np.random.default_rng(seed).choice(total, min(limit, total), replace=False) if total else []
                rows = [rows[p] for p in pick]
            else:
                rows = rows[max(0, offset):max(0, offset) + limit]
            return {"total": total, "items": [self.item(ids[r]) for r in rows]}

    def add(self, decoded: list[tuple[str, bytes, object]]) -> Change:
        """Store decoded uploads (name, bytes, image) under ``INDEX/files/``, embed them and save the index as a new
        version (:func:`cirlab.indexing.add_images`). The same image sent twice is stored once."""
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
            return self._commit(lambda held: add_images(self.pipe, self.index_dir, Gallery(ids, paths), names, held,
                                                        progress=False))

    def remove(self, image_id: str) -> None:
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
            self._names = self._read_names()

    def refresh(self) -> None:
        """Load the live version where another writer (``cirlab index add``) saved a newer one. Call under the lock."""
        if live_version(self.index_dir) not in (None, self.index.version):
            self.index, self.manifest = load_index(self.index_dir, self.pipe.model.embed_dim, self.pipe.identity)
            self._names = self._read_names()
