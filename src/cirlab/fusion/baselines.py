"""The baselines every paper compares against: image only, text only, and the sum of both."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cirlab.fusion.base import Fusion, Views, fusion_methods, mlp


@fusion_methods.register("image_only")
class ImageOnly(Fusion):
    """Query = the reference image alone, ``L2(W_i x_r)``; the text is ignored."""

    name = "image_only"
    paper = "baseline (papers 000-004)"

    def compose(self, reference: Views, text: Views) -> torch.Tensor:
        return self.embed_image(reference)


@fusion_methods.register("text_only")
class TextOnly(Fusion):
    """Query = the modification text alone, ``L2(W_t t_m)``; the reference is ignored."""

    name = "text_only"
    paper = "baseline (papers 000-004)"

    def compose(self, reference: Views, text: Views) -> torch.Tensor:
        return self.project_text(text["pooled"])


@fusion_methods.register("sum")
class Sum(Fusion):
    """``phi = L2(x_r + t_m)`` over the projected features: paper 004's stage-1 fusion."""

    name = "sum"
    paper = "baseline; paper 004 eq. for stage 1"

    def compose(self, reference: Views, text: Views) -> torch.Tensor:
        return F.normalize(self.embed_image(reference) + self.project_text(text["pooled"]), dim=-1)


@fusion_methods.register("concat_mlp")
class ConcatMLP(Fusion):
    """Concatenation followed by an MLP, the papers' "concat" baseline:
    ``q = L2(MLP([x_r; t_m]))`` with ``MLP = Linear-BN-ReLU-Dropout-Linear``."""

    name = "concat_mlp"
    paper = "baseline (papers 000, 003, 004: concatenation + MLP)"

    def build_layers(self, hidden_dim: int = 1024, dropout: float = 0.2) -> None:
        embed_dim = self.embed_dim
        self.mlp = mlp([2 * embed_dim, hidden_dim, embed_dim], dropout=dropout, norm=True)

    def compose(self, reference: Views, text: Views) -> torch.Tensor:
        both = torch.cat([self.embed_image(reference), self.project_text(text["pooled"])], dim=-1)
        return F.normalize(self.mlp(both), dim=-1)
