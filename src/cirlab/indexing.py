"""Building an index in two steps: gallery vectors into shards on disk, then the index from the shards.

The shards are what clip-retrieval writes and embedding-reader and autofaiss read::

    OUT/embeddings/img_emb/img_emb_00000.npy        float32 (n, d), the gallery vectors
    OUT/embeddings/metadata/metadata_00000.parquet  id, path: one row per vector, in order
    OUT/embeddings/failed/failed_00000.json         the unreadable images of the shard and why
    OUT/embeddings/build.json                       model, shard size, and a hash of the image list

Shard ``n`` holds images ``n * size`` to ``(n + 1) * size - 1`` of the sorted gallery. Each file is
written under a temporary name and renamed, the vectors last, so a shard whose vectors file exists
is complete: a restarted build skips it. A build over another model, shard size or image list starts
over.

Two engines write the same shards:

- ``local``: this process, through the feature cache (so the server reads ``image_id`` references
  from it later);
- ``ray``: a Ray Data pipeline (``pip install 'cirlab[ray]'``). Paths go in, a pool of encoder
  actors (``map_batches`` with a class: one model per actor) decodes and encodes them, and this
  process writes each shard as its rows come back in order. With no address Ray starts on this
  machine; with one it joins that cluster (the images and the model must then be at the same paths
  on every node, as on a shared file system).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cirlab.data.triplets import Gallery
from cirlab.errors import CirlabError
from cirlab.files import atomic_write
from cirlab.optional import need

ENGINES = ("local", "ray")
SHARD_SIZE = 4096


@dataclass
class BuildReport:
    """What a build did: images embedded, skipped (already in shards), unreadable; seconds per phase."""

    shards: int
    embedded: int = 0
    resumed: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


def shard_paths(folder: Path, n: int) -> tuple[Path, Path, Path]:
    return (folder / "img_emb" / f"img_emb_{n:05d}.npy", folder / "metadata" / f"metadata_{n:05d}.parquet",
            folder / "failed" / f"failed_{n:05d}.json")


def _shard_count(images: int, size: int) -> int:
    return -(-images // size)


def _start(folder: Path, pipe, gallery: Gallery, size: int) -> int:
    """Check (or start) the build record; remove shards of another build. Returns the number of shards."""
    listing = hashlib.sha256("\n".join(f"{i}\t{p}" for i, p in zip(gallery.ids, gallery.paths)).encode()).hexdigest()
    record = {"model": pipe.identity, "shard_size": size, "images": len(gallery), "listing_sha256": listing}
    path = folder / "build.json"
    try:
        same = json.loads(path.read_text()) == json.loads(json.dumps(record))
    except (OSError, json.JSONDecodeError):
        same = False
    if not same:
        for sub, ext in (("img_emb", "npy"), ("metadata", "parquet"), ("failed", "json")):
            for old in (folder / sub).glob(f"{sub}_*.{ext}"):
                if old.stem[len(sub) + 1:].isdigit():  # only a shard's own files, never another file put there
                    old.unlink()
        atomic_write(path, lambda tmp: tmp.write_text(json.dumps(record, indent=1)))
    return _shard_count(len(gallery), size)


def _save_shard(folder: Path, n: int, ids, paths, vectors: np.ndarray, failed: list[tuple[str, str]]) -> None:
    vec_path, meta_path, fail_path = shard_paths(folder, n)
    atomic_write(fail_path, lambda tmp: tmp.write_text(json.dumps(failed)))
    table = pa.table({"id": list(ids), "path": [str(Path(p).resolve()) for p in paths]})
    atomic_write(meta_path, lambda tmp: pq.write_table(table, tmp))
    atomic_write(vec_path, lambda tmp: np.save(tmp, np.ascontiguousarray(vectors, dtype=np.float32)))  # last: the shard is done


def build_embeddings(pipe, gallery: Gallery, folder: str | Path, engine: str = "local", address: str | None = None,
                     workers: int | None = None, shard_size: int = SHARD_SIZE, progress: bool = True) -> BuildReport:
    """Embed a gallery into shards under ``folder`` with an engine, skipping shards a previous run wrote."""
    if engine not in ENGINES:
        raise CirlabError(f"unknown engine {engine!r}; choose one of: {', '.join(ENGINES)}")
    if shard_size < 1:
        raise CirlabError(f"--shard-size must be at least 1, got {shard_size}")
    if engine == "local" and (address or workers):
        raise CirlabError("--address and --workers are for --engine ray")
    from cirlab.encoders.runtime import check_int8_gallery

    check_int8_gallery(pipe.image_encoder, gallery.paths)  # int8 only: parity on this gallery's own images, first
    folder = Path(folder)
    count = _start(folder, pipe, gallery, shard_size)
    chunks = {n: Gallery(gallery.ids[n * shard_size:(n + 1) * shard_size], gallery.paths[n * shard_size:(n + 1) * shard_size])
              for n in range(count) if not shard_paths(folder, n)[0].is_file()}
    report = BuildReport(count, resumed=len(gallery) - sum(len(c) for c in chunks.values()))
    if engine == "local":
        start = time.perf_counter()
        for n, chunk in chunks.items():
            v = pipe.gallery_vectors(chunk, progress)
            _save_shard(folder, n, v.ids, v.paths, v.vectors, v.failed)
            report.embedded += len(v.ids)
        report.seconds["embed"] = time.perf_counter() - start
    elif chunks:
        _ray_embed(pipe, chunks, folder, address, workers, progress, report)
    report.failed = [tuple(x) for n in range(count) for x in json.loads(shard_paths(folder, n)[2].read_text())]
    return report


def read_embeddings(folder: str | Path) -> tuple[list[str], list[str], np.ndarray]:
    """Every shard's ids, paths and vectors, in shard order (what the index is built from)."""
    folder = Path(folder)
    record = json.loads((folder / "build.json").read_text())
    count = _shard_count(record["images"], record["shard_size"])
    ids, paths, parts = [], [], []
    for n in range(count):
        vec_path, meta_path, _ = shard_paths(folder, n)
        if not vec_path.is_file():
            raise CirlabError(f"{folder}: shard {n} is missing; run the build again to finish it")
        meta = pq.read_table(meta_path).to_pydict()
        ids += meta["id"]
        paths += meta["path"]
        parts.append(np.load(vec_path))
    dim = next((p.shape[1] for p in parts if p.ndim == 2), 0)
    return ids, paths, np.concatenate(parts) if parts else np.zeros((0, dim), np.float32)


