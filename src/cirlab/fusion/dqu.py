"""DQU-CIR (paper 002): dual query unification, a raw-data level fusion.

Both halves of a query are turned into one modality *before* the encoders:

- text unification: ``caption(reference) + ", but " + text``, through the text encoder;
- visual unification: the keywords of the text drawn onto the reference image, through the
  image encoder.

The captions come from the data set's metadata when it has them; otherwise from a *retrieval
captioner*: a ridge-regression map from image vectors to text vectors, fitted on the training
images and their captions, which ranks the training captions (the phrase vocabulary) by
cosine to the mapped image and takes the best. It is stored inside the checkpoint.
"""

from __future__ import annotations

import re
import textwrap

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from cirlab.encoders.base import as_tensors, pad_to_square
from cirlab.fusion.base import Fusion, Views, fusion_methods, mlp

# Function words (articles, pronouns, auxiliaries, prepositions, conjunctions) and the verbs of
# edit instructions ("make it", "change to"): what is left are the words that name what to show.
FUNCTION_WORDS = frozenset("""
a an the this that these those it its it's they them their he him his she her hers one ones
is are was were be been being am do does did has have had having can could would should will shall may might must
of to in on at by for from with without into onto over under than then as so such very too also just
and or but nor not yet if while instead same similar like alike version variant kind sort style look looks
make made makes change changed changes turn turns turned replace replaced replaces switch give gives show shows
want wants need needs please i me my we us our you your would let
""".split())
DRAW_VERSION = 1  # bump when the drawing changes: drawn features are cached under it


def keywords(text: str, max_words: int = 8) -> str:
    """The content words of a modification text, in order, function words removed."""
    words = re.findall(r"[a-z0-9][a-z0-9'\-]*", text.lower())
    kept = [w for w in words if w not in FUNCTION_WORDS]
    return " ".join((kept or words)[:max_words])


def unified_text(caption: str, text: str) -> str:
    """Text unification: ``caption + ", but " + text``."""
    return f"{caption.strip().rstrip('.,')}, but {text.strip()}"


