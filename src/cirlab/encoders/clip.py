"""CLIP from a local Hugging Face folder (``clip:/path``), both towers, never downloaded.

Pooled views are the projected embeddings (CLIP's joint space, what CLIP4Cir's Combiner and
papers 001/002/004 fuse); token views are the towers' last hidden states (patch tokens
without CLS for images; token states plus mask for text).

Stage 1 can fine-tune either tower as a whole (``"all"``: embeddings, every layer, final norm and
projection; paper 004's recipe) or its last N transformer layers plus final norm and projection.
Each encoder instance loads its own copy of the weights, so fine-tuning one never changes another
(the base ``clip:`` encoder of the same folder included).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from cirlab.devices import module_device, to_device
from cirlab.encoders.base import (
    COLOUR_DIM,
    check_views,
    pixel_views,
    fingerprint_folder,
    hidden_levels,
    PseudoWordInput,
    injected,
    image_encoders,
    read_json,
    model_folder,
    set_threads,
    stack_levels,
    text_encoders,
    to_pixels,
)
from cirlab.encoders.hf import _load
from cirlab.encoders.runtime import Network, Wrapped, image_network, run_network, text_network
from cirlab.errors import CirlabError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _clip(folder: Path):
    from transformers import CLIPModel

    set_threads()
    return _load(CLIPModel, folder, "CLIP model").eval().requires_grad_(False)


def _tower_tunable(model, tower: str, projection: str, final_norm: str, n: int | str, spec: str) -> dict:
    """The parameters of one CLIP tower that fine-tuning ``n`` (a count of last layers, or ``"all"``) trains."""
    count = len(getattr(model, tower).encoder.layers)
    if n == "all":
        prefixes: tuple[str, ...] = (f"{tower}.", f"{projection}.")
    elif isinstance(n, int) and 1 <= n <= count:
        prefixes = tuple(f"{tower}.encoder.layers.{i}." for i in range(count - n, count)) + (
            f"{tower}.{final_norm}.", f"{projection}.")
    else:
        raise CirlabError(f"{spec} has {count} {tower} layers: fine-tune between 1 and {count} of them, or 'all', "
                          f"not {n!r}")
    return {k: v for k, v in model.named_parameters() if k.startswith(prefixes)}


class CLIPImageEncoder:
    def __init__(self, folder: Path, spec: str | None = None) -> None:
        self.model = _clip(folder)
        pre = read_json(folder / "preprocessor_config.json")
        self.size = int(self.model.config.vision_config.image_size)
        self.mean = pre.get("image_mean", CLIP_MEAN)
        self.std = pre.get("image_std", CLIP_STD)
        self.spec = spec or f"clip:{folder}"
        self.id = f"clip-image:{fingerprint_folder(folder)}@{self.size}"
        self.dim = int(self.model.config.projection_dim)
        self.token_dim = int(self.model.config.vision_config.hidden_size)
        side = self.size // int(self.model.config.vision_config.patch_size)
        self.num_tokens = side * side
        self.levels_shape = (3, self.token_dim)
        self.colour_dim = COLOUR_DIM
        self.network_module = Wrapped(self.model, self._network_outputs)

    def _network_outputs(self, pixels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model.vision_model(pixel_values=pixels, output_hidden_states=True)
        return (self.model.visual_projection(out.pooler_output), out.last_hidden_state[:, 1:],
                *hidden_levels(out.hidden_states, self.levels_shape[0]))

    def network(self) -> Network:
        """The network an inference runtime runs: pixels -> (projected embedding, patch tokens, level averages...)."""
        return image_network(self.network_module, self.size,
                             ("pooled", "tokens") + tuple(f"level{i}" for i in range(self.levels_shape[0])))

    # Stage 1: the frozen trunk is the patch embedding and the first layers; the tail the last ``n`` layers,
    # the final norm on the CLS token and the projection (``"all"``: the tail is the whole tower).
    checkpointing = False  # stage 1 sets it: the tail's layers recompute activations in the backward pass

    def tunable(self, n: int | str) -> dict[str, torch.nn.Parameter]:
        return _tower_tunable(self.model, "vision_model", "visual_projection", "post_layernorm", n, self.spec)

    def pixels(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return to_pixels(images, self.size, self.mean, self.std, scale=1.0)

    def trunk_of_pixels(self, x: torch.Tensor, n: int | str) -> torch.Tensor:
        if n == "all":
            return x
        vm = self.model.vision_model
        with torch.no_grad():
            x = vm.pre_layrnorm(vm.embeddings(x))
            for layer in vm.encoder.layers[:len(vm.encoder.layers) - n]:
                x = layer(x, None)
        return x

    def tail(self, x: torch.Tensor, n: int | str) -> torch.Tensor:
        from torch.utils.checkpoint import checkpoint

        vm = self.model.vision_model
        if n == "all":
            x, n = vm.pre_layrnorm(vm.embeddings(x)), len(vm.encoder.layers)
        for layer in vm.encoder.layers[len(vm.encoder.layers) - n:]:
            x = checkpoint(layer, x, None, use_reentrant=False) if self.checkpointing else layer(x, None)
        return self.model.visual_projection(vm.post_layernorm(x[:, 0]))

    @torch.inference_mode()
    def encode_images(self, images: Sequence[Image.Image], views: Sequence[str] = ("pooled",)) -> dict[str, np.ndarray]:
        check_views(views, ("pooled", "tokens", "levels", "colour", "thumbnail"), self.spec)
        pooled, tokens, *levels = run_network(self, {"pixels": self.pixels(images)})
        res: dict[str, np.ndarray] = pixel_views(images, views)
        if "levels" in views:
            res["levels"] = stack_levels(levels, self.token_dim)
        if "pooled" in views:
            res["pooled"] = pooled.numpy().astype(np.float32)
        if "tokens" in views:
            res["tokens"] = tokens.numpy().astype(np.float16)
        return res


class CLIPTextEncoder(PseudoWordInput):
    def __init__(self, folder: Path, max_tokens: int = 64, spec: str | None = None) -> None:
        from transformers import AutoTokenizer

        self.model = _clip(folder)
        self.tokenizer = _load(AutoTokenizer, folder, "tokenizer")
        self.max_tokens = min(max_tokens, int(self.model.config.text_config.max_position_embeddings))
        self.spec = spec or f"clip:{folder}"
        self.id = f"clip-text:{fingerprint_folder(folder)}:{self.max_tokens}"
        self.dim = int(self.model.config.projection_dim)
        self.token_dim = int(self.model.config.text_config.hidden_size)
        self.network_module = Wrapped(self.model, self._network_outputs)

    def _network_outputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model.text_model(input_ids=input_ids, attention_mask=attention_mask)
        return self.model.text_projection(out.pooler_output), out.last_hidden_state

    def network(self) -> Network:
        """The network an inference runtime runs: token ids and mask -> (projected embedding, token states)."""
        batch = self.tokenizer(["a red one", "make it larger and blue"], padding=True, return_tensors="pt")
        return text_network(self.network_module, batch, ("input_ids", "attention_mask"), ("pooled", "states"))

    def text_feeds(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        batch = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_tokens,
                               return_tensors="pt")
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}

    def pooled_from(self, outputs: list[torch.Tensor], feeds: dict[str, torch.Tensor]) -> torch.Tensor:
        return outputs[0]

    def tunable(self, n: int | str) -> dict[str, torch.nn.Parameter]:
        return _tower_tunable(self.model, "text_model", "text_projection", "final_layer_norm", n, self.spec)

    def pooled_with_grad(self, texts: Sequence[str], tokens: torch.Tensor | None = None) -> torch.Tensor:
        """The pooled view as a tensor that gradients flow through (the whole tower runs forward). ``tokens`` (one
        a text, ``word_dim`` wide): each text's pseudo-word ``$`` is read as its row (``encoders.base.injected``)."""
        batch = to_device(self.text_feeds(texts), module_device(self.model))
        with injected(self.word_embeddings, batch["input_ids"], self.pseudo_word if tokens is not None else -1, tokens):
            out = self.model.text_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return self.model.text_projection(out.pooler_output)

    @property
    def word_embeddings(self) -> torch.nn.Embedding:
        """The model's input word embeddings: a pseudo-word is a vector of their width."""
        return self.model.text_model.embeddings.token_embedding

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str], views: Sequence[str] = ("pooled",)) -> dict[str, np.ndarray]:
        check_views(views, ("pooled", "tokens", "mask"), self.spec)
        pad = "max_length" if ("tokens" in views or "mask" in views) else True
        batch = self.tokenizer(list(texts), padding=pad, truncation=True, max_length=self.max_tokens, return_tensors="pt")
        pooled, states = run_network(self, {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]})
        res: dict[str, np.ndarray] = {}
        if "pooled" in views:
            res["pooled"] = pooled.numpy().astype(np.float32)
        if "tokens" in views:
            res["tokens"] = states.numpy().astype(np.float16)
        if "mask" in views:
            res["mask"] = batch["attention_mask"].numpy().astype(np.uint8)
        return res


@image_encoders.register("clip")
def _clip_image(path: str | None = None) -> CLIPImageEncoder:
    folder, spec = model_folder(path, "clip", "CLIP model")
    return CLIPImageEncoder(folder, spec)


@text_encoders.register("clip")
def _clip_text(path: str | None = None) -> CLIPTextEncoder:
    folder, spec = model_folder(path, "clip", "CLIP model")
    return CLIPTextEncoder(folder, spec=spec)
