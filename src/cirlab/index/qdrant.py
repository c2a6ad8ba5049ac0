"""The ``qdrant`` index backend: the vectors and their metadata in Qdrant.

Specs:

- ``qdrant``: Qdrant's own engine embedded (Qdrant Edge, ``qdrant-edge-py``) in a folder of its own
  that lives as long as the index (refilled from the index's vectors when the index is loaded);
- ``qdrant:path=DIR``: Qdrant Edge on disk, the shard in ``DIR/<collection>``; it persists and is
  reused when it still holds the index's rows. One process at a time may open a shard;
- ``qdrant:url=http://HOST:6333``: a Qdrant server or cluster through ``qdrant-client`` (the API key,
  if any, comes from ``$QDRANT_API_KEY``, never from the spec that the manifest records);
- ``qdrant:local=1[,path=DIR]``: ``qdrant-client``'s local mode, its pure-Python stand-in for a
  server (a numpy scan, filters checked point by point). Kept only because it runs the client calls
  of the ``url=`` path without a server; it is not Qdrant's engine and is not for galleries.

Options: ``collection`` (default ``cirlab``), ``m`` (Edge's HNSW edges per node; 0: no graph, every
search a full scan; built when the index is written), ``shards`` and ``replicas`` (a server's new
collection: its shard count and replication factor across a cluster's nodes), and the query-time ``ef`` (HNSW ``ef``),
``exact=1`` (a full scan) and ``acorn=0`` (Edge: a filtered search walks the graph without ACORN, which it uses by
default). Each row is a point whose id is a UUID derived from the cirlab id and
whose payload is the row's metadata plus ``cirlab_id``. Metadata fields whose values share one type
get a payload index; filters (:func:`cirlab.index.base.check_filter`) become Qdrant conditions, so
the engine filters during the search.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
import weakref
from pathlib import Path

import numpy as np

from cirlab import __version__
from cirlab.errors import CirlabError, InUse
from cirlab.files import atomic_write_text
from cirlab.index.base import BaseIndex, index_backends
from cirlab.optional import need

_NAMESPACE = uuid.UUID("5c1d7a3e-8a4b-4f43-9d7e-6c1a2b3c4d5e")
_BATCH = 512
_EDGE_FILES = {"edge_config.json", "segments", "temp_segments", "wal"}  # what an Edge shard's folder holds
MARKER = "cirlab-shard.json"  # written by cirlab into a shard folder it makes: the only proof a folder is cirlab's
_MARKER_FORMAT = "cirlab-qdrant-edge-shard"


def _flag(value: str) -> bool:
    if str(value).lower() in ("1", "true", "yes", "on"):
        return True
    if str(value).lower() in ("0", "false", "no", "off"):
        return False
    raise CirlabError(f"expected 1 or 0 (true or false), got {value!r}")


def point_id(image_id: str) -> str:
    """The Qdrant point id of a cirlab id: a UUID-5, stable across processes and machines."""
    return str(uuid.uuid5(_NAMESPACE, image_id))


def _field_type(values) -> type | None:
    """The one type (str, int or bool) of a metadata field's values, lists flattened; None: mixed or other."""
    kinds = {type(v) for value in values for v in (value if isinstance(value, list) else [value]) if v is not None}
    return kinds.pop() if len(kinds) == 1 and kinds <= {str, int, bool} else None


def _filter(models, where: dict[str, tuple]):
    """A checked filter as a Qdrant filter of ``models`` (``qdrant_client.models`` or ``qdrant_edge``): each field
    must match one of its values, the value's type included (``3`` is not ``"3"``, ``True`` is not ``1``)."""
    must = []
    for field, values in where.items():
        same = {type(v) for v in values}
        if len(values) > 1 and same in ({str}, {int}):
            must.append(models.FieldCondition(key=field, match=models.MatchAny(any=list(values))))
        elif len(values) == 1:
            must.append(models.FieldCondition(key=field, match=models.MatchValue(value=values[0])))
        else:
            must.append(models.Filter(should=[models.FieldCondition(key=field, match=models.MatchValue(value=v))
                                              for v in values]))
    return models.Filter(must=must)


def _unbool(value):
    """A payload value as Qdrant Edge is given it: qdrant-edge-py 0.9 hands a Python bool to the engine as an integer,
    so ``True`` would match 1 and never a stored true. A bool goes in as a string no metadata value spells (it begins
    with a NUL), in the payload and in the filter alike; the index keeps the real metadata, the payload only filters."""
    if isinstance(value, bool):
        return "\x00true" if value else "\x00false"
    return [_unbool(v) for v in value] if isinstance(value, (list, tuple)) else value


