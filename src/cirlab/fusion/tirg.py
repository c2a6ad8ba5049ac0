"""TIRG (Vo et al., the first CIR method; a baseline of every paper) and paper 003's gating-only variant."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from cirlab.errors import CirlabError
from cirlab.fusion.base import Fusion, Views, fusion_methods, mlp


@fusion_methods.register("tirg")
class TIRG(Fusion):
    """Text Image Residual Gating on the projected vectors ``x`` (image) and ``t`` (text):

    ``f_gate = sigmoid(W_g2 ReLU(BN(W_g1 [x; t]))) * x`` (keep or suppress reference features),
    ``f_res = W_r2 ReLU(BN(W_r1 [x; t]))`` (add what the text asks for),
    ``q = L2(w_g f_gate + w_r f_res)`` with learnable scalars ``w_g``, ``w_r``
    (initialised from the config: ``gate_weight``, ``residual_weight``).
    """

    name = "tirg"
    paper = "TIRG (Vo et al. 2019), the reference of paper 003 and a baseline of 000/001"

    def build_layers(self, hidden_dim: int = 1024,
                     gate_weight: float = 1.0, residual_weight: float = 1.0, dropout: float = 0.1) -> None:
        embed_dim = self.embed_dim
        self.gate = mlp([2 * embed_dim, hidden_dim, embed_dim], dropout=dropout, norm=True)
        self.residual = mlp([2 * embed_dim, hidden_dim, embed_dim], dropout=dropout, norm=True)
        self.w_gate = nn.Parameter(torch.tensor(float(gate_weight)))
        self.w_residual = nn.Parameter(torch.tensor(float(residual_weight)))

    def compose(self, reference: Views, text: Views) -> torch.Tensor:
        x = self.embed_image(reference)
        both = torch.cat([x, self.project_text(text["pooled"])], dim=-1)
        return F.normalize(self.w_gate * torch.sigmoid(self.gate(both)) * x + self.w_residual * self.residual(both), dim=-1)


@fusion_methods.register("tirg_gate")
class TIRGGate(Fusion):
    """Paper 003's modified TIRG: gating only, over the image feature *map*.

    ``X = W_p * S`` (a 1x1 convolution to ``channels`` over the scaled region map ``S``, see
    :meth:`Fusion.scaled_tokens`), ``T`` = the projected text vector broadcast over H x W;
    ``f_gate(X, T) = sigmoid(BN(W_g2 * ReLU(BN(W_g1 * [X, T])))) ⊙ X`` with ``W_g1`` a 3x3
    convolution (``W_g2``: ``gate_kernel``, 1x1 by default to save CPU time, 3x3 as in the
    paper when set to 3); then ``q = L2(W_o avgpool(f_gate))``. There is no residual branch:
    the text can only select reference features, never add new ones (003's design).

    The gallery goes through ``L2(W_o W_p L2(pooled))``, which equals the average of the
    projected map (linear operations commute with the average), i.e. the query with a gate of 1.
    Image heads (``image_head``) read the projected map ``X`` on the gallery side and the gated
    map ``f_gate`` on the query side, so the gate reaches them too.

    Options (off by default): ``map_from`` takes ``S`` from the encoder's ``local`` view (a map from before the
    last stage, which keeps each region's own content better) or learns the map from the ``thumbnail`` view;
    then the gallery is the average of the projected map, computed from it. ``residual`` adds TIRG's residual
    branch on the map, ``positions`` row and column embeddings to the text map.
    """

    name = "tirg_gate"
    paper = "paper 003 (TIRG-style gating only, 3x3 conv + BN over the feature map)"
    image_views = ("pooled", "tokens")

    def build_layers(self, channels: int = 128, gate_kernel: int = 1,
                     residual: bool = False, positions: bool = False, map_from: str = "tokens") -> None:
        dims, embed_dim = self.dims, self.embed_dim
        if self.head_map != "tokens":
            raise CirlabError("tirg_gate's image heads read its own map: choose the map with map_from, not head_map")
        del self.image_proj  # the image side is the 1x1 convolution below, then W_o
        if map_from not in ("tokens", "local", "thumbnail"):
            raise ValueError(f"map_from must be 'tokens', 'local' or 'thumbnail', got {map_from!r}")
        self.map_from = map_from
        regions, width = dims.map_shape(map_from)
        self.side = int(math.isqrt(regions))
        self.thumbnail_net = None
        if map_from == "local":
            if regions == 0 or self.side * self.side != regions:
                raise ValueError(f"map_from=local needs an encoder with a square local view (efficientnet_lite0); "
                                 f"this one gives {regions} regions")
            self.image_views = self.gallery_views = ("pooled", "local")
        elif map_from == "thumbnail":
            from cirlab.encoders.base import THUMBNAIL
            from cirlab.fusion.heads import thumbnail_net

            self.thumbnail_net = thumbnail_net(32, channels)
            self.side = THUMBNAIL // 4
            self.image_views = self.gallery_views = ("pooled", "thumbnail")
        elif dims.image != dims.image_token:
            raise ValueError(f"tirg_gate projects the pooled vector and the region tokens with one 1x1 convolution, so "
                             f"they need one width; the encoder gives {dims.image} and {dims.image_token} "
                             "(for sift_bovw: tokens=grid without pyramid)")
        elif self.side * self.side != dims.image_tokens or dims.image_tokens == 0:
            raise ValueError(f"tirg_gate needs a square map of region tokens, the encoder gives {dims.image_tokens}")
        self.map_proj = nn.Conv2d(width, channels, 1) if self.thumbnail_net is None else None
        self.text_to_map = nn.Linear(embed_dim, channels)
        self.gate = nn.Sequential(
            nn.Conv2d(2 * channels, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU(),
            nn.Conv2d(channels, channels, gate_kernel, padding=gate_kernel // 2), nn.BatchNorm2d(channels),
        )
        self.out = nn.Linear(channels, embed_dim)
        self.rows = self.cols = None
        if positions:
            self.rows = nn.Parameter(torch.randn(channels, self.side, 1) * 0.02)
            self.cols = nn.Parameter(torch.randn(channels, 1, self.side) * 0.02)
        self.residual = None
        if residual:
            self.residual = nn.Sequential(nn.Conv2d(2 * channels, channels, 3, padding=1), nn.BatchNorm2d(channels),
                                          nn.ReLU(), nn.Conv2d(channels, channels, 1))
            nn.init.zeros_(self.residual[-1].weight)
            nn.init.zeros_(self.residual[-1].bias)

    def project_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """``W_p`` (the 1x1 convolution) applied to (..., D) rows: regions, or the pooled vector."""
        return F.linear(rows, self.map_proj.weight.flatten(1), self.map_proj.bias)

    def image_base(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.out(self.project_rows(F.normalize(pooled.float(), dim=-1)))

    def head_view(self) -> str:  # the heads read this method's own map, made from the view map_from names
        return self.map_from

    # image heads read the projected map X on the gallery side and the gated map on the query side
    def head_channels(self) -> int:
        return self.text_to_map.out_features

    def head_regions(self) -> int:
        return self.side * self.side

    def head_tokens(self, image: Views) -> torch.Tensor:
        return self.image_map(image).flatten(2).transpose(1, 2)

    def image_map(self, image: Views) -> torch.Tensor:
        """The map ``X`` (B, channels, side, side): ``W_p`` over the scaled region tokens (or the scaled local map),
        or the thumbnail's network."""
        if self.thumbnail_net is not None:
            from cirlab.fusion.heads import thumbnail_pixels

            return self.thumbnail_net(thumbnail_pixels(image))
        s = self.scaled_map(image, self.map_from)
        return self.map_proj(s.transpose(1, 2).reshape(len(s), s.shape[2], self.side, self.side))

    def embed_image(self, image: Views) -> torch.Tensor:
        if self.map_from == "tokens":
            return super().embed_image(image)
        fmap = self.image_map(image)
        return F.normalize(self.out(fmap.mean(dim=(2, 3))) + self.head_output(image, fmap.flatten(2).transpose(1, 2)), dim=-1)

    def gate_input(self, fmap: torch.Tensor, text: Views) -> torch.Tensor:
        """``[X, T]``: the map and the projected text broadcast over it (plus the position embedding)."""
        t = self.text_to_map(self.project_text(text["pooled"]))[:, :, None, None].expand(-1, -1, self.side, self.side)
        if self.rows is not None:
            t = t + self.rows + self.cols
        return torch.cat([fmap, t], dim=1)

    def compose(self, reference: Views, text: Views) -> torch.Tensor:
        fmap = self.image_map(reference)
        both = self.gate_input(fmap, text)
        gated = torch.sigmoid(self.gate(both)) * fmap
        if self.residual is not None:
            gated = gated + self.residual(both)
        heads = self.head_output(reference, gated.flatten(2).transpose(1, 2))
        return F.normalize(self.out(gated.mean(dim=(2, 3))) + heads, dim=-1)
