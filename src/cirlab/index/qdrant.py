"""The ``qdrant`` index backend: the vectors and their metadata in a Qdrant collection.

Specs:

- ``qdrant``: Qdrant's local mode in memory (the collection is refilled from the index's
  vectors when the index is loaded);
- ``qdrant:path=DIR``: local mode on disk (the collection persists in ``DIR`` and is reused when
  it still holds the index's rows; one process at a time may open ``DIR``);
- ``qdrant:url=http://HOST:6333[,collection=NAME]``: a Qdrant server or cluster (the API key, if
  any, comes from ``$QDRANT_API_KEY``, never from the spec that the manifest records).

Query-time options: ``ef`` (HNSW ``ef`` of a server's search) and ``exact=1`` (a server's full
scan). Qdrant's local mode is the ``qdrant-client`` package's own pure-Python implementation of
the API (numpy brute force), not the Rust engine: exact, and for small galleries and tests; the
same spec with ``url=`` reaches the real engine.

Each row is a point whose id is a UUID derived from the cirlab id, whose payload is the row's
metadata plus ``cirlab_id``. Filters (:func:`cirlab.index.base.check_filter`) become Qdrant
``match`` conditions on the payload, so the engine filters during the search.
"""

from __future__ import annotations

import os
import uuid
import weakref
from pathlib import Path

import numpy as np

from cirlab.errors import CirlabError
from cirlab.index.base import BaseIndex, index_backends
from cirlab.optional import need

_NAMESPACE = uuid.UUID("5c1d7a3e-8a4b-4f43-9d7e-6c1a2b3c4d5e")
_BATCH = 512


def _flag(value: str) -> bool:
    if str(value).lower() in ("1", "true", "yes", "on"):
        return True
    if str(value).lower() in ("0", "false", "no", "off"):
        return False
    raise CirlabError(f"expected 1 or 0 (true or false), got {value!r}")


def point_id(image_id: str) -> str:
    """The Qdrant point id of a cirlab id: a UUID-5, stable across processes and machines."""
    return str(uuid.uuid5(_NAMESPACE, image_id))


