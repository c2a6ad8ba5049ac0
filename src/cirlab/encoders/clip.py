"""CLIP from a local Hugging Face folder (``clip:/path``), both towers, never downloaded.

Pooled views are the projected embeddings (CLIP's joint space, what CLIP4Cir's Combiner and
papers 001/002/004 fuse); token views are the towers' last hidden states (patch tokens
without CLS for images; token states plus mask for text).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from cirlab.encoders.base import (
    COLOUR_DIM,
    check_views,
    colour_view,
    fingerprint_folder,
    hidden_levels,
    image_encoders,
    read_json,
    require_folder,
    set_threads,
    stack_levels,
    text_encoders,
    to_pixels,
)
from cirlab.encoders.hf import _load

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@lru_cache(maxsize=2)
def _clip(folder: Path):
    from transformers import CLIPModel

    set_threads()
    return _load(CLIPModel, folder, "CLIP model").eval().requires_grad_(False)


class CLIPImageEncoder:
    def __init__(self, folder: Path) -> None:
        self.model = _clip(folder)
        pre = read_json(folder / "preprocessor_config.json")
        self.size = int(self.model.config.vision_config.image_size)
        self.mean = pre.get("image_mean", CLIP_MEAN)
        self.std = pre.get("image_std", CLIP_STD)
        self.spec = f"clip:{folder}"
        self.id = f"clip-image:{fingerprint_folder(folder)}@{self.size}"
        self.dim = int(self.model.config.projection_dim)
        self.token_dim = int(self.model.config.vision_config.hidden_size)
        side = self.size // int(self.model.config.vision_config.patch_size)
        self.num_tokens = side * side
        self.levels_shape = (3, self.token_dim)
        self.colour_dim = COLOUR_DIM

    @torch.inference_mode()
    def encode_images(self, images: Sequence[Image.Image], views: Sequence[str] = ("pooled",)) -> dict[str, np.ndarray]:
        check_views(views, ("pooled", "tokens", "levels", "colour"), self.spec)
        out = self.model.vision_model(pixel_values=to_pixels(images, self.size, self.mean, self.std, scale=1.0),
                                      output_hidden_states="levels" in views)
        res: dict[str, np.ndarray] = colour_view(images, views)
        if "levels" in views:
            res["levels"] = stack_levels(hidden_levels(out.hidden_states, self.levels_shape[0]), self.token_dim)
        if "pooled" in views:
            res["pooled"] = self.model.visual_projection(out.pooler_output).numpy().astype(np.float32)
        if "tokens" in views:
            res["tokens"] = out.last_hidden_state[:, 1:].numpy().astype(np.float16)
        return res


class CLIPTextEncoder:
    def __init__(self, folder: Path, max_tokens: int = 64) -> None:
        from transformers import AutoTokenizer

        self.model = _clip(folder)
        self.tokenizer = _load(AutoTokenizer, folder, "tokenizer")
        self.max_tokens = min(max_tokens, int(self.model.config.text_config.max_position_embeddings))
        self.spec = f"clip:{folder}"
        self.id = f"clip-text:{fingerprint_folder(folder)}:{self.max_tokens}"
        self.dim = int(self.model.config.projection_dim)
        self.token_dim = int(self.model.config.text_config.hidden_size)

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str], views: Sequence[str] = ("pooled",)) -> dict[str, np.ndarray]:
        check_views(views, ("pooled", "tokens", "mask"), self.spec)
        pad = "max_length" if ("tokens" in views or "mask" in views) else True
        batch = self.tokenizer(list(texts), padding=pad, truncation=True, max_length=self.max_tokens, return_tensors="pt")
        out = self.model.text_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        res: dict[str, np.ndarray] = {}
        if "pooled" in views:
            res["pooled"] = self.model.text_projection(out.pooler_output).numpy().astype(np.float32)
        if "tokens" in views:
            res["tokens"] = out.last_hidden_state.numpy().astype(np.float16)
        if "mask" in views:
            res["mask"] = batch["attention_mask"].numpy().astype(np.uint8)
        return res


@image_encoders.register("clip")
def _clip_image(path: str | None = None) -> CLIPImageEncoder:
    return CLIPImageEncoder(require_folder(path, "clip", "CLIP model"))


@text_encoders.register("clip")
def _clip_text(path: str | None = None) -> CLIPTextEncoder:
    return CLIPTextEncoder(require_folder(path, "clip", "CLIP model"))
