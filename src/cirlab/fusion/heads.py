"""Image heads: how a fusion method turns an image's encoder views into its vector, on both sides.

The reference (query side) and every gallery image (target side) go through the same head, so a
gallery may be embedded from more than the globally average-pooled vector, which loses where
things are and which way they face (``benchmarks/results/probes/representation-probe.md``).
The index still stores one vector per image: search cost does not change.

A head spec names one or more heads joined by ``+``: ``pooled`` (the linear projection of the
pooled vector alone, the default), ``attnpool`` (CLIP's attention pooling with 2-D position
embeddings over the region tokens), ``grid`` (the region map averaged over a G x G grid and
flattened, so position is explicit), ``colour`` (an MLP over the ``colour`` view, a coarse
colour layout of the image). Each head's output is *added* to the pooled projection and its
last layer starts at zero, so training starts exactly at the pooled model and learns what the
spatial view adds.

The heads that read regions read the encoder's region tokens, or with ``head_map: local`` (a model config key)
its ``local`` map from before the last stage (built when the ``Fusion`` is constructed).

Bytes in the feature cache per image (efficientnet_lite0): pooled 1280 x 4 = 5,120 (float32), tokens
49 x 1280 x 2 = 125,440 (float16), local 49 x 304 x 2 = 29,792, levels 3 x 192 x 2 = 1,152, colour
(192 + 216) x 2 = 816; the index stores the final 512 x 4 = 2,048, whatever the head.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from cirlab.errors import CirlabError
from cirlab.fusion.views import thumbnail_rgb
from cirlab.registry import Registry, parse_spec

image_heads: Registry = Registry("image head")


def _zero(layer: nn.Linear) -> nn.Linear:
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class ImageHead(nn.Module):
    """``forward(tokens, views) -> (B, embed_dim)``, added to the pooled projection before the L2.

    ``tokens`` is the region map as (B, N, C) rows in raster order (scaled so that their mean is the
    L2-normalised pooled vector), or None for heads that read only other views (``views``)."""

    views: tuple[str, ...] = ()
    needs_tokens: bool = False


def _square(n: int, who: str) -> int:
    side = math.isqrt(n)
    if n == 0 or side * side != n:
        raise CirlabError(f"the {who} image head needs a square map of region tokens; the encoder gives {n}")
    return side


@image_heads.register("attnpool")
class AttentionPool(ImageHead):
    """CLIP's ResNet attention pooling: the regions projected to ``width`` plus learned 2-D position
    embeddings (a row and a column table, summed); a query token (their mean plus its own embedding)
    attends over [query; regions] with ``heads`` heads; its output goes through ``W_o`` (zero at start)."""

    views = ("tokens",)
    needs_tokens = True

    def __init__(self, channels: int, tokens: int, embed_dim: int, width: int = 256, heads: int = 8,
                 colour_dim: int = 0) -> None:
        super().__init__()
        self.side = _square(tokens, "attnpool")
        if width % heads:
            raise CirlabError(f"attnpool: width {width} is not divisible by heads {heads}")
        self.proj = nn.Linear(channels, width)
        self.rows = nn.Parameter(torch.randn(self.side, width) * 0.02)
        self.cols = nn.Parameter(torch.randn(self.side, width) * 0.02)
        self.query_pos = nn.Parameter(torch.randn(width) * 0.02)
        self.attention = nn.MultiheadAttention(width, heads, batch_first=True)
        self.out = _zero(nn.Linear(width, embed_dim))

    def forward(self, tokens: torch.Tensor | None, views: dict) -> torch.Tensor:
        x = self.proj(tokens)
        pos = (self.rows[:, None, :] + self.cols[None, :, :]).reshape(-1, x.shape[-1])
        x = x + pos
        q = x.mean(dim=1, keepdim=True) + self.query_pos
        seq = torch.cat([q, x], dim=1)
        return self.out(self.attention(q, seq, seq, need_weights=False)[0][:, 0])


@image_heads.register("grid")
class GridPool(ImageHead):
    """The region map averaged over a ``cells`` x ``cells`` grid, each cell projected to ``width`` (one shared
    projection, ReLU) and the cells flattened in raster order (position is the index), then ``W_o``
    (zero at start). Pooling before projecting keeps training cheap: 9 cells instead of 49 regions."""

    views = ("tokens",)
    needs_tokens = True

    def __init__(self, channels: int, tokens: int, embed_dim: int, width: int = 128, cells: int = 3,
                 colour_dim: int = 0) -> None:
        super().__init__()
        self.side = _square(tokens, type(self).__name__)
        self.cells = cells
        self.proj = nn.Linear(channels, width)
        self.out = _zero(nn.Linear(self.read_cells() * width, embed_dim))

    def read_cells(self) -> int:
        return self.cells * self.cells

    def grid(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N, C) region rows -> (B, cells, cells, width): cell averages, projected, ReLU."""
        b, n, c = tokens.shape
        side = math.isqrt(n)  # the encoder's map, or a method's own (tirg_gate's map_from=thumbnail)
        fmap = F.adaptive_avg_pool2d(tokens.transpose(1, 2).reshape(b, c, side, side), self.cells)
        return F.relu(self.proj(fmap.permute(0, 2, 3, 1)))

    def forward(self, tokens: torch.Tensor | None, views: dict) -> torch.Tensor:
        return self.out(self.grid(tokens).flatten(1))


