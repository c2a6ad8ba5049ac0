"""Zero-shot composed image retrieval in an aligned image-text space: no method here reads a triplet.

Most have no learned parameter: their query is a fixed function of two unit vectors in one space, the reference's
``r`` and the text's ``t`` (the ``zs_`` methods below, and ``zs_oti``, which optimises a pseudo-word per query and
keeps nothing). ``pic2word`` and ``lincir`` learn one thing, a mapping from ``r`` to a pseudo-word, from the
training images alone or their captions alone (``training.zero_shot``); they carry their papers' names rather than
the ``zs_`` prefix (docs/zero-shot.md). The space is:

- the encoders' own, where the two embed into one (a CLIP pair, ``clip:X`` for both): the maps are the identity;
- or the projections of a stage-1 model trained on image-caption retrieval alone (``model.aligned``: its folder or
  ``stage1.pt``, made by ``cirlab train --stage 1 --stage1-config align --zero-shot``; the offline stand-in for
  CLIP), copied in as fixed maps: ``r = L2(A_i L2(x) + a_i)``, ``t = L2(A_t L2(c) + a_t)``.

A gallery image is embedded as the reference is, so every index backend, the server and the page serve these
methods unchanged. The training-free ones:

| method | query |
|---|---|
| ``zs_image`` | ``r`` |
| ``zs_text`` | ``t`` |
| ``zs_sum`` | ``L2(r + t)`` |
| ``zs_product`` | ``L2(r + t)``, its best candidates re-scored by ``max(r.g, 0) max(t.g, 0)`` |
| ``zs_slerp`` | ``slerp(r, t; alpha) = (sin((1 - alpha) theta) r + sin(alpha theta) t) / sin(theta)``, ``cos(theta) = r.t`` |
| ``zs_weighted`` | ``L2((1 - w) r + w t)``, a weighted query in the spirit of WeiCom / WeiMoCIR |
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cirlab.encoders.base import PSEUDO_WORD
from cirlab.errors import CirlabError
from cirlab.fusion.base import Fusion, Views, fusion_methods, mlp
from cirlab.fusion.baselines import ImageOnly, Sum, TextOnly
from cirlab.fusion.dqu import FUNCTION_WORDS


def share(name: str, value: float) -> float:
    """A mixing option, which must lie within [0, 1] (refused with ``ValueError`` otherwise)."""
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be within [0, 1], got {value}")
    return float(value)


class ZeroShot(Fusion):
    """The shared part: the fixed maps into the aligned space, and no image head or mirror (they would learn)."""

    zero_shot: ClassVar[bool] = True
    paper = "zero-shot, training-free (docs/zero-shot.md)"
    # what its preparation reads, within the zero-shot protocol (training.zero_shot): nothing, the training
    # images ("images") or their captions ("captions")
    reads: ClassVar[str] = ""
    projections: ClassVar[bool] = False  # the fixed maps below instead

    def build_layers(self, aligned: str | None = None) -> None:
        if self.image_head != "pooled":
            raise ValueError(f"{self.name} learns nothing, so it takes no image head (image_head: pooled)")
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


@fusion_methods.register("zs_product")
class ZeroShotProduct(ZeroShot, Sum):
    """The product of the two similarities, done as a re-scoring: the first stage ranks by ``L2(r + t)`` (``zs_sum``),
    then its best ``candidates`` (100) are re-scored by ``max(r.g, 0) max(t.g, 0)`` (``index.scoring.ProductScoring``):
    a result must be like the reference *and* match the text."""

    name = "zs_product"

    def build_layers(self, aligned: str | None = None, candidates: int = 100) -> None:
        super().build_layers(aligned)
        if int(candidates) < 1:
            raise ValueError(f"candidates must be at least 1, got {candidates}")
        self.candidates = int(candidates)

    def score_parts(self, reference: Views, text: Views) -> torch.Tensor:
        return torch.stack(self.vectors(reference, text), dim=1)


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


# -- methods that read the text together with the reference ----------------------------------------------------------
def caption_words(text: str) -> list[str]:
    """A text's words, lower case (hyphenated words kept whole: "medium-light")."""
    return re.findall(r"[a-z0-9][a-z0-9'\-]*", text.lower())


REMOVE_WORDS = frozenset("remove delete drop without no take erase".split())
EDIT_WORDS = FUNCTION_WORDS | frozenset("instead version add put swap set into".split())


