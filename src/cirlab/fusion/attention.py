"""Attention fusions over region and token features: MFFM (paper 000) and CAFF (paper 001)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from cirlab.fusion.base import Fusion, Views, fusion_methods
from cirlab.fusion.combiner import CombinerHead

# X spatial regions of paper 000 as a grid (rows, columns) over the encoder's map
REGION_GRIDS = {0: (0, 0), 4: (2, 2), 8: (2, 4), 12: (3, 4), 16: (4, 4)}


def _padding_mask(text: Views) -> torch.Tensor | None:
    """``key_padding_mask`` for nn.MultiheadAttention: True where a text token is padding."""
    return ~text["mask"] if "mask" in text else None


class TokenProjection(nn.Module):
    """Encoder token states -> the attention width: ``LN(W s + b)``."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)
        self.norm = nn.LayerNorm(dim_out)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.norm(self.linear(tokens))


def _zero(layer: nn.Linear) -> nn.Linear:
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class MFFMLayer(nn.Module):
    """One MFFM layer (paper 000, formulas 17-20) over image tokens ``I`` and text tokens ``T``:

    ``O_I = MultiHead(I, I, I)``, ``O_T = MultiHead(T, T, T)`` (self-attention per modality),
    ``O_IT = MultiHead(Q=O_I, K=O_T, V=O_T)`` (image queries read the text),
    ``F = Concat(O_I, O_IT) W_final``. cirlab adds a residual and layer norm around each
    attention and around ``W_final`` so that stacks of L layers train from small data.
    """

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.self_image = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.self_text = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.cross = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.w_final = nn.Linear(2 * width, width)
        self.norm_i, self.norm_t, self.norm_f = nn.LayerNorm(width), nn.LayerNorm(width), nn.LayerNorm(width)

    def forward(self, image: torch.Tensor, text: torch.Tensor, pad: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        o_i = self.norm_i(image + self.self_image(image, image, image, need_weights=False)[0])
        o_t = self.norm_t(text + self.self_text(text, text, text, key_padding_mask=pad, need_weights=False)[0])
        o_it = self.cross(o_i, o_t, o_t, key_padding_mask=pad, need_weights=False)[0]
        return self.norm_f(o_i + self.w_final(torch.cat([o_i, o_it], dim=-1))), o_t


@fusion_methods.register("mffm")
class MFFM(Fusion):
    """Paper 000's multimodal feature fusion module (MFEM features in, MFFM layers, one vector out).

    Image tokens (MFEM): the global vector, the ``levels`` view (averages of three encoder
    depths: the stand-in for ResNet-50's layers 4/10/12), ``regions`` X spatial regions (the
    map averaged over a grid: 4 = 2x2, 8 = 2x4, 12 = 3x4; 0 = none) and, with ``spatial``, all
    map regions; each with a learned position embedding. Text tokens: the encoder's token
    states with their mask. ``layers`` x :class:`MFFMLayer` of ``heads`` heads, then the image
    tokens are averaged and projected: ``q = L2(W_o mean(F) + x + t)`` where ``x``, ``t`` are the
    projected pooled vectors and ``W_o`` starts at zero (cirlab's choice, ``skip``: training
    starts at the ``sum`` baseline; ``skip: false`` gives the paper's ``q = L2(W_o mean(F))``).
    Trained with InfoNCE plus the triplet loss (``triplet_weight`` in its config).
    """

    name = "mffm"
    paper = "paper 000 (MFEM region/multi-depth tokens + MFFM self/cross attention, L=4, H=8)"
    text_views = ("pooled", "tokens", "mask")

    def build_layers(self, width: int = 256, layers: int = 4, heads: int = 8,
                     regions: int = 8, levels: bool = True, spatial: bool = False, dropout: float = 0.1,
                     skip: bool = True) -> None:
        dims, embed_dim = self.dims, self.embed_dim
        if regions not in REGION_GRIDS:
            raise ValueError(f"regions must be one of {sorted(REGION_GRIDS)}, got {regions}")
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.grid = REGION_GRIDS[regions]
        self.use_levels = bool(levels) and dims.levels[0] > 0
        self.spatial = spatial
        needs_map = regions > 0 or spatial
        side = int(math.isqrt(dims.image_tokens))
        if needs_map and (dims.image_tokens == 0 or side * side != dims.image_tokens):
            raise ValueError(f"regions need a square map of region tokens, the encoder gives {dims.image_tokens}")
        self.side = side
        self.image_views = ("pooled",) + (("tokens",) if needs_map else ()) + (("levels",) if self.use_levels else ())
        self.global_token = nn.Linear(embed_dim, width)
        count = 1
        if needs_map:
            self.region_proj = TokenProjection(dims.image_token, width)
            count += regions + (dims.image_tokens if spatial else 0)
        if self.use_levels:
            depth, padded = dims.levels
            self.level_proj = nn.Parameter(torch.randn(depth, padded, width) / math.sqrt(padded))
            self.level_norm = nn.LayerNorm(width)
            count += depth
        self.position = nn.Parameter(torch.zeros(1, count, width))
        nn.init.normal_(self.position, std=0.02)
        self.text_tokens = TokenProjection(dims.text_token, width)
        self.layers = nn.ModuleList(MFFMLayer(width, heads, dropout) for _ in range(layers))
        self.skip = skip
        self.out = _zero(nn.Linear(width, embed_dim)) if skip else nn.Linear(width, embed_dim)

    def image_tokens(self, reference: Views, x: torch.Tensor) -> torch.Tensor:
        parts = [self.global_token(x)[:, None]]
        if self.grid[0] or self.spatial:
            s = self.scaled_tokens(reference)
            b, n, d = s.shape
            if self.grid[0]:
                fmap = s.transpose(1, 2).reshape(b, d, self.side, self.side)
                parts.append(self.region_proj(F.adaptive_avg_pool2d(fmap, self.grid).flatten(2).transpose(1, 2)))
            if self.spatial:
                parts.append(self.region_proj(s))
        if self.use_levels:
            parts.append(self.level_norm(torch.einsum("bld,ldw->blw", reference["levels"].float(), self.level_proj)))
        return torch.cat(parts, dim=1) + self.position

    def compose(self, reference: Views, text: Views) -> torch.Tensor:
        x = self.embed_image(reference)
        t = self.project_text(text["pooled"])
        image, words = self.image_tokens(reference, x), self.text_tokens(text["tokens"].float())
        pad = _padding_mask(text)
        for layer in self.layers:
            image, words = layer(image, words, pad)
        q = self.out(image.mean(dim=1))
        return F.normalize(q + x + t if self.skip else q, dim=-1)


@fusion_methods.register("caff")
class CAFF(Fusion):
    """Paper 001's stage-2 model: IGGF and TGGF branches, merged by the adaptive combiner (AC).

    IGGF (eq. 1): ``psi_IT = x + MCA(Q = x, K = V = text tokens)``, then ``psi_IT += FFN(LN(psi_IT))``.
    TGGF (eq. 2): ``Q = W_q t``, ``K = W_k`` (image region tokens), ``V = Conv1x1([regions; t])``;
    gated dot-product attention ``a = softmax(Q K^T / sqrt(d)) V``, ``g = sigmoid(W_g [Q; a])``,
    ``psi_TI = t + W_o (g ⊙ a)``.
    AC: the Combiner (:class:`CombinerHead`) over ``(psi_IT, psi_TI)``; ``q = L2(AC)``.
    ``branches``: ``both`` (default), ``iggf`` (AC over ``psi_IT`` and ``t``) or ``tggf`` (AC over
    ``x`` and ``psi_TI``): the paper's ablation. Each branch's output layer starts at zero, so
    training starts at the Combiner over ``(x, t)``.
    """

    name = "caff"
    paper = "paper 001 (CAFF: IGGF + TGGF + adaptive combiner)"
    text_views = ("pooled", "tokens", "mask")

    def build_layers(self, width: int = 256, heads: int = 8,
                     branches: str = "both", projection_dim: int = 512, hidden_dim: int = 1024, dropout: float = 0.2) -> None:
        dims, embed_dim = self.dims, self.embed_dim
        if branches not in ("both", "iggf", "tggf"):
            raise ValueError(f"branches must be both, iggf or tggf, got {branches!r}")
        self.branches = branches
        self.width = width
        if branches == "tggf":
            self.text_views = ("pooled",)
        if branches in ("both", "iggf"):
            self.iggf_query = nn.Linear(embed_dim, width)
            self.iggf_text = TokenProjection(dims.text_token, width)
            self.iggf_attention = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
            self.iggf_out = _zero(nn.Linear(width, embed_dim))
            self.iggf_ffn = nn.Sequential(nn.LayerNorm(embed_dim), nn.Linear(embed_dim, 2 * embed_dim), nn.ReLU(),
                                          nn.Dropout(dropout), _zero(nn.Linear(2 * embed_dim, embed_dim)))
        if branches in ("both", "tggf"):
            if dims.image_tokens == 0:
                raise ValueError("TGGF needs the image encoder's region tokens")
            self.image_views = ("pooled", "tokens")
            self.tggf_regions = TokenProjection(dims.image_token, width)
            self.tggf_query = nn.Linear(embed_dim, width)
            self.tggf_key = nn.Linear(width, width)
            self.tggf_value = nn.Conv1d(2 * width, width, 1)  # the 1x1 convolution over [regions; text]
            self.tggf_gate = nn.Linear(2 * width, width)
            self.tggf_out = _zero(nn.Linear(width, embed_dim))
        self.ac = CombinerHead(embed_dim, projection_dim, hidden_dim, dropout, zero_init_output=True)

    def iggf(self, x: torch.Tensor, text: Views) -> torch.Tensor:
        words = self.iggf_text(text["tokens"].float())
        att = self.iggf_attention(self.iggf_query(x)[:, None], words, words, key_padding_mask=_padding_mask(text),
                                  need_weights=False)[0][:, 0]
        psi = x + self.iggf_out(att)
        return psi + self.iggf_ffn(psi)

    def tggf(self, t: torch.Tensor, reference: Views) -> torch.Tensor:
        regions = self.tggf_regions(self.scaled_tokens(reference))  # (B, N, w)
        q = self.tggf_query(t)  # (B, w)
        k = self.tggf_key(regions)
        both = torch.cat([regions, q[:, None].expand_as(regions)], dim=-1)  # text broadcast over the regions
        v = self.tggf_value(both.transpose(1, 2)).transpose(1, 2)
        weights = torch.softmax(torch.einsum("bw,bnw->bn", q, k) / math.sqrt(self.width), dim=-1)
        a = torch.einsum("bn,bnw->bw", weights, v)
        g = torch.sigmoid(self.tggf_gate(torch.cat([q, a], dim=-1)))
        return t + self.tggf_out(g * a)

    def compose(self, reference: Views, text: Views) -> torch.Tensor:
        x = self.embed_image(reference)
        t = self.project_text(text["pooled"])
        psi_it = self.iggf(x, text) if self.branches != "tggf" else x
        psi_ti = self.tggf(t, reference) if self.branches != "iggf" else t
        return F.normalize(self.ac(F.normalize(psi_it, dim=-1), F.normalize(psi_ti, dim=-1)), dim=-1)
