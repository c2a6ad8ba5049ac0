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
        same = target_keys[:, None] == target_keys[None, :]
        same.fill_diagonal_(False)
        logits = logits.masked_fill(same, float("-inf"))
    labels = torch.arange(query.shape[0], device=query.device)
    return F.cross_entropy(logits, labels)
