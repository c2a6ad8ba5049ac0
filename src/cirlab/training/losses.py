"""Losses on composed queries and target image vectors."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def batch_infonce(query: torch.Tensor, target: torch.Tensor, logit_scale: float,
                  target_keys: torch.Tensor | None = None, offset: int = 0) -> torch.Tensor:
    """Batch-based classification loss (InfoNCE over in-batch targets).

    ``logits[i, j] = s * cos(q_i, t_j)``; the positive of query i is target ``offset + i`` (``offset``: where a
    data-parallel rank's queries start in the gathered batch, ``training.parallel``). ``target`` may hold more
    rows than the batch: the rows after its targets are extra negatives (the batch's reference images,
    ``reference_negatives``). Where another column holds the *same* image as query i's positive (``target_keys``
    equal), it is masked out for query i: it is not a negative, it is the same image.
    """
    logits = logit_scale * query @ target.t()
    n = query.shape[0]
    rows = torch.arange(n, device=query.device)
    labels = rows + offset
    if target_keys is not None:
        target_keys = target_keys.to(query.device)
        same = target_keys[offset:offset + n, None] == target_keys[None, :]
        same[rows, labels] = False
        logits = logits.masked_fill(same, float("-inf"))
    return F.cross_entropy(logits, labels)


def batch_triplet(query: torch.Tensor, target: torch.Tensor, margin: float,
                  target_keys: torch.Tensor | None = None, offset: int = 0) -> torch.Tensor:
    """Triplet loss with the hardest in-batch negative (paper 000's metric-learning term).

    ``mean_i max(0, m - cos(q_i, t_i) + max_{j != i} cos(q_i, t_j))``; columns holding the
    same image as the positive (equal ``target_keys``) are not negatives. ``offset``: as for :func:`batch_infonce`.
    """
    sims = query @ target.t()
    n = len(query)
    rows = torch.arange(n, device=query.device)
    negative = torch.zeros_like(sims, dtype=torch.bool)
    negative[rows, rows + offset] = True
    if target_keys is not None:
        target_keys = target_keys.to(query.device)
        negative = negative | (target_keys[offset:offset + n, None] == target_keys[None, :])
    hardest = sims.masked_fill(negative, float("-inf")).max(dim=1).values
    positive = sims[rows, rows + offset]
    loss = F.relu(margin - positive + hardest)
    return torch.where(torch.isfinite(hardest), loss, torch.zeros_like(loss)).mean()
