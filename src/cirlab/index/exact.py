"""Exact cosine search: the reference every approximate index is measured against."""

from __future__ import annotations

import numpy as np
import torch


def exact_topk(queries: np.ndarray | torch.Tensor, gallery: np.ndarray | torch.Tensor, k: int,
               exclude: np.ndarray | None = None, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` gallery rows by inner product (cosine for unit vectors), best first.

    ``exclude[i]`` is a gallery row to leave out of query i's ranking (its own reference image),
    or -1 for none. Returns (indices, scores), each (Q, min(k, G)).
    """
    q = torch.as_tensor(np.asarray(queries, dtype=np.float32))
    g = torch.as_tensor(np.asarray(gallery, dtype=np.float32))
    k = min(k, g.shape[0])
    idx_parts, score_parts = [], []
    for s in range(0, q.shape[0], chunk):
        scores = q[s:s + chunk] @ g.T
        if exclude is not None:
            ex = torch.as_tensor(np.asarray(exclude[s:s + chunk], dtype=np.int64))
            rows = torch.nonzero(ex >= 0).flatten()
            scores[rows, ex[rows]] = float("-inf")
        top = torch.topk(scores, k, dim=1)
        idx_parts.append(top.indices)
        score_parts.append(top.values)
    if not idx_parts:
        return np.zeros((0, k), np.int64), np.zeros((0, k), np.float32)
    return torch.cat(idx_parts).numpy(), torch.cat(score_parts).numpy()