def edit_caption(caption: str, text: str, similar, threshold: float = 0.4) -> str:
    """The reference's caption edited by the modification text, without a language model: each content word of the
    text (function and instruction words dropped) replaces the caption's word most like it (``similar(words, words)``:
    a matrix of cosines) where that cosine reaches ``threshold`` (0.4: chosen on EmojiEdit's validation split), and
    is added at the end otherwise; after a word of removal ("remove", "without"...) the words it names are deleted
    from the caption instead. "woman cook" with "as a man
    instead" gives "man cook"; "raised hand" with "give it a dark skin tone" gives "raised hand dark skin tone"."""
    words = caption_words(caption)
    asked = caption_words(text)
    removing = any(w in REMOVE_WORDS for w in asked)
    content = [w for w in asked if w not in EDIT_WORDS and w not in REMOVE_WORDS]
    if not content:
        return caption
    if removing:
        gone = set(content)
        return " ".join(w for w in words if w not in gone) or caption
    out = list(words)
    sims = similar(content, words) if words else None
    for n, w in enumerate(content):
        if w in out:
            continue
        best = int(sims[n].argmax()) if sims is not None else -1
        if best >= 0 and float(sims[n, best]) >= threshold and words[best] in out and words[best] not in content:
            out[out.index(words[best])] = w
        else:
            out.append(w)
    return " ".join(out)


@fusion_methods.register("zs_text_shift")
class ZeroShotTextShift(ZeroShot):
    """The text-shift proxy: ``q = L2(r + scale (t(edited caption) - t(caption)))``. The reference's caption is the
    nearest caption of a bank, the training images' captions (what the zero-shot protocol lets a run read), in the
    aligned space (a retrieval captioner); the edited caption comes from :func:`edit_caption`, no language model.
    ``scale``: the shift's weight (1); ``substitute``: the word cosine at which a word of the text replaces one of the
    caption's (:func:`edit_caption`)."""

    name = "zs_text_shift"
    paper = "text-shift proxy: zero-shot, training-free, a retrieval captioner over the training captions"
    reads: ClassVar[str] = "captions"

    def build_layers(self, aligned: str | None = None, scale: float = 1.0, substitute: float = 0.4) -> None:
        super().build_layers(aligned)
        self.scale, self.substitute = float(scale), share("substitute", substitute)
        self._words: dict[str, torch.Tensor] = {}
        self._words_of = None
        self.register_buffer("bank_vectors", torch.zeros(0, self.embed_dim))
        self.bank: list[str] = []  # the captions of bank_vectors' rows, kept in the checkpoint's extra state

    def set_bank(self, captions: Sequence[str], pooled: torch.Tensor) -> None:
        """The method's preparation (``training.zero_shot``): fill the caption bank with the training captions and
        their encoder vectors (mapped into the aligned space here)."""
        self.bank_vectors = self.project_text(pooled).detach()
        self.bank = list(captions)

    def get_extra_state(self) -> dict:
        return {"captions": list(self.bank)}

    def set_extra_state(self, state: dict) -> None:
        self.bank = list(state["captions"])

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        if prefix + "bank_vectors" in state_dict:  # the bank's size is data, not config
            self.bank_vectors = torch.empty_like(state_dict[prefix + "bank_vectors"])
        old = state_dict.pop(prefix + "bank_bytes", None)  # before the extra state, the captions rode as UTF-8 bytes
        if old is not None and prefix + "_extra_state" not in state_dict:
            text = bytes(old.tolist()).decode()
            state_dict[prefix + "_extra_state"] = {"captions": text.split("\n") if text else []}
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def captions(self, r: torch.Tensor) -> tuple[list[str], torch.Tensor]:
        """The bank's nearest caption to each unit vector, and that caption's vector."""
        if not len(self.bank_vectors):
            raise CirlabError(f"{self.name} captions the reference from a bank of captions, and this model has none: "
                              f"assemble it on a data set with captions ('cirlab train --method {self.name} --data D')")
        best = (r @ self.bank_vectors.T).argmax(dim=-1)
        bank = self.bank
        return [bank[i] for i in best.tolist()], self.bank_vectors[best]

    def query_texts(self, reference: Views, texts: Sequence[str], text_encoder) -> Views:
        """The text views here are the shift itself, ``t(edited caption) - t(caption)``, in the aligned space."""
        r = self.embed_image(reference)
        captions, vectors = self.captions(r)
        if len(self._words) > 50_000 or self._words_of is not text_encoder:  # the words' vectors, kept between queries
            self._words, self._words_of = {}, text_encoder
        similar = word_similarity(text_encoder, [*captions, *texts], self._words)
        edited = [edit_caption(c, t, similar, self.substitute) for c, t in zip(captions, texts)]
        pooled = torch.as_tensor(text_encoder.encode_texts(edited, ("pooled",))["pooled"]).to(r.device)
        return {"pooled": self.project_text(pooled) - vectors}

    def compose(self, reference: Views, text: Views) -> torch.Tensor:
        return F.normalize(self.embed_image(reference) + self.scale * text["pooled"].float(), dim=-1)


