"""The ``VectorIndex`` protocol, the registry of index backends, and what every backend shares.

An index holds unit vectors (the gallery side of a fusion method) under string ids with a
metadata dict each. ``search`` returns, per query, the ids and scores of the top ``k``; every
backend scores by cosine similarity (inner product of unit vectors) except ``knn``, which
reports negative Euclidean distances (paper 003). Backends are chosen by a spec string,
``name`` or ``name:option=value,...`` (``faiss:HNSW32``, ``lsh:bits=512``, ``kmeans_svm:k=15``).
"""

from __future__ import annotations

from typing import ClassVar, Protocol, Sequence, runtime_checkable

import numpy as np

from cirlab.errors import CirlabError
from cirlab.registry import Registry, parse_spec

index_backends: Registry = Registry("index backend")


@runtime_checkable
class VectorIndex(Protocol):
    spec: str
    dim: int

    def add(self, ids: Sequence[str], vectors: np.ndarray, metadata: Sequence[dict] | None = None) -> None: ...
    def remove(self, ids: Sequence[str]) -> int: ...
    def search(self, queries: np.ndarray, k: int) -> tuple[list[list[str]], np.ndarray]: ...
    def __len__(self) -> int: ...


class BaseIndex:
    """Rows of (id, unit vector, metadata); subclasses keep a search structure over the rows.

    ``_rebuild`` (re)creates the structure from all rows; ``_extend`` adds rows to it in place
    and returns False where the backend cannot (then the structure is rebuilt).
    ``_search_rows`` returns (rows, scores) best first, -1 rows for missing results.
    """

    name: ClassVar[str] = ""
    options: ClassVar[dict[str, type]] = {}
    search_options: ClassVar[tuple[str, ...]] = ()  # options that only act at query time (see ``tune``)

    def __init__(self, dim: int, **options: str) -> None:
        unknown = set(options) - set(self.options)
        if unknown:
            raise CirlabError(f"index backend {self.name!r} has no option {sorted(unknown)[0]!r}; "
                              f"it takes: {', '.join(self.options) or 'none'}")
        self.opts = {k: self.options[k](v) for k, v in options.items()}
        self.dim = int(dim)
        self.ids: list[str] = []
        self.row_of: dict[str, int] = {}
        self.vectors = np.zeros((0, self.dim), np.float32)
        self.metadata: list[dict] = []
        self.version: str | None = None  # the version folder it was loaded from or saved as (``index.store``)

    @property
    def spec(self) -> str:
        """The spec that rebuilds this index (the factory first, then option=value pairs)."""
        parts = [str(self.opts["factory"])] if "factory" in self.opts else []
        parts += [f"{k}={v}" for k, v in self.opts.items() if k != "factory"]
        return f"{self.name}:{','.join(parts)}" if parts else self.name

    def __len__(self) -> int:
        return len(self.ids)

    def _check(self, vectors: np.ndarray, what: str) -> np.ndarray:
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim == 1:
            vectors = vectors[None]
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise CirlabError(f"{what} have dimension {vectors.shape[-1]}, this index holds {self.dim}-d vectors: "
                              "use the model the index was built with")
        if not np.isfinite(vectors).all():
            raise CirlabError(f"{what} contain NaN or infinite values")
        return np.ascontiguousarray(vectors)

    def add(self, ids: Sequence[str], vectors: np.ndarray, metadata: Sequence[dict] | None = None) -> None:
        """Add rows; an id already present is replaced (removed, then added)."""
        ids = [str(i) for i in ids]
        vectors = self._check(vectors, "vectors")
        if len(ids) != len(vectors):
            raise CirlabError(f"{len(ids)} ids for {len(vectors)} vectors")
        if len(set(ids)) != len(ids):
            raise CirlabError("duplicate ids in one add")
        metadata = list(metadata) if metadata is not None else [{} for _ in ids]
        replaced = [i for i in ids if i in self.row_of]
        if replaced:
            self.remove(replaced)
        start = len(self.ids)
        self.ids += ids
        self.row_of.update({i: start + n for n, i in enumerate(ids)})
        self.vectors = np.concatenate([self.vectors, vectors]) if start else vectors.copy()
        self.metadata += [dict(m) for m in metadata]
        if not (start and self._extend(start)):
            self._rebuild()

    def remove(self, ids: Sequence[str]) -> int:
        """Remove rows by id; unknown ids are ignored. Returns how many were removed."""
        gone = {self.row_of[i] for i in map(str, ids) if i in self.row_of}
        if not gone:
            return 0
        keep = np.array([r for r in range(len(self.ids)) if r not in gone], dtype=np.int64)
        self.ids = [self.ids[r] for r in keep]
        self.metadata = [self.metadata[r] for r in keep]
        self.vectors = self.vectors[keep]
        self.row_of = {i: n for n, i in enumerate(self.ids)}
        self._rebuild()
        return len(gone)

    def search(self, queries: np.ndarray, k: int) -> tuple[list[list[str]], np.ndarray]:
        """Top-``k`` ids and scores per query (fewer where the index holds fewer rows)."""
        if k < 1:
            raise CirlabError(f"k must be at least 1, got {k}")
        queries = self._check(queries, "queries")
        if not self.ids:
            return [[] for _ in queries], np.zeros((len(queries), 0), np.float32)
        k = min(k, len(self.ids))
        rows, scores = self._search_rows(queries, k)
        out = [[self.ids[r] for r in row if r >= 0] for row in rows]
        return out, scores[:, :k]

    def tune(self, **options) -> None:
        """Change query-time options (``ef``, ``nprobe``, ``candidates``, ``probe``...) without a rebuild."""
        bad = set(options) - set(self.search_options)
        if bad:
            raise CirlabError(f"index backend {self.name!r} cannot change {sorted(bad)[0]!r} at query time; "
                              f"it can change: {', '.join(self.search_options) or 'nothing'}")
        self.opts.update({k: self.options[k](v) for k, v in options.items()})
        self._tune()

    # -- backend hooks ------------------------------------------------------------------------
    def _rebuild(self) -> None:
        """Recreate the search structure from ``self.vectors``."""

    def _extend(self, start: int) -> bool:
        """Add ``self.vectors[start:]`` to the structure in place; False: not possible, rebuild."""
        return False

    def _search_rows(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def _tune(self) -> None:
        """Apply query-time options to the structure (most backends read ``self.opts`` per search)."""

    def state(self) -> dict[str, np.ndarray]:
        """Arrays that persist the search structure (empty: it is rebuilt from the vectors on load)."""
        return {}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        self._rebuild()


def build_index(spec: str, dim: int) -> BaseIndex:
    """An empty index of the backend a spec names."""
    name, options = parse_spec(spec)
    return index_backends.get(name)(dim, **options)