@image_heads.register("mirror")
class MirrorPool(GridPool):
    """Left-right structure, which global pooling averages away (an emoji and its mirror image: pooled
    cosine 0.95). The head reads the difference between the grid of :class:`GridPool` and the same grid
    flipped left-right. It changes sign when the image is mirrored (a CNN's map of a mirrored image is
    close to its map flipped), so facing becomes a direction of the space that a text can add."""

    def read_cells(self) -> int:
        return self.cells * (self.cells // 2)

    def forward(self, tokens: torch.Tensor | None, views: dict) -> torch.Tensor:
        cells = self.grid(tokens)
        half = self.cells // 2
        return self.out((cells[:, :, :half] - cells.flip(2)[:, :, :half]).flatten(1))


@image_heads.register("colour")
class ColourStatistics(ImageHead):
    """Colour statistics from the ``colour`` view, which global pooling of an ImageNet network keeps
    poorly (an emoji and its skin-tone variant: pooled cosine 0.93). Three parts, concatenated, then
    ``W_o`` (zero at start): the joint RGB histogram (square-rooted) through a linear layer (which
    colours, however small their area); each grid cell's mean colour through one shared MLP of
    ``bins`` soft colour detectors, averaged and max-pooled over the cells; the flattened 8 x 8
    layout through a linear layer (where the colours are)."""

    views = ("colour",)

    def __init__(self, channels: int, tokens: int, embed_dim: int, colour_dim: int = 0, bins: int = 64,
                 layout: int = 128, hist: int = 128) -> None:
        super().__init__()
        from cirlab.encoders.base import COLOUR_DIM, COLOUR_LAYOUT

        if colour_dim != COLOUR_DIM:
            raise CirlabError(f"the colour image head needs the encoders' 'colour' view ({COLOUR_DIM} values), "
                              f"this encoder gives {colour_dim or 'none'}")
        self.cells = COLOUR_LAYOUT
        self.detect = nn.Sequential(nn.Linear(3, bins), nn.ReLU(), nn.Linear(bins, bins), nn.ReLU())
        self.layout = nn.Linear(self.cells, layout)
        self.hist = nn.Linear(colour_dim - self.cells, hist)
        self.out = _zero(nn.Linear(2 * bins + layout + hist, embed_dim))

    def forward(self, tokens: torch.Tensor | None, views: dict) -> torch.Tensor:
        colour = views["colour"].float().flatten(1)
        grid, hist = colour[:, :self.cells] - 0.5, colour[:, self.cells:].clamp(min=0).sqrt()
        cells = self.detect(grid.reshape(len(grid), -1, 3))  # (B, cells, bins)
        parts = [cells.mean(dim=1), cells.amax(dim=1), F.relu(self.layout(grid)), F.relu(self.hist(hist))]
        return self.out(torch.cat(parts, dim=-1))


@image_heads.register("thumbnail")
class ThumbnailNet(ImageHead):
    """A small convolutional network of its own, trained end to end from the pixels on both sides: the
    ``thumbnail`` view (the image at 32 x 32 px) through four 3 x 3 convolutions with ReLU (``width``, 2x and
    4x channels, strides 1, 2, 2, 1: an 8 x 8 map), averaged over a ``cells`` x ``cells`` grid and flattened
    in raster order like :class:`GridPool`, then ``W_o`` (zero at start).

    A frozen ImageNet network's last map mixes every region with its context: on CSS-like scenes a linear
    probe of its 3 x 3 grid tells whether a cell holds an object in 94.5% of cells, and what object in 90%
    (``benchmarks/css_probe.py``). Low-resolution images of simple scenes are what the papers train their
    encoders end to end on (TIRG on CSS at 64 px); a network this small trains on 2 cores."""

    views = ("thumbnail",)

    def __init__(self, channels: int, tokens: int, embed_dim: int, colour_dim: int = 0, width: int = 32,
                 cells: int = 3) -> None:
        super().__init__()
        self.cells = cells
        self.net = thumbnail_net(width, 4 * width)
        self.out = _zero(nn.Linear(cells * cells * 4 * width, embed_dim))

    def forward(self, tokens: torch.Tensor | None, views: dict) -> torch.Tensor:
        return self.out(F.adaptive_avg_pool2d(self.net(thumbnail_pixels(views)), self.cells).flatten(1))


def thumbnail_net(width: int, out: int) -> nn.Sequential:
    """Four 3 x 3 convolutions with ReLU (``width``, 2x, 4x, then ``out`` channels; strides 1, 2, 2, 1): a
    thumbnail of side S -> a map of side S / 4."""
    w = width
    return nn.Sequential(
        nn.Conv2d(3, w, 3, padding=1), nn.ReLU(),
        nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(2 * w, 4 * w, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(4 * w, out, 3, padding=1), nn.ReLU(),
    )


def thumbnail_pixels(views: dict) -> torch.Tensor:
    """The ``thumbnail`` view as a (B, 3, S, S) image, centred (white is 0.5)."""
    return thumbnail_rgb(views).permute(0, 3, 1, 2) - 0.5


def parse_head(spec: str | None) -> list[tuple[str, dict]]:
    """``"attnpool+colour"`` -> ``[("attnpool", {}), ("colour", {})]``; options as ``grid:cells=4,width=64``.
    ``pooled`` (or nothing) adds no head."""
    out = []
    for part in filter(None, (p.strip() for p in (spec or "pooled").split("+"))):
        name, given = parse_spec(part)
        if name == "pooled":
            continue
        image_heads.get(name)  # a one-line error for unknown names
        if "factory" in given:
            raise CirlabError(f"image head option {given['factory']!r} needs key=value (e.g. grid:cells=4)")
        options = {}
        for key, value in given.items():
            try:
                options[key] = int(value)
            except ValueError:
                raise CirlabError(f"image head option {key}={value!r} must be an integer") from None
        out.append((name, options))
    return out


def build_heads(spec: str | None, channels: int, tokens: int, embed_dim: int, colour_dim: int) -> nn.ModuleList:
    factory: Callable = image_heads.get
    heads = nn.ModuleList()
    for name, options in parse_head(spec):
        try:
            heads.append(factory(name)(channels, tokens, embed_dim, colour_dim=colour_dim, **options))
        except TypeError as e:
            raise CirlabError(f"image head {name!r}: {e}") from None
    return heads