def word_similarity(text_encoder, texts: Sequence[str], known: dict[str, torch.Tensor] | None = None):
    """Cosines between the single words of ``texts`` under the text encoder (for :func:`edit_caption`); the words not
    in ``known`` (word -> unit vector, filled here) are encoded at once."""
    known = {} if known is None else known
    new = sorted({w for x in texts for w in caption_words(x)} - set(known))
    if new:
        vectors = F.normalize(torch.as_tensor(text_encoder.encode_texts(new, ("pooled",))["pooled"]).float(), dim=-1)
        known.update(zip(new, vectors))

    def similar(a: list[str], b: list[str]) -> torch.Tensor:
        return torch.stack([known[w] for w in a]) @ torch.stack([known[w] for w in b]).T
    return similar


class PseudoWord(ZeroShot):
    """A method that reads the text through a pseudo-word for the reference: the text encoder reads ``prompt`` with
    the word embedding of its ``$`` replaced by a vector made from the reference (:meth:`pseudo_words`), and the
    query is that prompt's vector in the aligned space."""

    prompt: ClassVar[str] = "a photo of $, {text}"

    def pseudo_words(self, reference: Views, text_encoder) -> torch.Tensor:
        """One vector a reference, as wide as the text encoder's word embeddings."""
        raise NotImplementedError

    def query_texts(self, reference: Views, texts: Sequence[str], text_encoder) -> Views:
        tokens = self.pseudo_words(reference, text_encoder)
        prompts = [self.prompt.format(text=t.replace(PSEUDO_WORD, " ").strip()) for t in texts]
        return {"pooled": text_encoder.encode_with_words(prompts, tokens).float()}

    def compose(self, reference: Views, text: Views) -> torch.Tensor:
        return self.project_text(text["pooled"])


@dataclass
class PseudoWordTask:
    """What a mapped pseudo-word learns from: ``mapping(inputs (+ noise))`` read in ``prompts`` must land on
    ``targets`` among the batch's (InfoNCE), all in the aligned space."""

    inputs: torch.Tensor
    targets: torch.Tensor
    prompts: list[str]
    noise: float = 0.0


class MappedPseudoWord(PseudoWord):
    """The pseudo-word is ``mapping(r)``: a small network from the aligned space to the text encoder's word
    embeddings, trained without a triplet (``training.zero_shot``)."""

    def build_layers(self, aligned: str | None = None, hidden_dim: int = 512, dropout: float = 0.1) -> None:
        # The published mappings were drawn after two learned projections that a zero-shot method no longer builds:
        # drawing two layers of their shapes first (and keeping none) gives each seed its published initial mapping.
        nn.Linear(self.dims.image, self.embed_dim), nn.Linear(self.dims.text, self.embed_dim)
        super().build_layers(aligned)
        self.mapping = mlp([self.embed_dim, hidden_dim, hidden_dim, self.dims.text_token], dropout=dropout)

    def pseudo_words(self, reference: Views, text_encoder) -> torch.Tensor:
        if text_encoder.word_dim != self.dims.text_token:
            raise CirlabError(f"{self.name} was trained for word embeddings {self.dims.text_token} wide, and "
                              f"{text_encoder.spec}'s are {text_encoder.word_dim}: use the text encoder it was trained on")
        return self.mapping(self.embed_image(reference))

    def task(self, image_views: Views, captions: list[str], caption_pooled: torch.Tensor) -> PseudoWordTask:
        raise NotImplementedError


