"""Image augmentation for end-to-end training: changes that keep every edit's attribute.

The edits of cirlab's data sets change colour (skin tone, an object's colour), left-right
orientation (facing) and what is where (CSS-like positions). So there is no colour jitter and no
horizontal flip. What is left changes how an image is drawn, not what it shows:

- ``scale=S``: the content shrinks by a factor drawn from ``[1 - S, 1]`` and moves anywhere within
  the freed margin, background filling the rest (an emoji drawn smaller, off-centre);
- ``blur=B``: half of the images get a Gaussian blur, sigma drawn from ``[0.3, B]`` pixels of the
  network's input (a softer outline, another rasteriser);
- ``noise=N``: Gaussian pixel noise whose standard deviation is drawn from ``[0, N]`` of the pixel
  range (grain on the outlines and fills).

A spec joins them like the other specs: ``scale=0.2,blur=1.5,noise=0.03``; the empty spec is no
augmentation. They run on batches of normalised pixels (B, 3, S, S), with torch's random generator
(seeded by the training seed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

from cirlab.errors import CirlabError
from cirlab.registry import dataclass_options


@dataclass(frozen=True)
class Augment:
    scale: float = 0.0
    blur: float = 0.0
    noise: float = 0.0

    @classmethod
    def parse(cls, spec: str | None) -> "Augment":
        """``"scale=0.2,blur=1.5"`` -> ``Augment(scale=0.2, blur=1.5)``; ``""`` or None: no augmentation."""
        options = dataclass_options(cls, spec, "augmentation",
                                    " (no colour jitter or flips: tone is colour, facing is a flip)")
        values = {}
        for key, text in options.items():
            try:
                values[key] = float(text)
            except ValueError:
                raise CirlabError(f"augmentation {key}={text!r} must be a number") from None
        aug = cls(**values)
        if not 0 <= aug.scale < 1 or aug.blur < 0 or not 0 <= aug.noise <= 1:
            raise CirlabError(f"augmentation {spec!r} out of range: scale in [0, 1), blur >= 0 pixels, noise in [0, 1]")
        return aug

    @property
    def spec(self) -> str:
        return ",".join(f"{f.name}={getattr(self, f.name):g}" for f in fields(self) if getattr(self, f.name))

    def __bool__(self) -> bool:
        return bool(self.scale or self.blur or self.noise)

    def __call__(self, x: torch.Tensor, white: torch.Tensor, black: torch.Tensor) -> torch.Tensor:
        """Augment a batch of normalised pixels; ``white`` and ``black`` are the (3,) normalised values of
        the background and of black, which set the fill and the noise's range."""
        white, span = white.view(1, 3, 1, 1).to(x), (white - black).view(1, 3, 1, 1).to(x)
        if self.scale:
            x = _rescale(x, self.scale, white)
        if self.blur:
            x = _blur(x, self.blur)
        if self.noise:
            std = (torch.rand(x.shape[0], 1, 1, 1) * self.noise).to(x)
            x = x + torch.randn_like(x) * std * span.abs()
        return x


def _rescale(x: torch.Tensor, scale: float, fill: torch.Tensor) -> torch.Tensor:
    """Shrink each image's content by a factor in [1 - scale, 1] and move it within the margin."""
    n = x.shape[0]
    s = 1 - torch.rand(n) * scale  # drawn on the CPU: the same draws on every device
    shift = (torch.rand(n, 2) * 2 - 1) * (1 - s)[:, None]  # the content's centre, in [-1, 1] coordinates
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1 / s
    theta[:, :, 2] = -shift / s[:, None]
    grid = F.affine_grid(theta.to(x), list(x.shape), align_corners=False)
    return F.grid_sample(x - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + fill


def _blur(x: torch.Tensor, max_sigma: float) -> torch.Tensor:
    """A separable Gaussian blur on a random half of the batch, each image with its own sigma."""
    out = x.clone()
    for i in torch.nonzero(torch.rand(x.shape[0]) < 0.5).flatten().tolist():
        sigma = 0.3 + float(torch.rand(())) * max(max_sigma - 0.3, 0.0)
        radius = max(1, math.ceil(2 * sigma))
        t = torch.arange(-radius, radius + 1, dtype=x.dtype)
        k = torch.exp(-t ** 2 / (2 * sigma ** 2))
        k = (k / k.sum()).to(x)
        img = F.pad(x[i:i + 1], (radius, radius, radius, radius), mode="replicate")
        img = F.conv2d(img, k.view(1, 1, 1, -1).expand(3, 1, 1, -1), groups=3)
        out[i] = F.conv2d(img, k.view(1, 1, -1, 1).expand(3, 1, -1, 1), groups=3)[0]
    return out