# -- Ray ---------------------------------------------------------------------------------------

class _RayEncoder:
    """One model per actor: decodes a batch of paths and returns its gallery vectors (errors per row)."""

    def __init__(self, model: str, cache: str, placement: tuple[str, str, str, str]) -> None:
        from cirlab.api import Pipeline
        from cirlab.devices import Placement

        # (device, runtime, precision, encoder precision) as names: "cuda" is the GPU Ray gave this actor
        self.pipe = Pipeline.load(model, cache, Placement.resolve(*placement))

    def __call__(self, batch: dict) -> dict:
        from cirlab.images import UnreadableImage, load_image

        images, ok, errors = [], [], []
        for path in batch["path"]:
            try:
                images.append(load_image(path))
                ok.append(True)
                errors.append("")
            except UnreadableImage as e:
                ok.append(False)
                errors.append(str(e))
        dim = self.pipe.model.embed_dim
        vectors = np.zeros((len(ok), dim), np.float32)
        if images:
            vectors[np.array(ok)] = self.pipe.embed_images(images)
        return {"shard": batch["shard"], "id": batch["id"], "path": batch["path"], "vector": vectors,
                "error": np.array(errors, dtype=object)}


def ray_init(address: str | None, workers: int | None):
    """Ray, started here (no address) or joined (an address), with cirlab's settings passed to its workers."""
    ray = need("ray", "ray", "--engine ray")
    need("ray.data", "ray", "--engine ray")
    if ray.is_initialized():
        return ray
    keep = ("CIRLAB_HOME", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "TOKENIZERS_PARALLELISM",
            "HF_HOME", "XDG_CACHE_HOME")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    kwargs = {"runtime_env": {"env_vars": env}, "include_dashboard": False, "log_to_driver": False,
              "configure_logging": False}
    if not address:
        kwargs["num_cpus"] = max(workers or 1, os.cpu_count() or 1)
    elif address != "auto":
        _check_reachable(address)
    try:
        ray.init(address=address or None, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as e:
        hint = ("; a cluster with token authentication (Ray's default since 2.59) needs RAY_AUTH_MODE=token and its token "
                "(RAY_AUTH_TOKEN, or ~/.ray/auth_token) in this shell" if address else "")
        raise CirlabError(f"Ray did not start{' at ' + address if address else ''}: {str(e).splitlines()[0]}{hint}") from None
    return ray


def _check_reachable(address: str) -> None:
    """Refuse, in one line and within seconds, a cluster address nothing answers at (Ray itself would retry
    for minutes)."""
    import socket

    host, _, port = address.split("://")[-1].rpartition(":")
    if not host or not port.isdigit():
        raise CirlabError(f"--address {address!r}: give HOST:PORT (e.g. 10.0.0.5:6379 or ray://10.0.0.5:10001) or 'auto'")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as e:
        raise CirlabError(f"no Ray cluster answers at {address} ({e.strerror or type(e).__name__}): start one with "
                          "'ray start --head' there, or leave --address out to start Ray on this machine") from None


def _ray_embed(pipe, chunks: dict[int, Gallery], folder: Path, address: str | None, workers: int | None,
               progress: bool, report: BuildReport) -> None:
    if pipe.path is None:
        raise CirlabError("--engine ray needs a model saved on disk (its workers load it by path)")
    start = time.perf_counter()
    ray = ray_init(address, workers)
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # rows come back in order, so shards complete one by one
    ctx.enable_progress_bars = progress
    rows = [{"shard": n, "id": i, "path": str(Path(p).resolve())} for n, chunk in chunks.items()
            for i, p in zip(chunk.ids, chunk.paths)]
    report.seconds["ray_start"] = time.perf_counter() - start
    start = time.perf_counter()
    gpu = pipe.placement.device.type == "cuda"  # then each actor asks Ray for a GPU of its own
    n_workers = workers or max(1, int(ray.available_resources().get("GPU" if gpu else "CPU", 1)))
    blocks = max(n_workers, -(-len(rows) // 512))  # blocks of at most 512 paths, at least one per actor
    ds = ray.data.from_items(rows, override_num_blocks=blocks).map_batches(
        _RayEncoder, fn_constructor_kwargs={"model": str(pipe.path), "cache": str(pipe.cache.root),
                                            "placement": ("cuda" if gpu else "cpu", pipe.placement.runtime,
                                                          pipe.placement.precision, pipe.placement.encoding)},
        batch_size=32, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=n_workers), num_cpus=1,
        **({"num_gpus": 1} if gpu else {}))
    pending: dict[int, list[dict]] = {}
    want = {n: len(chunk) for n, chunk in chunks.items()}
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for j in range(len(batch["id"])):
            n = int(batch["shard"][j])
            pending.setdefault(n, []).append({k: batch[k][j] for k in ("id", "path", "vector", "error")})
            if len(pending[n]) == want[n]:
                _finish_shard(folder, n, pending.pop(n), report)
    report.seconds["embed"] = time.perf_counter() - start
    if pending:
        raise CirlabError(f"Ray returned incomplete shards {sorted(pending)}; run the build again to finish them")


def _finish_shard(folder: Path, n: int, rows: list[dict], report: BuildReport) -> None:
    good = [r for r in rows if not r["error"]]
    vectors = np.stack([r["vector"] for r in good]) if good else np.zeros((0, len(rows[0]["vector"])), np.float32)
    _save_shard(folder, n, [str(r["id"]) for r in good], [str(r["path"]) for r in good], vectors,
                [(str(r["path"]), str(r["error"])) for r in rows if r["error"]])
    report.embedded += len(good)


def build_gallery_index(pipe, gallery: str | Path, out: str | Path, backend: str = "exact", engine: str = "local",
                        address: str | None = None, workers: int | None = None, shard_size: int = SHARD_SIZE,
                        metadata: str | Path | None = None, progress: bool = True) -> tuple[object, BuildReport, str | None]:
    """``cirlab index build``: shards under ``OUT/embeddings`` (resumed where a run stopped), then the index from
    them with each image's metadata (``metadata``, else a data set's ``images.jsonl``), saved as ``OUT``'s live
    version. Returns (index, report, where the metadata came from)."""
    from cirlab.api import GalleryVectors
    from cirlab.index.base import build_index
    from cirlab.index.metadata import gallery_metadata
    from cirlab.index.store import save_index

    gallery = Path(gallery)
    index = build_index(backend, pipe.model.embed_dim)  # a bad spec is refused before any encoding
    found = gallery_metadata(gallery, metadata)
    report = build_embeddings(pipe, Gallery.from_folder(gallery), Path(out) / "embeddings", engine, address, workers,
                              shard_size, progress)
    ids, paths, vectors = read_embeddings(Path(out) / "embeddings")
    if not ids:
        raise CirlabError(f"none of the gallery images could be read (e.g. {report.failed[0][1]})")
    start = time.perf_counter()
    index.add(ids, vectors, GalleryVectors(ids, paths, vectors).metadata(found[1] if found else None, gallery))
    save_index(index, out, {**pipe.identity, "gallery": str(gallery.resolve())})
    report.seconds["index"] = time.perf_counter() - start
    return index, report, str(found[0]) if found else None


# -- the one write path: every change to a saved index -----------------------------------------

@dataclass
class Change:
    """What an add or a remove did: ids added (new or replaced), ``duplicates`` (repeats within the request,
    stored once), ``unreadable`` ((file, why) per image that failed), ``removed`` ids, and the size after."""

    index: object
    added: list[str] = field(default_factory=list)
    new: int = 0
    duplicates: list[str] = field(default_factory=list)
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    removed: int = 0

    @property
    def total(self) -> int:
        return len(self.index)


def index_gallery(pipe, gallery: Gallery | str | Path, backend: str = "exact", metadata: dict[str, dict] | None = None,
                  root: str | Path | None = None, progress: bool = True) -> tuple[object, list[tuple[str, str]]]:
    """A new in-memory index of a gallery (embedded through the feature cache) with ``backend``; ``metadata``:
    records to attach by id or path (:mod:`cirlab.index.metadata`), paths relative to ``root``. Returns the
    index and the unreadable images."""
    vectors = pipe.encode_gallery(gallery, progress)
    return vectors.to_index(backend, metadata, root), vectors.failed


def gallery_ids(index_dir: str | Path, paths: list[str | Path]) -> Gallery:
    """Images (files, or folders searched recursively) with the ids an index gives them: paths relative to the
    gallery the index was built from, without the suffix, where they lie under it; else their absolute paths."""
    from cirlab.index.store import read_manifest

    manifest, _ = read_manifest(index_dir)
    root = Path(manifest.get("model", {}).get("gallery") or ".")
    ids, files = [], []
    for item in map(Path, paths):
        if not item.exists():
            raise CirlabError(f"{item} does not exist")
        for p in ([item] if item.is_file() else Gallery.from_folder(item).paths):
            p = p.resolve()
            ids.append(p.relative_to(root).with_suffix("").as_posix() if p.is_relative_to(root) else str(p))
            files.append(p)
    return Gallery(ids, files)


def add_images(pipe, index_dir: str | Path, gallery: Gallery, metadata: list[dict] | None = None, held=None,
               progress: bool = True) -> Change:
    """Embed images and add them to a saved index, as its next version (``cirlab index add`` and ``POST
    /gallery``). An id given twice is stored once (its first image) and reported in ``duplicates``. The images
    are encoded before the writer lock is taken, so other writers go on meanwhile; the rows are added to the
    version live inside the lock. ``metadata``: a record per image (its ``path`` is set here); ``held``: an
    index this process has in memory (:func:`cirlab.index.store.update_index`)."""
    from cirlab.index.store import read_manifest

    # refused before encoding: another model, or image vectors of another precision
    manifest, _ = read_manifest(index_dir, pipe.model.embed_dim, pipe.identity, adding=True)
    first = {}
    for n, i in enumerate(gallery.ids):
        first.setdefault(i, n)
    keep = sorted(first.values())
    duplicates = [i for n, i in enumerate(gallery.ids) if first[i] != n]
    records = {gallery.ids[n]: dict(metadata[n]) if metadata else {} for n in keep}
    vectors = pipe.encode_gallery(Gallery([gallery.ids[n] for n in keep], [gallery.paths[n] for n in keep]), progress)
    rows = [{**records[i], **m} for i, m in zip(vectors.ids, vectors.metadata())]
    with _change(pipe, index_dir, held) as index:
        before = len(index)
        index.add(vectors.ids, vectors.vectors, rows)
    return Change(index, list(vectors.ids), len(index) - before, duplicates, list(vectors.failed))


def remove_images(index_dir: str | Path, ids: list[str], pipe=None, held=None) -> Change:
    """Remove ids from a saved index, as its next version (``cirlab index remove`` and ``DELETE /gallery``);
    unknown ids are ignored. ``pipe``: refuse an index built with another model."""
    with _change(pipe, index_dir, held) as index:
        removed = index.remove(ids)
    return Change(index, removed=removed)


def _change(pipe, index_dir, held):
    from cirlab.index.store import update_index

    if pipe is None:
        return update_index(index_dir, held=held)
    return update_index(index_dir, pipe.model.embed_dim, pipe.identity, held=held)
