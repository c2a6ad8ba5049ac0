"""The feature cache: encode once, reuse everywhere (training, evaluation, serving).

Layout, one folder per encoder id::

    <root>/<encoder id>/entries.parquet           key, size, mtime_ns, sha1, shard, row, views, runtime
    <root>/<encoder id>/shard-00000.pooled.npy    float32 (n, D)
    <root>/<encoder id>/shard-00000.tokens.npy    float16 (n, N, Dt)

Each entry records the runtime that made it (``torch``, ``onnx``, ``openvino``; ``native`` for an
encoder without a network). Runtimes hold parity, so they share the encoder id. A precision other than fp32
(bf16, a GPU's fp16) does not: its vectors go to ``<encoder id>~bf16`` (``encoders.precision.cache_id``), and a
folder refuses vectors of another precision. Image keys are absolute
paths; an entry is a hit when size and mtime match, or, when they do not, when the content hash still
matches (a fresh clone or a ``touch`` re-encodes nothing). Text keys are the texts themselves. Shards
are ``.npy`` and the entries table is parquet, so other tools read them directly. Writes go to a temporary name and are renamed.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from cirlab.devices import loader_workers
from cirlab.encoders.precision import cache_id, check_entry
from cirlab.encoders.runtime import runtime_name
from cirlab.files import atomic_write
from cirlab.images import UnreadableImage, decode_images

FLUSH_EVERY = 1024  # items per shard: a crash mid-encoding keeps what was flushed


def _sha1(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


def _safe_name(encoder_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.@~-]+", "_", encoder_id)[:120]


@dataclass
class ImageFeatures:
    """Features of the readable images, in input order, and the files that could not be read."""

    paths: list[Path]
    views: dict[str, np.ndarray]
    failed: list[tuple[Path, str]] = field(default_factory=list)
    encoded: int = 0  # how many were encoded now (cache misses)


class _Store:
    """Entries and shards of one encoder id."""

    def __init__(self, folder: Path, key: str) -> None:
        self.folder, self.key = folder, key
        folder.mkdir(parents=True, exist_ok=True)
        self.entries: dict[str, dict] = {}
        table_path = folder / "entries.parquet"
        if table_path.is_file():
            for row in pq.read_table(table_path).to_pylist():
                row.setdefault("runtime", "torch")  # written before entries recorded it
                self.entries[row["key"]] = row
        self._next_shard = 1 + max((e["shard"] for e in self.entries.values()), default=-1)

    def save_entries(self) -> None:
        cols = ("key", "size", "mtime_ns", "sha1", "shard", "row", "views", "runtime")
        table = pa.table({c: [e[c] for e in self.entries.values()] for c in cols})
        atomic_write(self.folder / "entries.parquet", lambda tmp: pq.write_table(table, tmp))

    def write_shard(self, keys: list[dict], arrays: dict[str, np.ndarray], runtime: str) -> None:
        check_entry(self.key, runtime)
        shard = self._next_shard
        self._next_shard += 1
        for view, arr in arrays.items():
            atomic_write(self.folder / f"shard-{shard:05d}.{view}.npy", lambda tmp, arr=arr: np.save(tmp, arr))
        views = ",".join(sorted(arrays))
        for row, meta in enumerate(keys):
            self.entries[meta["key"]] = {**meta, "shard": shard, "row": row, "views": views, "runtime": runtime}
        self.save_entries()

    def gather(self, keys: Sequence[str], views: Sequence[str]) -> dict[str, np.ndarray]:
        """Stack cached rows for ``keys`` (all must be hits), reading each shard once, memory-mapped."""
        by_shard: dict[int, list[tuple[int, int]]] = {}
        for i, k in enumerate(keys):
            e = self.entries[k]
            by_shard.setdefault(e["shard"], []).append((i, e["row"]))
        out: dict[str, np.ndarray] = {}
        for view in views:
            parts: list[np.ndarray | None] = [None] * len(keys)
            for shard, pairs in by_shard.items():
                arr = np.load(self.folder / f"shard-{shard:05d}.{view}.npy", mmap_mode="r")
                rows = arr[[r for _, r in pairs]]
                for (i, _), v in zip(pairs, rows):
                    parts[i] = v
            out[view] = np.stack(parts) if parts else np.zeros((0,), np.float32)
        return out


class FeatureCache:
    """Encoder outputs on disk, keyed by encoder id and input; see the module docstring."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self._stores: dict[str, _Store] = {}

    def store(self, encoder_id: str) -> _Store:
        if encoder_id not in self._stores:
            self._stores[encoder_id] = _Store(self.root / _safe_name(encoder_id), encoder_id)
        return self._stores[encoder_id]

    def image_features(
        self, encoder, paths: Sequence[str | Path], views: Sequence[str] = ("pooled",),
        batch_size: int = 32, progress: bool = True,
    ) -> ImageFeatures:
        """Views for every readable path: cache hits are read, misses encoded and stored."""
        store = self.store(cache_id(encoder))
        views = tuple(sorted(set(views)))
        keys, ok_paths, failed, todo = [], [], [], []
        refreshed = False
        for p in map(Path, paths):
            path = p.resolve()
            try:
                st = path.stat()
            except OSError:
                failed.append((p, "no such file"))
                continue
            key = str(path)
            meta = {"key": key, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha1": ""}
            e = store.entries.get(key)
            hit = e is not None and set(views) <= set(e["views"].split(","))
            if hit and (e["size"], e["mtime_ns"]) != (st.st_size, st.st_mtime_ns):
                meta["sha1"] = _sha1(path)
                hit = e["sha1"] == meta["sha1"]
                if hit:  # same bytes, new timestamp: refresh the entry, keep the vectors
                    store.entries[key] = {**e, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
                    refreshed = True
            keys.append(key)
            ok_paths.append(p)
            if not hit:
                todo.append((len(keys) - 1, path, meta))
        # a miss re-encodes every view the entry had before too, so views never evict each other
        enc_views = tuple(sorted(set(views).union(*(self._had(store, m["key"]) for _, _, m in todo))))
        bad = self._encode_images(store, encoder, todo, enc_views, batch_size, progress)
        if refreshed and not todo:
            store.save_entries()
        if bad:
            drop = {i for i, _ in bad}
            failed += [(ok_paths[i], why) for i, why in bad]
            keys = [k for i, k in enumerate(keys) if i not in drop]
            ok_paths = [p for i, p in enumerate(ok_paths) if i not in drop]
        feats = store.gather(keys, views)
        return ImageFeatures(ok_paths, feats, failed, encoded=len(todo) - len(bad))

    def _encode_images(self, store: _Store, encoder, todo, views, batch_size: int, progress: bool) -> list[tuple[int, str]]:
        bad: list[tuple[int, str]] = []
        pending_meta: list[dict] = []
        pending: dict[str, list[np.ndarray]] = {v: [] for v in views}
        bar = tqdm(total=len(todo), desc=f"encoding images ({encoder.spec})", unit="img", disable=not progress or not todo)
        decoded = decode_images([path for _, path, _ in todo], batch_size, loader_workers(getattr(encoder, "device", None)))
        for start, loaded in zip(range(0, len(todo), batch_size), decoded):
            chunk = todo[start:start + batch_size]
            images, metas = [], []
            for (i, path, meta), image in zip(chunk, loaded):
                if isinstance(image, UnreadableImage):
                    bad.append((i, str(image)))
                    continue
                images.append(image)
                if not meta["sha1"]:
                    meta["sha1"] = _sha1(path)
                metas.append(meta)
            if images:
                out = encoder.encode_images(images, views)
                for v in views:
                    pending[v].append(out[v])
                pending_meta += metas
            bar.update(len(chunk))
            if len(pending_meta) >= FLUSH_EVERY:
                self._flush(store, pending_meta, pending, runtime_name(encoder))
                pending_meta, pending = [], {v: [] for v in views}
        if pending_meta:
            self._flush(store, pending_meta, pending, runtime_name(encoder))
        elif todo:
            store.save_entries()
        bar.close()
        return bad

    @staticmethod
    def _had(store: _Store, key: str) -> set[str]:
        e = store.entries.get(key)
        return set(e["views"].split(",")) if e else set()

    @staticmethod
    def _flush(store: _Store, metas: list[dict], pending: dict[str, list[np.ndarray]], runtime: str) -> None:
        store.write_shard(metas, {v: np.concatenate(parts) for v, parts in pending.items()}, runtime)

    def text_features(
        self, encoder, texts: Sequence[str], views: Sequence[str] = ("pooled",),
        batch_size: int = 128, progress: bool = True,
    ) -> dict[str, np.ndarray]:
        """Views for every text (duplicates encoded once)."""
        return self.keyed_features(cache_id(encoder), list(texts), views, encoder.encode_texts,
                                   batch_size, progress, f"encoding texts ({encoder.spec})", runtime_name(encoder))

    def keyed_features(
        self, encoder_id: str, keys: list[str], views: Sequence[str],
        encode: Callable[[list[str], tuple[str, ...]], dict[str, np.ndarray]], batch_size: int = 128,
        progress: bool = True, desc: str = "encoding", runtime: str = "native",
    ) -> dict[str, np.ndarray]:
        """Views for items named by string keys, computed by ``encode`` on a miss."""
        store = self.store(encoder_id)
        views = tuple(sorted(set(views)))
        missing = sorted({k for k in keys
                          if k not in store.entries or not set(views) <= set(store.entries[k]["views"].split(","))})
        if missing:
            enc_views = tuple(sorted(set(views).union(*(self._had(store, k) for k in missing))))
            flush_every = batch_size * 16  # long runs keep what they did if interrupted
            for chunk in range(0, len(missing), flush_every):
                todo = missing[chunk:chunk + flush_every]
                parts: dict[str, list[np.ndarray]] = {v: [] for v in enc_views}
                for start in tqdm(range(0, len(todo), batch_size), desc=desc, disable=not progress or len(todo) <= batch_size):
                    out = encode(todo[start:start + batch_size], enc_views)
                    for v in enc_views:
                        parts[v].append(out[v])
                metas = [{"key": k, "size": 0, "mtime_ns": 0, "sha1": ""} for k in todo]
                store.write_shard(metas, {v: np.concatenate(p) for v, p in parts.items()}, runtime)
        return store.gather(keys, views)