class _Edge:
    """Qdrant Edge: one shard in a folder, in this process."""

    def __init__(self, folder: Path, dim: int, m: int) -> None:
        self.qe = need("qdrant_edge", "qdrant", "the qdrant index backend (Qdrant Edge)")
        self.folder, self.dim, self.m = folder, dim, m
        self.shard = None
        self.fields: set[str] = set()

    def where(self) -> str:
        return str(self.folder)

    def _open(self, make) -> None:
        try:
            self.shard = make()
        except Exception as e:  # the engine raises one Exception type; the lock is the usual cause
            text = str(e).splitlines()[0] if str(e) else type(e).__name__
            if "WouldBlock" in text or "lock" in text.lower():
                raise InUse(f"qdrant: {self.folder} is in use by another process (a Qdrant Edge shard opens in "
                                  "one process at a time): close it there, or serve the index from a Qdrant server "
                                  "(url=...) to share it") from None
            raise CirlabError(f"qdrant: cannot open {self.folder}: {text}") from None

    def exists(self) -> bool:
        """A shard cirlab made is here: the folder is a real folder that holds cirlab's marker (file names prove
        nothing: a user's folder may hold a ``wal`` or an ``edge_config.json`` of its own)."""
        return self._marked()

    def _marked(self) -> bool:
        try:
            record = json.loads((self.folder / MARKER).read_text())
        except (OSError, ValueError):
            return False
        return not self.folder.is_symlink() and isinstance(record, dict) and record.get("format") == _MARKER_FORMAT

    def _check_place(self) -> None:
        """Refuse, in one line, a shard folder that cirlab must not replace: a file or a symbolic link where the
        folder should be, a folder without cirlab's marker that is not empty, or a marked one that holds more than a
        shard's own files. Nothing is removed before this passes."""
        folder = self.folder
        for place in (folder, *folder.parents):
            linked = place == folder and place.is_symlink()  # a link's target is not ours to replace
            if linked or place.exists() and not place.is_dir():
                what = "a symbolic link" if linked else "a file"
                raise CirlabError(f"qdrant: {place} is {what}, not a folder: cirlab keeps the shard in the folder "
                                  f"{folder} and will not replace {what}; move it away or give path= another folder")
        if not folder.exists():
            return
        entries = sorted(p.name for p in folder.iterdir())
        if entries and not self._marked():
            raise CirlabError(f"qdrant: {folder} is not empty and has no {MARKER}, so it is not a shard cirlab made "
                              f"({entries[0]}, ...): cirlab replaces only its own shards; give path= a new or empty "
                              "folder (or collection= another name); if it is a shard of an earlier cirlab, remove it "
                              "yourself and the index refills it")
        stray = sorted(set(entries) - _EDGE_FILES - {MARKER})
        if stray:
            raise CirlabError(f"qdrant: {folder} holds files that are not a Qdrant Edge shard's ({stray[0]}, ...): "
                              "cirlab replaces only a folder of its own shard; move them away or give path= another "
                              "folder")

    def open(self) -> None:
        if self.shard is None:
            self._open(lambda: self.qe.EdgeShard.load(str(self.folder)))
            self.fields = set(self.shard.info().payload_schema)

    def create(self) -> None:
        """An empty shard, replacing one cirlab made here (:meth:`_check_place`: never a folder of anything else)."""
        self._check_place()
        if self.shard is None and self.exists():
            self.open()  # a shard another process holds is refused here, before anything of it is removed
        self.close()
        for name in sorted(_EDGE_FILES):  # only the shard's own entries; the marker stays
            entry = self.folder / name
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            elif entry.exists() or entry.is_symlink():
                entry.unlink()
        qe = self.qe
        hnsw = qe.HnswIndexConfig(m=self.m or 16, ef_construct=100, full_scan_threshold=10_000)
        config = qe.EdgeConfig(vectors=qe.EdgeVectorParams(size=self.dim, distance=qe.Distance.Cosine),
                               hnsw_config=hnsw, optimizers=qe.EdgeOptimizersConfig(
                                   indexing_threshold=1 if self.m else 2 ** 31 - 1))
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.folder / MARKER, json.dumps(
                {"format": _MARKER_FORMAT, "version": 1, "dim": self.dim, "cirlab_version": __version__}) + "\n")
        except OSError as e:
            raise CirlabError(f"qdrant: cannot make the shard folder {self.folder} ({e.strerror or e}): give path= a "
                              "folder you can write") from None
        self._open(lambda: qe.EdgeShard.create(str(self.folder), config))
        self.fields = set()

    def index_fields(self, types: dict[str, type]) -> None:
        schema = {str: self.qe.PayloadSchemaType.Keyword, int: self.qe.PayloadSchemaType.Integer,
                  bool: self.qe.PayloadSchemaType.Keyword}  # see _unbool
        for field, kind in types.items():
            if field not in self.fields:
                self.shard.update(self.qe.UpdateOperation.create_field_index(field, schema[kind]))
                self.fields.add(field)

    def upsert(self, points: list[str], vectors: np.ndarray, payloads: list[dict]) -> None:
        qe = self.qe
        self.shard.update(qe.UpdateOperation.upsert_points(
            [qe.Point(p, v, {k: _unbool(x) for k, x in payload.items()})
             for p, v, payload in zip(points, vectors.tolist(), payloads)]))

    def delete(self, points: list[str]) -> None:
        self.shard.update(self.qe.UpdateOperation.delete_points(points))

    def settle(self) -> None:
        """Build the HNSW graph over what was written, and make it durable."""
        self.shard.optimize()
        self.shard.flush()

    def count(self) -> int:
        return self.shard.count(self.qe.CountRequest(exact=True))

    def vectors_of(self, points: list[str]) -> dict[str, np.ndarray]:
        got = self.shard.retrieve(points, False, True)
        return {str(r.id): np.asarray(r.vector, np.float32) for r in got}

    def query(self, queries: np.ndarray, k: int, where, ef, exact, acorn=True) -> list[list[tuple[str, float]]]:
        """The top ``k`` of each query; a filtered search walks the graph with ACORN (``acorn``): at 100k real gallery
        vectors and a filter keeping a third, Edge 0.9's HNSW found 80% of the true top 10 without it and 99.95% with
        it, for 1.1-1.4x the p50 (docs/scale.md)."""
        qe = self.qe
        flt = _filter(qe, {f: tuple(_unbool(values)) for f, values in where.items()}) if where else None
        walk = qe.AcornSearchParams(enable=True) if where and acorn else None
        params = qe.SearchParams(hnsw_ef=ef, exact=bool(exact), acorn=walk) if ef or exact or walk else None
        batch = qe.QueryBatchRequest([qe.QueryRequest(limit=k, query=qe.Query.Nearest(q), filter=flt, params=params,
                                                      with_payload=False) for q in queries.tolist()])
        return [[(str(p.id), p.score) for p in answer] for answer in self.shard.query_batch(batch)]

    def close(self) -> None:
        if self.shard is not None:
            self.shard.close()
            self.shard = None


