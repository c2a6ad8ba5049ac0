"""The ``VectorIndex`` protocol, the registry of index backends, and what every backend shares.

An index holds unit vectors (the gallery side of a fusion method) under string ids with a
metadata dict each. ``search`` returns, per query, the ids and scores of the top ``k``; every
backend scores by cosine similarity (inner product of unit vectors) except ``knn``, which
reports negative Euclidean distances (paper 003). Backends are chosen by a spec string,
``name`` or ``name:option=value,...`` (``faiss:HNSW32``, ``lsh:bits=512``, ``kmeans_svm:k=15``).

A search may carry a metadata **filter**: ``{field: value}`` or ``{field: [value, ...]}`` keeps the
rows whose metadata ``field`` equals the value (or one of the values, or holds it in a list);
several fields must all match. It means one thing on every backend: the top ``k`` of the
matching rows by the backend's metric, found exactly (a vector database backend filters in the
engine, exactly too).
"""

from __future__ import annotations

from typing import ClassVar, Protocol, Sequence, runtime_checkable

import numpy as np

from cirlab.errors import CirlabError
from cirlab.registry import Registry, parse_spec

index_backends: Registry = Registry("index backend")
Scalar = (str, int, bool)


def check_filter(filter: dict | None) -> dict[str, tuple]:
    """A metadata filter as ``{field: (values...)}``; a one-line error for one that is not
    ``{field: value or [values]}`` with string, integer or boolean values."""
    if not filter:
        return {}
    if not isinstance(filter, dict):
        raise CirlabError(f"a filter is an object of field: value pairs, e.g. {{\"family\": \"colour\"}}; got "
                          f"{type(filter).__name__}")
    out = {}
    for field, value in filter.items():
        values = tuple(value) if isinstance(value, (list, tuple)) else (value,)
        if not isinstance(field, str) or not field or not values or not all(isinstance(v, Scalar) for v in values):
            raise CirlabError(f"filter field {field!r}: give a string, integer or boolean value, or a non-empty list "
                              f"of them (got {value!r})")
        out[field] = values
    return out


def parse_filter_args(items: Sequence[str]) -> dict[str, list]:
    """``--filter field=value[,value...]`` arguments as a filter. A value matches the text it is, and also the
    integer or boolean it spells (``3`` matches 3 and "3"; ``true`` matches True and "true")."""
    out: dict[str, list] = {}
    for item in items:
        field, eq, values = item.partition("=")
        if not eq or not field.strip() or not values:
            raise CirlabError(f"--filter {item!r}: write FIELD=VALUE or FIELD=VALUE1,VALUE2 (e.g. --filter family=colour)")
        for v in values.split(","):
            spelled = [int(v)] if v.lstrip("-").isdigit() else [v == "true"] if v in ("true", "false") else []
            out.setdefault(field.strip(), []).extend([v, *spelled])
    return out


@runtime_checkable
class VectorIndex(Protocol):
    spec: str
    dim: int

    def add(self, ids: Sequence[str], vectors: np.ndarray, metadata: Sequence[dict] | None = None) -> None: ...
    def remove(self, ids: Sequence[str]) -> int: ...
    def search(self, queries: np.ndarray, k: int, filter: dict | None = None) -> tuple[list[list[str]], np.ndarray]: ...
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
        self._facets: dict[str, dict] = {}  # field -> value -> rows, built when a filter first asks for the field

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
        self._facets = {}
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
        self._facets = {}
        gone_ids = [self.ids[r] for r in sorted(gone)]
        keep = np.array([r for r in range(len(self.ids)) if r not in gone], dtype=np.int64)
        self.ids = [self.ids[r] for r in keep]
        self.metadata = [self.metadata[r] for r in keep]
        self.vectors = self.vectors[keep]
        self.row_of = {i: n for n, i in enumerate(self.ids)}
        if not self._shrink(gone_ids):
            self._rebuild()
        return len(gone)

    def search(self, queries: np.ndarray, k: int, filter: dict | None = None) -> tuple[list[list[str]], np.ndarray]:
        """Top-``k`` ids and scores per query (fewer where the index holds, or the filter keeps, fewer rows)."""
        if k < 1:
            raise CirlabError(f"k must be at least 1, got {k}")
        queries = self._check(queries, "queries")
        where = check_filter(filter)
        allowed = self.matching_rows(where) if where else None
        n = len(self.ids) if allowed is None else len(allowed)
        if not n:
            return [[] for _ in queries], np.zeros((len(queries), 0), np.float32)
        k = min(k, n)
        rows, scores = self._search_rows(queries, k) if allowed is None else self._search_filtered(queries, k, where, allowed)
        out = [[self.ids[r] for r in row if r >= 0] for row in rows]
        return out, scores[:, :k]

    def matching_rows(self, where: dict[str, tuple]) -> np.ndarray:
        """The rows whose metadata match a checked filter (:func:`check_filter`), ascending."""
        rows = None
        for field, values in where.items():
            facet = self._facets.get(field)
            if facet is None:
                facet = self._facets[field] = {}
                for r, meta in enumerate(self.metadata):
                    value = meta.get(field)
                    for v in (value if isinstance(value, list) else [value]):
                        if isinstance(v, Scalar):
                            facet.setdefault((type(v) is bool, v), []).append(r)
            hit = set()
            for v in values:
                hit.update(facet.get((type(v) is bool, v), ()))
            rows = hit if rows is None else rows & hit
        return np.array(sorted(rows or ()), dtype=np.int64)

    def _search_filtered(self, queries: np.ndarray, k: int, where: dict[str, tuple], allowed: np.ndarray
                         ) -> tuple[np.ndarray, np.ndarray]:
        """The exact top-``k`` of the ``allowed`` rows by cosine (``knn`` overrides it with its distance)."""
        from cirlab.index.exact import exact_topk

        rows, scores = exact_topk(queries, np.asarray(self.vectors[allowed]), k)
        return allowed[rows], scores

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

    def _shrink(self, gone: list[str]) -> bool:
        """Drop the rows of the ``gone`` ids from the structure in place (the rows are already gone from
        ``self.ids`` and ``self.vectors``); False: not possible, rebuild."""
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
