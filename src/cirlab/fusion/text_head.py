"""The text head: pooled text vector -> a trained method's gallery space, for searches without a reference.

A part of the model (it travels inside the checkpoint and answers queries); ``training.align`` fits it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class TextHead(nn.Module):
    """Pooled text vector -> unit vector in the gallery space: a residual-free two-layer MLP."""

    def __init__(self, text_dim: int, embed_dim: int, hidden_dim: int = 1024) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(text_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, embed_dim))

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(text), dim=-1)


def head_state(head: TextHead) -> dict:
    return {"text_dim": head.net[0].in_features, "hidden_dim": head.net[0].out_features,
            "embed_dim": head.net[2].out_features, "state_dict": head.state_dict()}


def head_from_state(state: dict) -> TextHead:
    head = TextHead(state["text_dim"], state["embed_dim"], state["hidden_dim"])
    head.load_state_dict(state["state_dict"])
    return head.eval()
