"""Losses on composed queries and target image vectors."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def batch_infonce(query: torch.Tensor, target: torch.Tensor, logit_scale: float,
                  target_keys: torch.Tensor | None = None) -> torch.Tensor:
    """Batch-based classification loss (InfoNCE over in-batch targets).

    ``logits[i, j] = s * cos(q_i, t_j)``; the positive of query i is target i. Where another
    query in the batch has the *same* target image (``target_keys`` equal), that column is
    masked out for query i: it is not a negative, it is the same image.
    """
    logits = logit_scale * query @ target.t()
    if target_keys is not None:
        target_keys = target_keys.to(query.device)
        same = target_keys[:, None] == target_keys[None, :]
        same.fill_diagonal_(False)
        logits = logits.masked_fill(same, float("-inf"))
    labels = torch.arange(query.shape[0], device=query.device)
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
