"""Re-scorings of a backend's candidates: paper 000's combined similarity (its formulas 24-26), and the product of
similarities (:class:`ProductScoring`, a zero-shot method's second stage).

``s = w_cos * cos(q, g) - w_euc * ||q - g||_2 - w_ham * hamming(sign q, sign g) / D - w_l1 * ||q - g||_1 / D``

- ``cosine`` (``w_cos``): the angle term every backend ranks by; 1 and the rest 0 is plain cosine.
- ``euclidean`` (``w_euc``): penalises distance; for unit vectors ``||q-g||^2 = 2 - 2 cos``, so
  it only reshapes the cosine term (it matters for vectors that are not normalised).
- ``hamming`` (``w_ham``): the fraction of dimensions whose signs differ (the codes of the
  sign-binarised vectors): a coarse agreement of directions, robust to small values.
- ``l1`` (``w_l1``, paper 000's "Hamming" formula is in fact ``sum |q_i - g_i|``): the mean
  absolute difference per dimension, which weighs many small disagreements more than L2 does.

The backend first returns ``candidates`` rows by its own score; they are re-scored and the
best ``k`` returned. Weights of 0 switch a term off.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Callable, Sequence

import numpy as np

from cirlab.errors import CirlabError


@dataclass(frozen=True)
class CombinedScoring:
    cosine: float = 1.0
    euclidean: float = 0.0
    hamming: float = 0.0
    l1: float = 0.0
    candidates: int = 100

    @classmethod
    def parse(cls, text: str) -> "CombinedScoring":
        """``"cosine=1,euclidean=0.5,hamming=0.2,candidates=200"``."""
        known = {f.name: f.type for f in fields(cls)}
        values: dict = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            key, eq, value = part.partition("=")
            if not eq or key not in known:
                raise CirlabError(f"scoring option {part!r}: use name=value with names {', '.join(known)}")
            try:
                values[key] = int(value) if key == "candidates" else float(value)
            except ValueError:
                raise CirlabError(f"scoring option {part!r}: {value!r} is not a number") from None
        return cls(**values)

    def to_dict(self) -> dict:
        return asdict(self)

    def score(self, query: np.ndarray, candidates: np.ndarray, row: int = 0) -> np.ndarray:
        """Combined scores of one query (D,) against candidate vectors (C, D) (``row``: the query's place in its
        batch, unused here)."""
        d = query.shape[-1]
        diff = candidates - query[None]
        s = self.cosine * (candidates @ query)
        if self.euclidean:
            s = s - self.euclidean * np.sqrt((diff * diff).sum(axis=1))
        if self.hamming:
            s = s - self.hamming * ((candidates > 0) != (query > 0)[None]).sum(axis=1) / d
        if self.l1:
            s = s - self.l1 * np.abs(diff).sum(axis=1) / d
        return s.astype(np.float32)


@dataclass(frozen=True)
class ProductScoring:
    """The product of similarities, a re-scoring of candidates: ``s = prod_j max(cos(p_j, g), 0)`` over each query's
    parts ``p_j`` (``parts``: per query, (parts, D) unit vectors: a composed query's reference and text vectors, so a
    candidate must be near both; a query with one part, its own vector, keeps its cosine). Negative cosines count as
    0, so two dissimilarities never multiply into a match."""

    parts: Sequence[np.ndarray]
    candidates: int = 100

    def score(self, query: np.ndarray, candidates: np.ndarray, row: int = 0) -> np.ndarray:
        return np.prod(np.maximum(candidates @ np.asarray(self.parts[row], np.float32).T, 0.0), axis=1).astype(np.float32)

    def to_dict(self) -> dict:
        return {"product": max(len(p) for p in self.parts), "candidates": self.candidates}


@dataclass(frozen=True)
class ModelScoring:
    """Re-ranking by a second model (``cirlab.rerank``): the cosine of its own query vector (``queries``, one row per
    query of the batch) and its own vectors of the candidates (``gallery``: candidate keys -> (C, D) unit vectors;
    keys are gallery ids in a served index, gallery rows in an evaluation). It reorders the first stage's
    ``candidates`` best and never adds one: the index stays one vector per image of the first model."""

    queries: np.ndarray
    gallery: Callable[[Sequence], np.ndarray]
    candidates: int = 100
    name: str = ""

    def score_keys(self, keys: Sequence, row: int) -> np.ndarray:
        return (self.gallery(keys) @ np.asarray(self.queries[row], np.float32)).astype(np.float32)

    def to_dict(self) -> dict:
        return {"rerank": self.name, "candidates": self.candidates}


Scoring = CombinedScoring | ProductScoring | ModelScoring


def rescore(index, queries: np.ndarray, k: int, scoring: Scoring | None, filter: dict | None = None,
            rows: list[int] | None = None, rerank: ModelScoring | None = None,
            skips: Sequence[set] | None = None) -> tuple[list[list[str]], np.ndarray]:
    """Search ``index`` for the candidates of each stage (``scoring``, then ``rerank``) per query (of those
    ``filter`` keeps, less the ids ``skips`` leaves out of each query's answer); each stage reorders them by its
    score, the last one's best ``k`` are kept: ``k`` and each stage's ``candidates`` count after the skipped ids are
    left out (``rows``: each query's place in the batch the stages were made for; default 0, 1, ...)."""
    stages = [s for s in (scoring, rerank) if s is not None]
    skips = skips or [set()] * len(queries)
    wide = max(k, *(s.candidates for s in stages))
    ids, _ = index.search(queries, max(wide + len(skip) for skip in skips), filter)
    rows = list(range(len(queries))) if rows is None else rows
    out_ids, out_scores = [], np.full((len(queries), k), -np.inf, np.float32)
    for i, row in enumerate(ids):
        row = [x for x in row if x not in skips[i]][:wide]  # the same candidates whether or not a skipped id was among them
        best = np.zeros(0, np.float32)
        for stage in stages:
            row = row[:max(stage.candidates, k)] if stage is rerank else row  # it reorders at least the k asked for
            vecs = index.vectors[[index.row_of[x] for x in row]] if row else np.zeros((0, index.dim), np.float32)
            order, best = best_candidates(stage, np.asarray(queries[i], np.float32), vecs, rows[i], len(row), row)
            row = [row[j] for j in order]
        out_ids.append(row[:k])
        out_scores[i, :len(out_ids[-1])] = best[:k]
    return out_ids, out_scores


def best_candidates(scoring: Scoring, query: np.ndarray | None, vectors: np.ndarray, row: int, k: int,
                    keys: Sequence | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The best ``k`` of one query's candidates (their vectors, and their ids or rows: ``keys``) by ``scoring``
    (ties kept in the first stage's order): their positions among the candidates, and their scores. ``row``: the
    query's place in the batch the scoring was made for."""
    if not len(vectors):
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    s = scoring.score_keys(keys, row) if isinstance(scoring, ModelScoring) else scoring.score(query, vectors, row)
    order = np.argsort(-s, kind="stable")[:k]
    return order, s[order]
