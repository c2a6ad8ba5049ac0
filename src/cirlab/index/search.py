"""The one search: query vectors in, the best ``k`` (id, score) of an index out, per query.

Every consumer ranks through :func:`search`: the Python API (``Pipeline.search``), ``cirlab search`` (a folder
gallery is an in-memory ``exact`` index), the HTTP service (a batch of queries at once) and the benchmarks.
So "leave the reference out", "only these metadata" and "re-score the candidates" mean one thing everywhere:

- ``exclude``: per query, ids to leave out (:func:`file_ids` finds the rows of a reference file);
- ``filters``: per query (or one for all), a metadata filter (:func:`cirlab.index.base.check_filter`);
- ``scoring``: paper 000's combined score over the backend's candidates (:mod:`cirlab.index.scoring`);
- ``rerank``: a second model's reordering of the top K (:class:`cirlab.index.scoring.ModelScoring`, ``cirlab.rerank``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Collection, Sequence

import numpy as np

from cirlab.errors import CirlabError
from cirlab.index.base import BaseIndex, check_filter
from cirlab.index.metadata import display_name
from cirlab.index.scoring import CombinedScoring, ModelScoring, ProductScoring, rescore

Ranked = list[tuple[str, float]]


@dataclass
class Hit:
    """One result: its rank (from 1), id, file, score, and its metadata name or caption where it has one."""

    rank: int
    id: str
    path: str
    score: float
    name: str = ""


def _per_query(value, n: int, what: str) -> list:
    if value is None or isinstance(value, (int, dict)):
        return [value] * n
    value = list(value)
    if len(value) != n:
        raise CirlabError(f"{len(value)} {what} for {n} queries")
    return value


def search(index: BaseIndex, queries: np.ndarray, k: int | Sequence[int], exclude: Sequence[Collection[str]] | None = None,
           filters: dict | Sequence[dict | None] | None = None,
           scoring: CombinedScoring | ProductScoring | None = None,
           rerank: ModelScoring | None = None) -> list[Ranked]:
    """The best ``k`` (id, score) of ``index`` for each query vector (n, d), best first: one search call of the
    index per distinct filter. ``k``, ``exclude`` and ``filters`` are one for all queries or one per query. With a
    ``rerank``, the scores are the second model's."""
    queries = np.ascontiguousarray(np.atleast_2d(np.asarray(queries, dtype=np.float32)))
    n = len(queries)
    ks = _per_query(k, n, "values of k")
    if any(int(x) < 1 for x in ks):
        raise CirlabError(f"k must be at least 1, got {min(ks)}")
    skips = [set(s) for s in _per_query(exclude, n, "exclusion sets")] if exclude is not None else [set()] * n
    filters = _per_query(filters, n, "filters")
    groups: dict[str, list[int]] = {}
    for row, f in enumerate(filters):
        groups.setdefault(json.dumps(f or {}, sort_keys=True), []).append(row)
    for rows in groups.values():
        check_filter(filters[rows[0]])  # every filter refused before any search
    out: list = [None] * n
    for rows in groups.values():
        where = filters[rows[0]] or None
        ids, scores = (rescore(index, queries[rows], max(ks[r] for r in rows), scoring, where, rows, rerank,
                               [skips[r] for r in rows])
                       if scoring or rerank
                       else index.search(queries[rows], max(ks[r] + len(skips[r]) for r in rows), where))
        for r, row_ids, row_scores in zip(rows, ids, scores):
            out[r] = [(i, float(s)) for i, s in zip(row_ids, row_scores) if i not in skips[r] and np.isfinite(s)][:ks[r]]
    return out


def file_ids(index: BaseIndex, image) -> set[str]:
    """The ids of the rows whose file (metadata ``path``) is the reference file ``image`` (empty for an upload
    or no reference): what "leave the reference out" leaves out."""
    if image is None or not isinstance(image, (str, Path)):
        return set()
    ref = str(Path(image).resolve())
    return {i for i, m in zip(index.ids, index.metadata) if m.get("path") == ref}


def hits(index: BaseIndex, ranked: Ranked) -> list[Hit]:
    """One query's ranking as :class:`Hit` rows, with each image's file and name from its metadata."""
    out = []
    for rank, (i, score) in enumerate(ranked, 1):
        meta = index.metadata[index.row_of[i]]
        out.append(Hit(rank, i, meta.get("path", ""), score, display_name(meta)))
    return out
