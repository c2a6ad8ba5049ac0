"""The Combiner of CLIP4Cir (Baldrati et al.), which papers 001 (as AC) and 004 build on."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cirlab.fusion.base import Fusion, Views, fusion_methods


@fusion_methods.register("combiner")
class Combiner(Fusion):
    """CLIP4Cir Combiner over the projected features ``x`` (image) and ``t`` (text).

    ``x' = drop(ReLU(W_x x))``, ``t' = drop(ReLU(W_t t))`` (projection_dim each);
    ``lambda = sigmoid(W_l2 drop(ReLU(W_l1 [t'; x'])))`` (a learned, query-dependent mix);
    ``h = drop(ReLU(W_c [t'; x']))``;
    ``q = L2(W_o h + lambda * t + (1 - lambda) * x)``: a convex combination of the two inputs
    plus a learned branch on their concatenation.

    cirlab's choice: ``W_o`` starts at zero (``zero_init_output``), so training starts from the
    convex combination and learns the residual branch from there; with randomly initialised
    projections and small data, a random residual branch overfits before the mix is learned.
    """

    name = "combiner"
    paper = "CLIP4Cir Combiner (baseline of papers 001 and 004; AC of paper 001)"

    def __init__(self, image_dim: int, text_dim: int, embed_dim: int = 512, projection_dim: int = 1024,
                 hidden_dim: int = 2048, dropout: float = 0.5, zero_init_output: bool = True,
                 **kw: object) -> None:
        super().__init__(image_dim, text_dim, embed_dim)
        self.image_branch = nn.Linear(embed_dim, projection_dim)
        self.text_branch = nn.Linear(embed_dim, projection_dim)
        self.combine = nn.Linear(2 * projection_dim, hidden_dim)
        self.output = nn.Linear(hidden_dim, embed_dim)
        self.gate_hidden = nn.Linear(2 * projection_dim, hidden_dim)
        self.gate_out = nn.Linear(hidden_dim, 1)
        self.dropout = nn.Dropout(dropout)
        if zero_init_output:
            nn.init.zeros_(self.output.weight)
            nn.init.zeros_(self.output.bias)

    def mix(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The Combiner on two unit vectors of the shared space (reused by clip_cd, caff)."""
        xp = self.dropout(F.relu(self.image_branch(x)))
        tp = self.dropout(F.relu(self.text_branch(t)))
        both = torch.cat([tp, xp], dim=-1)
        lam = torch.sigmoid(self.gate_out(self.dropout(F.relu(self.gate_hidden(both)))))
        h = self.dropout(F.relu(self.combine(both)))
        return self.output(h) + lam * t + (1 - lam) * x

    def compose(self, reference: Views, text: Views) -> torch.Tensor:
        x = self.project_image(reference["pooled"])
        t = self.project_text(text["pooled"])
        return F.normalize(self.mix(x, t), dim=-1)