@fusion_methods.register("pic2word")
class Pic2Word(MappedPseudoWord):
    """Pic2Word (Saito et al., CVPR 2023): the mapping is trained on unlabelled images alone, so that the text
    encoder's "a photo of $" with ``$ = mapping(r)`` lands on ``r`` among the batch's images (InfoNCE).
    Query: "a photo of $, {text}"."""

    name = "pic2word"
    paper = "Pic2Word (Saito et al., CVPR 2023): zero-shot, a mapping trained on unlabelled images"
    reads: ClassVar[str] = "images"

    def task(self, image_views: Views, captions: list[str], caption_pooled: torch.Tensor) -> PseudoWordTask:
        r = self.embed_image(image_views)
        return PseudoWordTask(r, r, ["a photo of $"] * len(r))


@fusion_methods.register("lincir")
class LinCIR(MappedPseudoWord):
    """LinCIR (Gu et al., CVPR 2024): the mapping is trained on captions alone, by self-masking projection: a
    caption's content words are replaced by ``$ = mapping(t + noise)``, and that masked caption must land on the
    caption's own ``t`` among the batch's (InfoNCE). The noise (``noise``: its norm against the unit vector) stands
    for the gap between a text's and an image's vector, since the mapping reads ``r`` at query time.
    Query: "a photo of $ that {text}"."""

    name = "lincir"
    paper = "LinCIR (Gu et al., CVPR 2024): zero-shot, a mapping trained on captions alone"
    reads: ClassVar[str] = "captions"
    prompt: ClassVar[str] = "a photo of $ that {text}"

    def build_layers(self, aligned: str | None = None, hidden_dim: int = 512, dropout: float = 0.1,
                     noise: float = 0.5) -> None:
        super().build_layers(aligned, hidden_dim, dropout)
        self.noise = float(noise)

    def task(self, image_views: Views, captions: list[str], caption_pooled: torch.Tensor) -> PseudoWordTask:
        masked = [masked_caption(c) for c in captions]
        keep = [n for n, m in enumerate(masked) if PSEUDO_WORD in m]
        t = self.project_text(caption_pooled[keep])
        return PseudoWordTask(t, t, [masked[n] for n in keep], self.noise)


def masked_caption(caption: str) -> str:
    """LinCIR's self-masking: each run of content words (function words kept) becomes one ``$``."""
    out: list[str] = []
    for w in caption_words(caption):
        if w in FUNCTION_WORDS:
            out.append(w)
        elif not out or out[-1] != PSEUDO_WORD:
            out.append(PSEUDO_WORD)
    return " ".join(out)


@fusion_methods.register("zs_oti")
class OptimisedPseudoWord(PseudoWord):
    """Per-query textual inversion (SEARLE's OTI, Baldrati et al., ICCV 2023): for each reference, the pseudo-word
    is optimised from the mean word embedding, ``steps`` AdamW steps at ``lr``, so that the text encoder's
    "a photo of $" lands on ``r`` (cosine loss); nothing is learned ahead. Query: "a photo of $ that {text}". Its
    latency is the steps' (benchmarks/results/zero_shot/zero-shot-latency.md)."""

    name = "zs_oti"
    paper = "SEARLE's OTI (Baldrati et al., ICCV 2023): zero-shot, per-query textual inversion"
    prompt: ClassVar[str] = "a photo of $ that {text}"

    def build_layers(self, aligned: str | None = None, steps: int = 20, lr: float = 0.02) -> None:
        super().build_layers(aligned)
        if not 1 <= int(steps) <= 1000:
            raise ValueError(f"steps must be within [1, 1000], got {steps}")
        self.steps, self.lr = int(steps), float(lr)

    def pseudo_words(self, reference: Views, text_encoder) -> torch.Tensor:
        r = self.embed_image(reference)
        start = text_encoder.word_embeddings.weight.detach().float().mean(0)
        with torch.inference_mode(False), torch.enable_grad():
            target = r.detach().clone()
            tokens = start.clone().to(target.device).expand(len(target), -1).clone().requires_grad_(True)
            opt = torch.optim.AdamW([tokens], lr=self.lr, weight_decay=0.0)
            prompts = ["a photo of $"] * len(target)
            for _ in range(self.steps):
                u = self.project_text(text_encoder.pooled_with_grad(prompts, tokens))
                loss = (1 - (u * target).sum(-1)).sum()  # each query's own loss: the sum keeps them apart
                opt.zero_grad()
                loss.backward()
                opt.step()
        return tokens.detach()