class _Client:
    """A collection through ``qdrant-client``: a server (``url``) or the client's local mode."""

    def __init__(self, dim: int, collection: str, url: str | None, path: str | None, layout: dict) -> None:
        need("qdrant_client", "qdrant", "the qdrant index backend")
        from qdrant_client import models

        self.models, self.dim, self.collection, self.url, self.path = models, dim, collection, url, path
        self.layout = layout  # shard_number, replication_factor where the spec gives them (a cluster's collection)
        self.client = None

    def where(self) -> str:
        return self.url or self.path or "memory"

    def _call(self, what: str, fn, *args, **kwargs):
        """A client call; a transport or server failure is a one-line error naming the collection."""
        try:
            return fn(*args, **kwargs)
        except CirlabError:
            raise
        except Exception as e:  # the client raises httpx, grpc and its own errors; all mean the same to a user
            raise CirlabError(f"qdrant ({self.where()}, collection {self.collection!r}): {what} failed: "
                              f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None

    def open(self) -> None:
        if self.client is not None:
            return
        from qdrant_client import QdrantClient

        try:
            if self.url:
                self.client = QdrantClient(url=self.url, api_key=os.environ.get("QDRANT_API_KEY"), timeout=60,
                                           check_compatibility=False)
            else:
                self.client = QdrantClient(path=self.path) if self.path else QdrantClient(location=":memory:")
        except (RuntimeError, ValueError) as e:  # local mode: the folder is open in another process
            raise InUse(f"qdrant: cannot open {self.where()}, in use by another process: {str(e).splitlines()[0]} "
                        "(local mode allows one process; use a Qdrant server, url=..., to share an index)") from None

    def exists(self) -> bool:
        self.open()
        return self._call("checking the collection", self.client.collection_exists, self.collection)

    def create(self) -> None:
        self.open()
        if self.exists():
            self._call("dropping the old collection", self.client.delete_collection, self.collection)
        self._call("creating the collection", self.client.create_collection, self.collection,
                   vectors_config=self.models.VectorParams(size=self.dim, distance=self.models.Distance.COSINE),
                   **self.layout)

    def index_fields(self, types: dict[str, type]) -> None:
        """Payload indexes only where a server keeps them (local mode has none and warns)."""
        if not self.url:
            return
        schema = {str: self.models.PayloadSchemaType.KEYWORD, int: self.models.PayloadSchemaType.INTEGER,
                  bool: self.models.PayloadSchemaType.BOOL}
        for field, kind in types.items():
            self._call("indexing a payload field", self.client.create_payload_index, self.collection, field,
                       field_schema=schema[kind])

    def upsert(self, points: list[str], vectors: np.ndarray, payloads: list[dict]) -> None:
        self._call("uploading points", self.client.upsert, self.collection,
                   points=self.models.Batch(ids=points, vectors=vectors.tolist(), payloads=payloads), wait=True)

    def delete(self, points: list[str]) -> None:
        self._call("removing points", self.client.delete, self.collection,
                   points_selector=self.models.PointIdsList(points=points))

    def settle(self) -> None:
        pass  # a server indexes in the background; local mode has nothing to build

    def count(self) -> int:
        return self._call("counting points", self.client.count, self.collection, exact=True).count

    def vectors_of(self, points: list[str]) -> dict[str, np.ndarray]:
        got = self._call("reading points", self.client.retrieve, self.collection, points, with_vectors=True,
                         with_payload=False)
        return {str(p.id): np.asarray(p.vector, np.float32) for p in got}

    def query(self, queries: np.ndarray, k: int, where, ef, exact, acorn=True) -> list[list[tuple[str, float]]]:
        models = self.models
        flt = _filter(models, where) if where else None
        walk = models.AcornSearchParams(enable=True) if where and acorn and self.url else None  # a server's graph
        params = models.SearchParams(hnsw_ef=ef, exact=bool(exact), acorn=walk) if ef or exact or walk else None
        requests = [models.QueryRequest(query=q, limit=k, filter=flt, params=params, with_payload=False)
                    for q in queries.tolist()]
        answers = self._call("searching", self.client.query_batch_points, self.collection, requests)
        return [[(str(p.id), p.score) for p in answer.points] for answer in answers]

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None


@index_backends.register("qdrant")
class QdrantIndex(BaseIndex):
    """Rows in Qdrant: its engine embedded (Edge, in a folder of its own or ``path``), a server (``url``), or the
    client's local mode (``local=1``)."""

    name = "qdrant"
    options = {"path": str, "url": str, "collection": str, "local": _flag, "m": int, "shards": int, "replicas": int,
               "ef": int, "exact": _flag, "acorn": _flag}
    search_options = ("ef", "exact", "acorn")
    raw_vectors_on_disk = True  # the engine holds the searchable copy; the saved rows are read only to refill it

    def __init__(self, dim: int, **options: str) -> None:
        super().__init__(dim, **options)
        if "path" in self.opts and "url" in self.opts:
            raise CirlabError("qdrant: give path= (a folder on this machine) or url= (a server), not both")
        if "url" in self.opts and self.opts.get("local"):
            raise CirlabError("qdrant: local=1 is the client's stand-in for a server; give it or url=, not both")
        if ("shards" in self.opts or "replicas" in self.opts) and "url" not in self.opts:
            raise CirlabError("qdrant: shards= and replicas= lay out a server's collection across its nodes; they "
                              "need url=")
        if self.opts.get("m", 16) < 0:
            raise CirlabError(f"qdrant: m={self.opts['m']}: give the HNSW edges per node (16 is Qdrant's default), "
                              "or 0 for no graph")
        if "path" in self.opts:  # the manifest records the spec: a relative folder would move with the caller's cwd
            self.opts["path"] = str(Path(self.opts["path"]).expanduser().resolve())
        self.collection = self.opts.get("collection", "cirlab")
        self._point_rows: dict[str, int] = {}
        self._types: dict[str, type | None] = {}
        if "url" in self.opts or self.opts.get("local"):
            layout = {k: self.opts[o] for o, k in (("shards", "shard_number"), ("replicas", "replication_factor"))
                      if o in self.opts}
            self.engine = _Client(self.dim, self.collection, self.opts.get("url"), self.opts.get("path"), layout)
        else:
            if "path" in self.opts:
                folder = Path(self.opts["path"]) / self.collection
            else:  # a folder that lives as long as the index
                scratch = tempfile.mkdtemp(prefix="cirlab-qdrant-")
                weakref.finalize(self, shutil.rmtree, scratch, True)
                folder = Path(scratch) / self.collection
            self.engine = _Edge(folder, self.dim, self.opts.get("m", 16))
        weakref.finalize(self, self.engine.close)  # closed with the index, or at exit before the interpreter's teardown

    @property
    def embedded(self) -> bool:
        """Qdrant's engine in this process (Edge), not a client of a server or of local mode."""
        return isinstance(self.engine, _Edge)

    def close(self) -> None:
        self.engine.close()

    # -- BaseIndex hooks --------------------------------------------------------------------------
    def _rebuild(self) -> None:
        """Recreate the collection and upload every row."""
        self.engine.create()
        self._point_rows, self._types = {}, {}
        self._upload(0)

    def _extend(self, start: int) -> bool:
        if not self._point_rows and start:
            return False
        self._upload(start)
        return True

    def _shrink(self, gone: list[str]) -> bool:
        if not self._point_rows:
            return False
        for s in range(0, len(gone), _BATCH):
            self.engine.delete([point_id(i) for i in gone[s:s + _BATCH]])
        self.engine.settle()
        self._map_points()
        return True

    def _map_points(self) -> None:
        """The row of each point id (search answers name points)."""
        self._point_rows = {point_id(i): r for r, i in enumerate(self.ids)}

    def _index_fields(self, start: int) -> None:
        """Payload indexes for the fields whose values (so far) share one type."""
        for field in {f for m in self.metadata[start:] for f in m}:
            seen = [m[field] for m in self.metadata if field in m]
            self._types[field] = _field_type(seen)
        self.engine.index_fields({f: t for f, t in self._types.items() if t is not None})

    def _upload(self, start: int) -> None:
        self._index_fields(start)
        for s in range(start, len(self.ids), _BATCH):
            ids = self.ids[s:s + _BATCH]
            points = [point_id(i) for i in ids]
            payloads = [{**m, "cirlab_id": i} for i, m in zip(ids, self.metadata[s:s + _BATCH])]
            self.engine.upsert(points, np.asarray(self.vectors[s:s + _BATCH], dtype=np.float32), payloads)
            self._point_rows.update({p: s + n for n, p in enumerate(points)})
        self.engine.settle()

    def _search_rows(self, queries, k):
        return self._query(queries, k, None)

    def _search_filtered(self, queries, k, where, allowed):
        return self._query(queries, k, where)

    def _query(self, queries: np.ndarray, k: int, where) -> tuple[np.ndarray, np.ndarray]:
        answers = self.engine.query(queries, k, where, self.opts.get("ef"), self.opts.get("exact"),
                                    self.opts.get("acorn", True))
        rows = np.full((len(queries), k), -1, np.int64)
        scores = np.full((len(queries), k), -np.inf, np.float32)
        for n, answer in enumerate(answers):
            for j, (point, score) in enumerate(answer[:k]):
                row = self._point_rows.get(point)
                if row is not None:
                    rows[n, j], scores[n, j] = row, score
        return rows, scores

    def state(self):
        return {"rows": np.array([len(self.ids)], np.int64)}

    def load_state(self, state) -> None:
        """Reuse the collection where it still holds exactly these rows (count, and a sample of vectors),
        else refill it. A collection of the index's own (no ``path`` or ``url``) is always refilled."""
        if ("path" in self.opts or "url" in self.opts) and self._holds_rows():
            self._map_points()
            return
        self._rebuild()

    def _holds_rows(self) -> bool:
        if not self.engine.exists():
            return False
        self.engine.open()
        if self.engine.count() != len(self.ids):
            return False
        if not self.ids:
            return True
        sample = np.random.default_rng(0).choice(len(self.ids), min(32, len(self.ids)), replace=False)
        stored = self.engine.vectors_of([point_id(self.ids[r]) for r in sample])
        return len(stored) == len(sample) and all(
            np.allclose(stored[point_id(self.ids[r])], self.vectors[r], atol=1e-5) for r in sample)
