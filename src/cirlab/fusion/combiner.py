"""The Combiner of CLIP4Cir (Baldrati et al.), which papers 001 (as AC) and 004 build on."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cirlab.fusion.base import Fusion, Views, fusion_methods


class CombinerHead(nn.Module):
    """The Combiner on two unit vectors ``a`` (image side) and ``b`` (text side) of one space.

    ``a' = drop(ReLU(W_a a))``, ``b' = drop(ReLU(W_b b))`` (projection_dim each);
    ``lambda = sigmoid(W_l2 drop(ReLU(W_l1 [b'; a'])))`` (a learned, query-dependent mix);
    ``h = drop(ReLU(W_c [b'; a']))``;
    output ``W_o h + lambda * b + (1 - lambda) * a`` (not normalised: callers may add more
    branches first). With ``zero_init_output`` ``W_o`` starts at zero, so training starts from
    the convex combination and learns the concatenation branch from there.
    """

    def __init__(self, embed_dim: int, projection_dim: int, hidden_dim: int, dropout: float,
                 zero_init_output: bool) -> None:
        super().__init__()
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

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        ap = self.dropout(F.relu(self.image_branch(a)))
        bp = self.dropout(F.relu(self.text_branch(b)))
        both = torch.cat([bp, ap], dim=-1)
        lam = torch.sigmoid(self.gate_out(self.dropout(F.relu(self.gate_hidden(both)))))
        h = self.dropout(F.relu(self.combine(both)))
        return self.output(h) + lam * b + (1 - lam) * a


@fusion_methods.register("combiner")
class Combiner(Fusion):
    """CLIP4Cir Combiner over the projected features ``x`` (image) and ``t`` (text):
    ``q = L2(W_o h + lambda * t + (1 - lambda) * x)`` (see :class:`CombinerHead`).

    cirlab's choice: ``W_o`` starts at zero (``zero_init_output``); with randomly initialised
    projections and small data, a random residual branch overfits before the mix is learned.
    """

    name = "combiner"
    paper = "CLIP4Cir Combiner (baseline of papers 001 and 004; AC of paper 001)"

    def build_layers(self, projection_dim: int = 1024,
                     hidden_dim: int = 2048, dropout: float = 0.5, zero_init_output: bool = True) -> None:
        embed_dim = self.embed_dim
        self.head = CombinerHead(embed_dim, projection_dim, hidden_dim, dropout, zero_init_output)

    def compose(self, reference: Views, text: Views) -> torch.Tensor:
        x = self.embed_image(reference)
        t = self.project_text(text["pooled"])
        return F.normalize(self.head(x, t), dim=-1)


@fusion_methods.register("clip_cd")
class ClipCD(Fusion):
    """Paper 004's stage-2 fusion: the Combiner plus a bilinear pooling branch.

    ``f_I = ReLU(FC(x))``, ``f_T = ReLU(FC(t))`` in R^K (K = ``bilinear_dim`` < D),
    ``f_bil = flatten(f_I ⊗ f_T)`` (K*K second-order interactions), ``f_out = FC(ReLU(FC(f_bil)))``,
    ``q = L2(Combiner(x, t) + f_out)``. ``bilinear: false`` is the paper's ablation without it.
    The last FC starts at zero (as the Combiner's output layer) so training starts at the Combiner.
    """

    name = "clip_cd"
    paper = "paper 004 (CLIP-CD: Combiner + bilinear pooling)"

    def build_layers(self, projection_dim: int = 512, hidden_dim: int = 1024,
                     dropout: float = 0.2, zero_init_output: bool = True, bilinear: bool = True,
                     bilinear_dim: int = 32, bilinear_hidden: int = 512) -> None:
        embed_dim = self.embed_dim
        if bilinear and not 0 < bilinear_dim < embed_dim:
            raise ValueError(f"bilinear_dim must be between 1 and embed_dim - 1 (K < D), got {bilinear_dim}")
        self.head = CombinerHead(embed_dim, projection_dim, hidden_dim, dropout, zero_init_output)
        self.bilinear = bilinear
        if bilinear:
            self.bil_image = nn.Linear(embed_dim, bilinear_dim)
            self.bil_text = nn.Linear(embed_dim, bilinear_dim)
            self.bil_hidden = nn.Linear(bilinear_dim * bilinear_dim, bilinear_hidden)
            self.bil_out = nn.Linear(bilinear_hidden, embed_dim)
            self.bil_dropout = nn.Dropout(dropout)
            if zero_init_output:
                nn.init.zeros_(self.bil_out.weight)
                nn.init.zeros_(self.bil_out.bias)

    def bilinear_branch(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        fi, ft = F.relu(self.bil_image(x)), F.relu(self.bil_text(t))
        outer = (fi[:, :, None] * ft[:, None, :]).flatten(1)
        return self.bil_out(self.bil_dropout(F.relu(self.bil_hidden(outer))))

    def compose(self, reference: Views, text: Views) -> torch.Tensor:
        x = self.embed_image(reference)
        t = self.project_text(text["pooled"])
        q = self.head(x, t)
        if self.bilinear:
            q = q + self.bilinear_branch(x, t)
        return F.normalize(q, dim=-1)
