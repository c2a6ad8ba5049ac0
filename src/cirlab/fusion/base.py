"""The ``Fusion`` interface and the registry of fusion methods.

A fusion method maps (reference image views, modification text views) to a query vector in
the space of the gallery vectors, which the same module computes from gallery image views.
The two encoders live in different spaces (1280-d image, 384-d text by default), so every
method owns learned projections into a shared ``embed_dim`` space and the gallery side goes
through the same image projection as the reference. Inputs are L2-normalised first.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from cirlab.registry import Registry

Views = dict[str, torch.Tensor]

fusion_methods: Registry = Registry("fusion method")


class Fusion(nn.Module):
    """Base class: subclasses implement :meth:`compose`; the gallery side is shared."""

    name: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    image_views: ClassVar[tuple[str, ...]] = ("pooled",)
    text_views: ClassVar[tuple[str, ...]] = ("pooled",)

    def __init__(self, image_dim: int, text_dim: int, embed_dim: int = 512, **_: object) -> None:
        super().__init__()
        self.image_dim, self.text_dim, self.embed_dim = image_dim, text_dim, embed_dim
        self.image_proj = nn.Linear(image_dim, embed_dim)
        self.text_proj = nn.Linear(text_dim, embed_dim)

    def project_image(self, pooled: torch.Tensor) -> torch.Tensor:
        """x -> L2(W_i L2(x)): reference and gallery images share this projection."""
        return F.normalize(self.image_proj(F.normalize(pooled.float(), dim=-1)), dim=-1)

    def project_text(self, pooled: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_proj(F.normalize(pooled.float(), dim=-1)), dim=-1)

    def embed_gallery(self, image: Views) -> torch.Tensor:
        """Gallery image views -> unit vectors (B, embed_dim)."""
        return self.project_image(image["pooled"])

    def compose(self, reference: Views, text: Views) -> torch.Tensor:
        """(reference image views, text views) -> unit query vectors (B, embed_dim)."""
        raise NotImplementedError

    def forward(self, reference: Views, text: Views) -> torch.Tensor:
        return self.compose(reference, text)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def build_fusion(method: str, image_dim: int, text_dim: int, **params: object) -> Fusion:
    """A fusion method by its registered name, with its config parameters."""
    return fusion_methods.get(method)(image_dim=image_dim, text_dim=text_dim, **params)
