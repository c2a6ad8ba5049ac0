"""Retrieval metrics on ranked lists."""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

DEFAULT_KS = (1, 5, 10, 50)


def recall_at_k(ranked: np.ndarray | Sequence[Sequence[int]], targets: Sequence[Iterable[int]],
                ks: Sequence[int] = DEFAULT_KS) -> dict[int, float]:
    """Recall@K in percent: the share of queries with at least one target among the first K.

    ``ranked[i]`` lists gallery rows best first (at least max(ks) long, or the whole gallery);
    ``targets[i]`` the rows that count as hits for query i.
    """
    if len(ranked) != len(targets):
        raise ValueError(f"{len(ranked)} rankings but {len(targets)} target sets")
    if len(ranked) == 0:
        return {k: 0.0 for k in ks}
    first_hit = first_hits(ranked, targets)
    return {k: float(100.0 * np.mean(first_hit < k)) for k in ks}


def first_hits(ranked, targets, limit: int | None = None) -> np.ndarray:
    """The 0-based rank of each query's first target within its first ``limit`` entries (inf: none)."""
    first = np.full(len(ranked), np.inf)
    for i, (row, tg) in enumerate(zip(ranked, targets)):
        tg = set(tg)
        first[i] = next((pos for pos, x in enumerate(row[:limit]) if x in tg), np.inf)
    return first


def recall_subset_at_k(ranked: Sequence[Sequence[str]], members: Sequence[Iterable[str]], references: Sequence[str],
                       targets: Sequence[Iterable[str]], ks: Sequence[int] = (1, 2, 3)) -> dict[int, float]:
    """CIRR's Recall_subset@K in percent: each query's full ranking restricted to its image set's
    members (``img_set.members``) without the reference; a hit when a target is among the first K."""
    restricted = [subset_ranking(r, m, ref) for r, m, ref in zip(ranked, members, references)]
    hits = [[i for i, x in enumerate(row) if x in set(tg)] for row, tg in zip(restricted, targets)]
    if not hits:
        return {k: 0.0 for k in ks}
    return {k: float(100.0 * np.mean([bool(h) and h[0] < k for h in hits])) for k in ks}


def subset_ranking(ranked: Sequence[str], members: Iterable[str], reference: str) -> list[str]:
    """The order ``ranked`` gives to the members of an image set, the reference left out."""
    keep = set(members) - {reference}
    return [x for x in ranked if x in keep]


def average_precision_at_k(ranked: Sequence, targets: Iterable, k: int) -> float:
    """CIRCO's AP@K: the mean of precision@i over the ranks i <= K that hold a target, divided by
    min(K, number of targets) (so a query with many ground truths is not capped by K)."""
    targets = set(targets)
    if not targets:
        return 0.0
    hits, total = 0, 0.0
    for i, x in enumerate(ranked[:k], start=1):
        if x in targets:
            hits += 1
            total += hits / i
    return total / min(k, len(targets))


def map_at_k(ranked: Sequence[Sequence], targets: Sequence[Iterable], ks: Sequence[int] = (5, 10, 25, 50)) -> dict[int, float]:
    """Mean AP@K in percent over queries (CIRCO-style, several ground truths per query)."""
    if not len(ranked):
        return {k: 0.0 for k in ks}
    return {k: float(100.0 * np.mean([average_precision_at_k(r, t, k) for r, t in zip(ranked, targets)])) for k in ks}


def map_where_several(ranked: Sequence[Sequence], targets: Sequence[Sequence]) -> dict[int, float]:
    """mAP@K (:func:`map_at_k`) where some query has several ground truths; empty where none has."""
    return map_at_k(ranked, targets) if any(len(t) > 1 for t in targets) else {}


def recall_curve(ranked: Sequence[Sequence], targets: Sequence[Iterable], k_max: int = 50) -> list[float]:
    """Recall@K in percent for K = 1..k_max (any hashable ids): the curve a Recall@K plot draws."""
    if not len(ranked):
        return [0.0] * k_max
    first = first_hits(ranked, targets, k_max)
    return [float(100.0 * np.mean(first < k)) for k in range(1, k_max + 1)]


def rank_stability(first: Sequence[Sequence], second: Sequence[Sequence], k: int = 10) -> dict[str, float]:
    """How much two rankings of the same queries agree in their top ``k``, without labels (a query worded two ways):
    ``AO@k``, the average overlap (the mean over depths d = 1..k of the share of the two top-d lists in common,
    rewarding agreement at the top), and ``Jaccard@k`` of the two top-k sets; each the mean over queries, in %."""
    if len(first) != len(second):
        raise ValueError(f"{len(first)} rankings against {len(second)}")
    ao, jac = [], []
    for a, b in zip(first, second):
        a, b = list(a[:k]), list(b[:k])
        depth = min(k, len(a), len(b))
        if not depth:
            continue
        ao.append(np.mean([len(set(a[:d]) & set(b[:d])) / d for d in range(1, depth + 1)]))
        jac.append(len(set(a) & set(b)) / len(set(a) | set(b)))
    return {f"AO@{k}": 100.0 * float(np.mean(ao)) if ao else 0.0,
            f"Jaccard@{k}": 100.0 * float(np.mean(jac)) if jac else 0.0}