@index_backends.register("qdrant")
class QdrantIndex(BaseIndex):
    """Rows in a Qdrant collection: local mode (memory or ``path``) or a server (``url``)."""

    name = "qdrant"
    options = {"path": str, "url": str, "collection": str, "ef": int, "exact": _flag}
    search_options = ("ef", "exact")
    raw_vectors_on_disk = True  # the engine holds the searchable copy; the saved rows are read only to refill it

    def __init__(self, dim: int, **options: str) -> None:
        super().__init__(dim, **options)
        need("qdrant_client", "qdrant", "the qdrant index backend")
        if "path" in self.opts and "url" in self.opts:
            raise CirlabError("qdrant: give path= (local mode on disk) or url= (a server), not both")
        if "path" in self.opts:  # the manifest records the spec: a relative folder would move with the caller's cwd
            self.opts["path"] = str(Path(self.opts["path"]).expanduser().resolve())
        self.collection = self.opts.get("collection", "cirlab")
        self._client = None
        self._point_rows: dict[str, int] = {}

    # -- the connection ---------------------------------------------------------------------------
    def client(self):
        if self._client is None:
            from qdrant_client import QdrantClient

            try:
                if "url" in self.opts:
                    self._client = QdrantClient(url=self.opts["url"], api_key=os.environ.get("QDRANT_API_KEY"), timeout=60,
                                                check_compatibility=False)
                elif "path" in self.opts:
                    self._client = QdrantClient(path=self.opts["path"])
                else:
                    self._client = QdrantClient(location=":memory:")
            except (RuntimeError, ValueError) as e:  # local mode: the folder is open in another process
                raise CirlabError(f"qdrant: cannot open {self.opts.get('path') or self.opts.get('url')}: "
                                  f"{str(e).splitlines()[0]} (local mode allows one process; use a Qdrant server, "
                                  "url=..., to share an index)") from None
            weakref.finalize(self, self._client.close)  # closed with the index, or at exit before the interpreter's teardown
        return self._client

    def _call(self, what: str, fn, *args, **kwargs):
        """A client call; a transport or server failure is a one-line error naming the collection."""
        try:
            return fn(*args, **kwargs)
        except CirlabError:
            raise
        except Exception as e:  # the client raises httpx, grpc and its own errors; all mean the same to a user
            where = self.opts.get("url") or self.opts.get("path") or "memory"
            raise CirlabError(f"qdrant ({where}, collection {self.collection!r}): {what} failed: "
                              f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    # -- BaseIndex hooks --------------------------------------------------------------------------
    def _rebuild(self) -> None:
        """Recreate the collection and upload every row."""
        from qdrant_client import models

        client = self.client()
        if self._call("checking the collection", client.collection_exists, self.collection):
            self._call("dropping the old collection", client.delete_collection, self.collection)
        self._call("creating the collection", client.create_collection, self.collection,
                   vectors_config=models.VectorParams(size=self.dim, distance=models.Distance.COSINE))
        self._point_rows = {}
        self._upload(0)

    def _extend(self, start: int) -> bool:
        if self._client is None:
            return False
        self._upload(start)
        return True

    def _shrink(self, gone: list[str]) -> bool:
        from qdrant_client import models

        if self._client is None:
            return False
        for s in range(0, len(gone), _BATCH):
            self._call("removing points", self.client().delete, self.collection,
                       points_selector=models.PointIdsList(points=[point_id(i) for i in gone[s:s + _BATCH]]))
        self._map_points()
        return True

    def _map_points(self) -> None:
        """The row of each point id (search answers name points)."""
        self._point_rows = {point_id(i): r for r, i in enumerate(self.ids)}

    def _upload(self, start: int) -> None:
        from qdrant_client import models

        for s in range(start, len(self.ids), _BATCH):
            ids = self.ids[s:s + _BATCH]
            points = [point_id(i) for i in ids]
            payloads = [{**m, "cirlab_id": i} for i, m in zip(ids, self.metadata[s:s + _BATCH])]
            vectors = np.asarray(self.vectors[s:s + _BATCH], dtype=np.float32).tolist()
            self._call("uploading points", self.client().upsert, self.collection,
                       points=models.Batch(ids=points, vectors=vectors, payloads=payloads), wait=True)
            self._point_rows.update({p: s + n for n, p in enumerate(points)})

    def _search_rows(self, queries, k):
        return self._query(queries, k, None)

    def _search_filtered(self, queries, k, where, allowed):
        from qdrant_client import models

        must = [models.FieldCondition(key=field, match=models.MatchValue(value=values[0]) if len(values) == 1
                                      else models.MatchAny(any=list(values)))
                for field, values in where.items()]
        return self._query(queries, k, models.Filter(must=must))

    def _query(self, queries: np.ndarray, k: int, flt) -> tuple[np.ndarray, np.ndarray]:
        from qdrant_client import models

        params = None
        if "ef" in self.opts or "exact" in self.opts:
            params = models.SearchParams(hnsw_ef=self.opts.get("ef"), exact=self.opts.get("exact", False))
        requests = [models.QueryRequest(query=q.tolist(), limit=k, filter=flt, params=params, with_payload=False)
                    for q in queries]
        answers = self._call("searching", self.client().query_batch_points, self.collection, requests)
        rows = np.full((len(queries), k), -1, np.int64)
        scores = np.full((len(queries), k), -np.inf, np.float32)
        for n, answer in enumerate(answers):
            for j, point in enumerate(answer.points[:k]):
                row = self._point_rows.get(str(point.id))
                if row is not None:
                    rows[n, j], scores[n, j] = row, point.score
        return rows, scores

    def state(self):
        return {"rows": np.array([len(self.ids)], np.int64)}

    def load_state(self, state) -> None:
        """Reuse the collection where it still holds exactly these rows (count, and a sample of vectors),
        else refill it. An in-memory collection is always refilled."""
        if ("path" in self.opts or "url" in self.opts) and self._holds_rows():
            self._map_points()
            return
        self._rebuild()

    def _holds_rows(self) -> bool:
        client = self.client()
        if not self._call("checking the collection", client.collection_exists, self.collection):
            return False
        if self._call("counting points", client.count, self.collection, exact=True).count != len(self.ids):
            return False
        if not self.ids:
            return True
        sample = np.random.default_rng(0).choice(len(self.ids), min(32, len(self.ids)), replace=False)
        got = self._call("reading points", client.retrieve, self.collection, [point_id(self.ids[r]) for r in sample],
                         with_vectors=True, with_payload=False)
        if len(got) != len(sample):
            return False
        stored = {str(p.id): np.asarray(p.vector, np.float32) for p in got}
        return all(np.allclose(stored[point_id(self.ids[r])], self.vectors[r], atol=1e-5) for r in sample)
