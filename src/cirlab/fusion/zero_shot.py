"""Training-free composition in an aligned image-text space: zero-shot composed image retrieval.

Each method here has no learned parameter. Its query is a fixed function of two unit vectors in one space, the
reference's ``r`` and the text's ``t``, so it needs no triplet (docs/zero-shot.md). The space is:

- the encoders' own, where the two embed into one (a CLIP pair, ``clip:X`` for both): the maps are the identity;
- or the projections of a stage-1 model trained on image-caption retrieval alone (``model.aligned``: its folder or
  ``stage1.pt``, made by ``cirlab train --stage 1 --stage1-config align --zero-shot``; the offline stand-in for
  CLIP), copied in as fixed maps: ``r = L2(A_i L2(x) + a_i)``, ``t = L2(A_t L2(c) + a_t)``.

A gallery image is embedded as the reference is, so every index backend, the server and the page serve these
methods unchanged. Their names carry the ``zs_`` family prefix:

| method | query |
|---|---|
| ``zs_image`` | ``r`` |
| ``zs_text`` | ``t`` |
| ``zs_sum`` | ``L2(r + t)`` |
| ``zs_slerp`` | ``slerp(r, t; alpha) = (sin((1 - alpha) theta) r + sin(alpha theta) t) / sin(theta)``, ``cos(theta) = r.t`` |
| ``zs_weighted`` | ``L2((1 - w) r + w t)``, a weighted query in the spirit of WeiCom / WeiMoCIR |
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

from cirlab.fusion.base import Fusion, Views, fusion_methods
from cirlab.fusion.baselines import ImageOnly, Sum, TextOnly


def share(name: str, value: float) -> float:
    """A mixing option, which must lie within [0, 1] (refused with ``ValueError`` otherwise)."""
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be within [0, 1], got {value}")
    return float(value)


class ZeroShot(Fusion):
    """The shared part: the fixed maps into the aligned space, and no image head or mirror (they would learn)."""

    zero_shot: ClassVar[bool] = True
    paper = "zero-shot, training-free (docs/zero-shot.md)"

    def build_layers(self, aligned: str | None = None) -> None:
        if self.image_head != "pooled":
            raise ValueError(f"{self.name} learns nothing, so it takes no image head (image_head: pooled)")
        del self.image_proj, self.text_proj
        dims = self.dims
        if aligned is None:  # the encoders' own space: one width for both
            if dims.image != dims.text:
                raise ValueError(f"{self.name} composes in the encoders' shared space, but they embed into {dims.image} "
                                 f"and {dims.text} dimensions: give an aligned pair (a CLIP pair, or model.aligned: a "
                                 "stage-1 model trained with --stage1-config align; docs/zero-shot.md)")
            self.embed_dim = dims.image
            image_map = text_map = torch.eye(dims.image)
        else:  # filled from the aligned model (load_aligned), or from a checkpoint
            image_map, text_map = torch.zeros(self.embed_dim, dims.image), torch.zeros(self.embed_dim, dims.text)
        self.aligned = aligned
        self.register_buffer("image_map", image_map.clone())
        self.register_buffer("image_shift", torch.zeros(self.embed_dim))
        self.register_buffer("text_map", text_map.clone())
        self.register_buffer("text_shift", torch.zeros(self.embed_dim))

    def load_aligned(self, state: dict) -> None:
        """Copy an aligned stage-1 model's projections (its state dict) in as the fixed maps."""
        with torch.no_grad():
            for side in ("image", "text"):
                getattr(self, f"{side}_map").copy_(state[f"{side}_proj.weight"])
                getattr(self, f"{side}_shift").copy_(state[f"{side}_proj.bias"])

    def image_base(self, pooled: torch.Tensor) -> torch.Tensor:
        return F.normalize(pooled.float(), dim=-1) @ self.image_map.T + self.image_shift

    def project_text(self, pooled: torch.Tensor) -> torch.Tensor:
        return F.normalize(F.normalize(pooled.float(), dim=-1) @ self.text_map.T + self.text_shift, dim=-1)

    def vectors(self, reference: Views, text: Views) -> tuple[torch.Tensor, torch.Tensor]:
        """``(r, t)``: the unit vectors of the reference and the text in the aligned space."""
        return self.embed_image(reference), self.project_text(text["pooled"])


# the baselines' queries, read in the aligned space (ZeroShot comes first: its maps replace the projections)
@fusion_methods.register("zs_image")
class ZeroShotImage(ZeroShot, ImageOnly):
    """``q = r``: the reference alone (the text is ignored)."""

    name = "zs_image"


@fusion_methods.register("zs_text")
class ZeroShotText(ZeroShot, TextOnly):
    """``q = t``: the text alone (the reference is ignored)."""

    name = "zs_text"


@fusion_methods.register("zs_sum")
class ZeroShotSum(ZeroShot, Sum):
    """``q = L2(r + t)``."""

    name = "zs_sum"


@fusion_methods.register("zs_slerp")
class ZeroShotSlerp(ZeroShot):
    """Spherical interpolation from ``r`` (``alpha`` 0) to ``t`` (``alpha`` 1) along their great circle; where the
    two are (nearly) parallel, the normalised linear interpolation, its limit."""

    name = "zs_slerp"

    def build_layers(self, aligned: str | None = None, alpha: float = 0.5) -> None:
        super().build_layers(aligned)
        self.alpha = share("alpha", alpha)

    def compose(self, reference: Views, text: Views) -> torch.Tensor:
        r, t = self.vectors(reference, text)
        theta = torch.arccos((r * t).sum(-1, keepdim=True).clamp(-1.0, 1.0))
        sin = torch.sin(theta)
        a = self.alpha
        curved = (torch.sin((1 - a) * theta) * r + torch.sin(a * theta) * t) / sin.clamp(min=1e-6)
        straight = F.normalize((1 - a) * r + a * t, dim=-1)
        return torch.where(sin > 1e-4, F.normalize(curved, dim=-1), straight)


@fusion_methods.register("zs_weighted")
class ZeroShotWeighted(ZeroShot):
    """``q = L2((1 - w) r + w t)``: ``w`` is the text's share (0.5 is ``zs_sum``). The default leans on the text,
    which names what changes; choose it on a validation split."""

    name = "zs_weighted"

    def build_layers(self, aligned: str | None = None, weight: float = 0.7) -> None:
        super().build_layers(aligned)
        self.weight = share("weight", weight)

    def compose(self, reference: Views, text: Views) -> torch.Tensor:
        r, t = self.vectors(reference, text)
        return F.normalize((1 - self.weight) * r + self.weight * t, dim=-1)