def draw_keywords(image: Image.Image, words: str, size: int = 224) -> Image.Image:
    """Visual unification: the keywords written in black on a white band across the image's lower part."""
    canvas = pad_to_square(image.convert("RGB")).resize((size, size), Image.BICUBIC)
    if not words:
        return canvas
    draw = ImageDraw.Draw(canvas)
    font_size = max(10, size // 8)
    font = ImageFont.load_default(size=font_size)
    lines = textwrap.wrap(words, width=max(8, int(size / (font_size * 0.55))))[:3]
    band = len(lines) * (font_size + 4) + 6
    draw.rectangle([0, size - band, size, size], fill=(255, 255, 255))
    y = size - band + 3
    for line in lines:
        w = draw.textlength(line, font=font)
        draw.text(((size - w) / 2, y), line, fill=(0, 0, 0), font=font)
        y += font_size + 4
    return canvas


@fusion_methods.register("dqu")
class DQU(Fusion):
    """DQU-CIR's fusion of the two unified queries (paper 002):

    ``f_textual = L2(W_t text_encoder(caption + ", but " + text))``,
    ``f_visual = L2(W_i image_encoder(reference with keywords drawn))``,
    ``lambda = sigmoid(MLP([f_textual; f_visual]))``,
    ``q = L2(lambda * f_textual + (1 - lambda) * f_visual)``; trained with batch InfoNCE.
    ``unify``: ``both`` (default), ``textual`` or ``visual`` (the paper's ablation). The
    encoders stay frozen here (the paper fine-tunes CLIP): the projections are what is learned.
    ``captions``: ``metadata`` (the data set's captions where present, else the captioner) or
    ``captioner`` (always the retrieval captioner).
    """

    name = "dqu"
    paper = "paper 002 (DQU-CIR: text + visual query unification)"

    def build_layers(self, unify: str = "both", hidden_dim: int = 512,
                     captions: str = "metadata", captioner_ridge: float = 1.0, captioner_model: str | None = None) -> None:
        dims, embed_dim = self.dims, self.embed_dim
        if unify not in ("both", "textual", "visual"):
            raise ValueError(f"unify must be both, textual or visual, got {unify!r}")
        if captions not in ("metadata", "captioner"):
            raise ValueError(f"captions must be metadata or captioner, got {captions!r}")
        self.unify, self.captions, self.ridge = unify, captions, captioner_ridge
        # None: a ridge map fitted here; a stage-1 folder or stage1.pt trained on image-caption retrieval
        # (``cirlab train --stage 1 --stage1-config align``): its aligned projections pick the phrase
        self.captioner_model = captioner_model
        self.mix = mlp([2 * embed_dim, hidden_dim, 1])
        # the retrieval captioner: filled by fit_captioner, sized from the checkpoint on load
        self.register_buffer("captioner_map", torch.zeros(0, dims.text))
        self.register_buffer("vocab_vectors", torch.zeros(0, dims.text))
        self.register_buffer("vocab_bytes", torch.zeros(0, dtype=torch.uint8))
        self.register_buffer("captioner_bias", torch.zeros(0))  # the aligned captioner's image-side bias

    # -- the retrieval captioner ------------------------------------------------------------
    def fit_captioner(self, image_vectors: np.ndarray, caption_vectors: np.ndarray, phrases: list[str],
                      vocab_vectors: np.ndarray) -> None:
        """Ridge regression ``W = argmin |X W - T|^2 + r |W|^2`` from L2 image to L2 text vectors."""
        x = F.normalize(torch.as_tensor(image_vectors, dtype=torch.float64), dim=-1)
        t = F.normalize(torch.as_tensor(caption_vectors, dtype=torch.float64), dim=-1)
        gram = x.T @ x + self.ridge * torch.eye(x.shape[1], dtype=torch.float64)
        self.captioner_map = torch.linalg.solve(gram, x.T @ t).float()
        self.captioner_bias = torch.zeros(0)
        self._set_vocabulary(phrases, torch.as_tensor(vocab_vectors))

    def set_aligned_captioner(self, image_proj: torch.nn.Linear, phrase_vectors: torch.Tensor, phrases: list[str]) -> None:
        """Caption by an aligned stage-1 model: ``argmax_c L2(W_i L2(x) + b_i) . phrase_vectors[c]``, where the
        phrase vectors are that model's ``L2(W_t L2(c) + b_t)``."""
        self.captioner_map = image_proj.weight.detach().t().float().clone()
        self.captioner_bias = image_proj.bias.detach().float().clone()
        self._set_vocabulary(phrases, phrase_vectors.detach())

    def _set_vocabulary(self, phrases: list[str], vectors: torch.Tensor) -> None:
        """The captioner's phrases (stored as bytes, so the checkpoint carries them) and their unit vectors."""
        self.vocab_vectors = F.normalize(vectors.float(), dim=-1)
        self.vocab_bytes = torch.frombuffer(bytearray("\n".join(phrases).encode()), dtype=torch.uint8).clone()

    @property
    def vocabulary(self) -> list[str]:
        return bytes(self.vocab_bytes.tolist()).decode().split("\n") if len(self.vocab_bytes) else []

    def caption(self, pooled: np.ndarray | torch.Tensor) -> list[str]:
        """Best phrase of the vocabulary for each image vector."""
        if not len(self.captioner_map):
            return ["an image"] * len(pooled)
        mapped = F.normalize(torch.as_tensor(pooled).float().to(self.captioner_map.device), dim=-1) @ self.captioner_map
        if len(self.captioner_bias):
            mapped = mapped + self.captioner_bias
        mapped = F.normalize(mapped, dim=-1)
        vocab = self.vocabulary
        return [vocab[i] for i in (mapped @ self.vocab_vectors.T).argmax(dim=-1).tolist()]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        state_dict.setdefault(prefix + "captioner_bias", torch.zeros(0))  # checkpoints without it: no bias
        for name in ("captioner_map", "vocab_vectors", "vocab_bytes", "captioner_bias"):
            if prefix + name in state_dict:  # the captioner's size is data, not config
                setattr(self, name, torch.empty_like(state_dict[prefix + name]))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # -- the fusion -------------------------------------------------------------------------
    def compose(self, reference: Views, text: Views) -> torch.Tensor:
        """``reference``: views of the drawn reference image; ``text``: views of the unified text."""
        f_visual = self.embed_image(reference)
        f_textual = self.project_text(text["pooled"])
        if self.unify == "textual":
            return f_textual
        if self.unify == "visual":
            return f_visual
        lam = torch.sigmoid(self.mix(torch.cat([f_textual, f_visual], dim=-1)))
        return F.normalize(lam * f_textual + (1 - lam) * f_visual, dim=-1)

    @torch.inference_mode()
    def raw_query_views(self, image: Image.Image, text: str, image_encoder, text_encoder,
                        caption: str | None = None) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """One query, unified: the drawn reference's views and the unified text's views (for serving)."""
        image = image.convert("RGB")
        if caption is None:
            caption = self.caption(image_encoder.encode_images([image], ("pooled",))["pooled"])[0]
        drawn = draw_keywords(image, keywords(text), image_encoder.size) if self.unify != "textual" else image
        iv = image_encoder.encode_images([drawn], self.image_views)
        tv = text_encoder.encode_texts([unified_text(caption, text) if self.unify != "visual" else text],
                                       self.text_views)
        return as_tensors(iv), as_tensors(tv)
