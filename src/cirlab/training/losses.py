"""Losses on composed queries and target image vectors."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def batch_infonce(query: torch.Tensor, target: torch.Tensor, logit_scale: float,
                  target_keys: torch.Tensor | None = None) -> torch.Tensor:
    """Batch-based classification loss (InfoNCE over in-batch targets).

    ``logits[i, j] = s * cos(q_i, t_j)``; the positive of query i is target i. ``target`` may hold more
    rows than ``query``: the rows after the first ``len(query)`` are extra negatives (the batch's
    reference images, ``reference_negatives``). Where another column holds the *same* image as query i's
    positive (``target_keys`` equal), it is masked out for query i: it is not a negative, it is the same image.
    """
    logits = logit_scale * query @ target.t()
    n = query.shape[0]
    labels = torch.arange(n, device=query.device)
    if target_keys is not None:
        target_keys = target_keys.to(query.device)
        same = target_keys[:n, None] == target_keys[None, :]
        same[labels, labels] = False
        logits = logits.masked_fill(same, float("-inf"))
    return F.cross_entropy(logits, labels)


def batch_triplet(query: torch.Tensor, target: torch.Tensor, margin: float,
                  target_keys: torch.Tensor | None = None) -> torch.Tensor:
    """Triplet loss with the hardest in-batch negative (paper 000's metric-learning term).

    ``mean_i max(0, m - cos(q_i, t_i) + max_{j != i} cos(q_i, t_j))``; columns holding the
    same image as the positive (equal ``target_keys``) are not negatives.
    """
    sims = query @ target.t()
    negative = torch.eye(len(query), dtype=torch.bool, device=query.device)
    if target_keys is not None:
        target_keys = target_keys.to(query.device)
        negative = negative | (target_keys[:, None] == target_keys[None, :])
    hardest = sims.masked_fill(negative, float("-inf")).max(dim=1).values
    positive = sims.diagonal()
    loss = F.relu(margin - positive + hardest)
    return torch.where(torch.isfinite(hardest), loss, torch.zeros_like(loss)).mean()
