"""What fusion reads of an image's pixel views without the encoder: the ``thumbnail`` as an RGB image, and the
views of an image's mirror image. The image heads (``fusion.heads``) and the reference mirror
(``fusion.base``) both use them; they live here, below both."""

from __future__ import annotations

import math

import torch

from cirlab.encoders.base import COLOUR_GRID, COLOUR_LAYOUT

Views = dict[str, torch.Tensor]


def mirrored_views(image: Views) -> Views:
    """The views of an image's mirror image (left-right) that can be had without the encoder, as float:
    the region maps (``tokens``, ``local``) with their columns reversed (a CNN's map of a mirror image is close
    to its own map mirrored), the ``colour`` view's 8 x 8 layout mirrored (exact; its histogram does not change) and the
    ``thumbnail`` mirrored (exact)."""
    out: Views = {}
    for name in ("tokens", "local"):
        t = image.get(name)
        if t is not None and math.isqrt(t.shape[1]) ** 2 == t.shape[1]:  # a square map in raster order
            side = math.isqrt(t.shape[1])
            out[name] = t.float().reshape(len(t), side, side, -1).flip(2).reshape(t.shape)
    if "colour" in image:
        c = image["colour"].float()
        layout = c[:, :COLOUR_LAYOUT].reshape(len(c), COLOUR_GRID, COLOUR_GRID, 3).flip(2).reshape(len(c), -1)
        out["colour"] = torch.cat([layout, c[:, COLOUR_LAYOUT:]], dim=1)
    if "thumbnail" in image:
        out["thumbnail"] = thumbnail_rgb(image).flip(2).reshape(image["thumbnail"].shape)
    return out


def thumbnail_rgb(image: Views) -> torch.Tensor:
    """The ``thumbnail`` view (B, S * S * 3), stored row by row in RGB, as a float (B, S, S, 3) image."""
    x = image["thumbnail"].float()
    side = math.isqrt(x.shape[1] // 3)
    return x.reshape(len(x), side, side, 3)
