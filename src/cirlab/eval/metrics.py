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
    first_hit = np.full(len(ranked), np.inf)
    for i, (row, tg) in enumerate(zip(ranked, targets)):
        tg = set(tg)
        for pos, g in enumerate(row):
            if int(g) in tg:
                first_hit[i] = pos
                break
    return {k: float(100.0 * np.mean(first_hit < k)) for k in ks}
