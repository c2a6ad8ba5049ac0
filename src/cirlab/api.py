"""The small public surface: load a trained pipeline, encode a gallery, compose and search.

    from cirlab.api import Pipeline
    pipe = Pipeline.load()                       # the default model (``make demo`` trains it)
    gallery = pipe.encode_gallery("photos/")     # cached on disk, reused next time
    hits = pipe.search(gallery, "photos/dress.jpg", "same dress but red", k=10)
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from cirlab import settings
from cirlab.checkpoint import (check_zero_shot, encoder_record, encoder_spec, is_aligned, load_checkpoint, read_checkpoint,
                               zero_shot_fusion)
from cirlab.data.features import image_table
from cirlab.data.triplets import Gallery
from cirlab.devices import Placement, module_device, placed, precision_name, to_device
from cirlab.encoders import build_image_encoder, build_text_encoder
from cirlab.encoders.base import as_tensors
from cirlab.encoders.cache import FeatureCache
from cirlab.encoders.runtime import check_int8_gallery
from cirlab.errors import CirlabError
from cirlab.fusion import Fusion
from cirlab.fusion.text_head import head_from_state
from cirlab.images import UnreadableImage, load_image
from cirlab.index import BaseIndex, CombinedScoring, build_index, check_filter
from cirlab.index.scoring import ProductScoring
from cirlab.index.metadata import attach
from cirlab.index.search import Hit, file_ids, hits, search

MAX_TEXT_CHARS = 1000
TEXT_CACHE = 4096  # texts whose encoder outputs a pipeline keeps in memory


# blank: the characters str.strip() removes (those of str.isspace), spelled out as \uXXXX so that a regex means the
# same in Python, in Rust (pydantic) and in ECMAScript (JSON Schema), whose \s differ (U+0085, U+FEFF)
BLANK = r"\u0009-\u000d\u001c-\u0020\u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"  # a class's inside
SAYS_SOMETHING = f"[^{BLANK}]"  # a pattern: the text holds a character that is not blank


def check_text(text: str | None, limit: int = MAX_TEXT_CHARS) -> str:
    """A modification text must say something and stay within ``limit`` characters."""
    text = (text or "").strip()
    if not text:
        raise CirlabError('the modification text is empty; say how the target differs, e.g. "make it red"')
    if len(text) > limit:
        raise CirlabError(f"the modification text has {len(text)} characters; the limit is {limit}: shorten it")
    return text


@dataclass
class GalleryVectors:
    """A gallery embedded by a pipeline: ids, files, unit vectors, and the files that failed."""

    ids: list[str]
    paths: list[Path]
    vectors: np.ndarray
    failed: list[tuple[str, str]] = field(default_factory=list)

    def metadata(self, records: dict[str, dict] | None = None, root: str | Path | None = None) -> list[dict]:
        """What an index stores per image: its file, and its record from ``records`` where one matches
        (:func:`cirlab.index.metadata.attach`; ``root``: the gallery folder the records' paths are relative to)."""
        extra = attach(self.ids, self.paths, records, root) if records else [{} for _ in self.ids]
        return [{**e, "path": str(Path(p).resolve())} for p, e in zip(self.paths, extra)]

    def to_index(self, backend: str = "exact", records: dict[str, dict] | None = None,
                 root: str | Path | None = None) -> BaseIndex:
        """These vectors in a new in-memory index (``exact``: what a folder search ranks through), each row with
        its file and its record from ``records`` (:meth:`metadata`)."""
        index = build_index(backend, self.vectors.shape[1])
        if self.ids:
            index.add(self.ids, self.vectors, self.metadata(records, root))
        return index


@dataclass
class Query:
    """One query: a reference (an image, a file, or None for a text-only search) and a modification text
    (None for images like the reference)."""

    image: str | Path | Image.Image | None
    text: str | None


def _stack(rows: Sequence[dict[str, torch.Tensor]], views: Sequence[str]) -> dict[str, torch.Tensor]:
    return {v: torch.stack([r[v] for r in rows]) for v in views}


def _place(out: list, where: Sequence[int], vectors: torch.Tensor) -> list:
    rows = dict(zip(where, vectors.cpu().numpy()))
    return [rows.get(n, o) for n, o in enumerate(out)]


class Pipeline:
    """Encoders + a trained fusion method + the feature cache, placed by one :class:`Placement`."""

    def __init__(self, model: Fusion, meta: dict, image_encoder, text_encoder, cache: FeatureCache,
                 path: str | Path | None = None, text_head=None, placement: Placement | None = None) -> None:
        self.model, self.meta = model, meta
        self.device = module_device(model)
        self.placement = placement or Placement(self.device, getattr(image_encoder, "runtime", "torch"))
        self.text_head = text_head  # fusion.text_head.TextHead: text-only queries into the gallery space
        self.image_encoder, self.text_encoder = image_encoder, text_encoder
        self.cache = cache
        self.path = Path(path) if path else None
        self._identity: dict | None = None
        self._texts: OrderedDict[tuple[str, tuple[str, ...]], dict[str, np.ndarray]] = OrderedDict()
        # spelling correction of query texts (data.spelling): on where the checkpoint records its training words
        self.spelling = bool(meta.get("vocabulary")) and importlib.util.find_spec("spellchecker") is not None
        self._speller = None

    def spell(self, text: str | None) -> tuple[str | None, list[dict]]:
        """A query's text with the words known neither to the model nor to English corrected, and what changed
        (``[{"from", "to"}]``); the text as given where :attr:`spelling` is off. A word the model knows is never
        touched, so a text in the training phrasing is searched as typed."""
        if not self.spelling or not text:
            return text, []
        if self._speller is None:
            from cirlab.data.spelling import Speller

            self._speller = Speller(self.meta.get("vocabulary") or (), self.meta.get("word_pairs"))
        return self._speller.correct(text)

    @property
    def identity(self) -> dict:
        """What an index built by this pipeline records: the fusion (method + checkpoint hash), the encoders, and the
        precision its image vectors are made in (``fp32``, ``int8``, ``bf16``; an index holds one kind)."""
        if self._identity is None:
            if self.path:
                digest = hashlib.sha1(self.path.read_bytes()).hexdigest()[:12]
            elif self.meta.get("zero_shot"):  # no file: the method and its config are the whole model
                digest = "zero-shot-" + hashlib.sha1(json.dumps(self.meta["model_config"], sort_keys=True).encode()
                                                     ).hexdigest()[:12]
            else:
                digest = "unsaved"
            self._identity = {"fusion": f"{self.meta['method']}:{digest}", "image_encoder": self.image_encoder.id,
                              "text_encoder": self.text_encoder.id,
                              "image_vectors": precision_name(getattr(self.image_encoder, "precision", None))}
        return self._identity

    @classmethod
    def load(cls, model_path: str | Path | None = None, cache_dir: str | Path | None = None,
             placement: Placement | None = None, beside: "Pipeline | None" = None) -> "Pipeline":
        """Load a checkpoint and the encoders it was trained on (refused if they differ), placed by ``placement``
        (None: the defaults', :meth:`cirlab.devices.Placement.resolve`: CUDA where there is one). ``beside``: a
        pipeline whose encoders, cache and placement this one shares (a re-ranker's: ``cirlab.rerank``)."""
        placement = beside.placement if beside else placed(placement)
        device = placement.device
        path = Path(model_path) if model_path else settings.default_model_path()
        if model_path is None and not path.is_file():
            raise CirlabError(f"no default model yet at {path}: run 'make demo' (or 'cirlab train') first, or give a model path")
        ckpt = read_checkpoint(path)
        meta = ckpt["meta"]
        if beside:
            image_encoder, text_encoder = beside.image_encoder, beside.text_encoder
        else:
            image_encoder = build_image_encoder(encoder_spec(ckpt, "image"), placement)
            text_encoder = build_text_encoder(encoder_spec(ckpt, "text"), placement)
        model, meta = load_checkpoint(path, image_encoder, text_encoder, ckpt)
        head = None
        if ckpt.get("text_head"):
            try:
                head = head_from_state(ckpt["text_head"])
            except (KeyError, RuntimeError) as e:
                raise CirlabError(f"{path}: its text-to-image head does not load ({type(e).__name__}); retrain") from None
        model.to(device)
        if head is not None:
            head.to(device)
        cache = beside.cache if beside else FeatureCache(cache_dir or settings.cache_dir())
        out = cls(model, meta, image_encoder, text_encoder, cache, path, head, placement)
        if beside:
            out._texts = beside._texts  # one text cache: the same texts, the same encoder
        return out

    @classmethod
    def zero_shot(cls, method: str, image_spec: str, text_spec: str, cache_dir: str | Path | None = None,
                  placement: Placement | None = None, model: dict | None = None) -> "Pipeline":
        """A zero-shot method (``zs_*``) on an aligned pair, with no checkpoint: a CLIP pair (``clip:X`` for both),
        or ``model={"aligned": DIR}``, an aligned stage-1 model on these encoders (docs/zero-shot.md)."""
        check_zero_shot(method, model)  # an unknown method or option is named before any encoder opens
        placement = placed(placement)
        image_encoder = build_image_encoder(image_spec, placement)
        text_encoder = build_text_encoder(text_spec, placement)
        fusion, config = zero_shot_fusion(method, image_encoder, text_encoder, model)
        if fusion.reads:
            raise CirlabError(f"{method} is made from the training {fusion.reads} of a data set, so it needs a checkpoint: "
                              f"'cirlab train --method {method} --data D ...' (no triplet is read), then --model")
        meta = {"method": method, "model_config": config, "zero_shot": True,
                "image_encoder": encoder_record(image_encoder), "text_encoder": encoder_record(text_encoder)}
        return cls(fusion.to(placement.device), meta, image_encoder, text_encoder,
                   FeatureCache(cache_dir or settings.cache_dir()), None, None, placement)

    def _on(self, views: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Views on the model's device."""
        return to_device(views, self.device)

    def encode_gallery(self, gallery: Gallery | str | Path, progress: bool = True) -> GalleryVectors:
        """The gallery vectors of every readable image (through the feature cache); an error if none is readable."""
        if not isinstance(gallery, Gallery):
            gallery = Gallery.from_folder(gallery)
        check_int8_gallery(self.image_encoder, gallery.paths)  # int8 only: parity on this gallery's own images
        vectors = self.gallery_vectors(gallery, progress)
        if not len(vectors.ids):
            raise CirlabError(f"none of the {len(gallery)} gallery images could be read (e.g. {vectors.failed[0][1]})")
        return vectors

    @torch.inference_mode()
    def gallery_vectors(self, gallery: Gallery, progress: bool = True) -> GalleryVectors:
        """:meth:`encode_gallery` that may come back empty (every image unreadable)."""
        table, failed = image_table(self.cache, self.image_encoder, gallery, self.model.gallery_views, progress)
        path_of = dict(zip(gallery.ids, gallery.paths))
        vectors = (self.model.embed_gallery(self._on(table.tensors(np.arange(len(table)), self.model.gallery_views)))
                   .cpu().numpy()
                   if len(table) else np.zeros((0, self.model.embed_dim), np.float32))
        return GalleryVectors(table.keys, [path_of[i] for i in table.keys], vectors, failed)

    @torch.inference_mode()
    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Gallery vectors of decoded images, encoded now (no cache): what a distributed build's workers run."""
        views = self.image_encoder.encode_images(list(images), tuple(sorted(self.model.gallery_views)))
        return self.model.embed_gallery(self._on(as_tensors(views))).cpu().numpy()

    def text_views(self, texts: Sequence[str], views: Sequence[str]) -> dict[str, torch.Tensor]:
        """The views of texts, encoded in one batch; repeated texts (a multi-turn session re-sends them) come
        from a small in-memory cache."""
        views = tuple(sorted(views))
        missing = list(dict.fromkeys(t for t in texts if (t, views) not in self._texts))
        if missing:
            out = self.text_encoder.encode_texts(missing, views)
            for n, t in enumerate(missing):
                self._texts[(t, views)] = {v: out[v][n] for v in views}
        rows = []
        for t in texts:
            self._texts.move_to_end((t, views))
            rows.append(self._texts[(t, views)])
        while len(self._texts) > TEXT_CACHE:
            self._texts.popitem(last=False)
        return as_tensors({v: np.stack([r[v] for r in rows]) for v in views})

    @property
    def text_search(self) -> bool:
        """Whether text-only queries work: a text head, or a stage-1 model trained on image-caption retrieval."""
        return self.text_head is not None or is_aligned(self.meta)

    def compose(self, image: str | Path | Image.Image | None, text: str, parts: dict | None = None) -> np.ndarray:
        """The query vector of (reference image, modification text); with no image, of the text alone
        (a plain text-to-image search through the model's text head). ``parts``: see :meth:`compose_many`."""
        return self._composed(Query(image, check_text(text)), parts)

    def _composed(self, query: "Query", parts: dict | None = None) -> np.ndarray:
        """One checked query's vector (its error raised)."""
        (out,) = self.compose_many([query], parts=parts)
        if isinstance(out, Exception):
            raise out
        return out

    @torch.inference_mode()
    def compose_many(self, queries: Sequence["Query"], timing: dict | None = None,
                     parts: dict | None = None) -> list[np.ndarray | CirlabError]:
        """Query vectors of many queries, in one encoder batch and one fusion call a kind: composed (reference +
        text), text only (``image=None``) and image only (``text=None``: the reference's gallery embedding).
        A query that fails (an unreadable reference file) gets its error in its place; the others are answered.
        ``timing`` (a dict) receives the seconds spent encoding (``encode``) and fusing (``fuse``); ``parts`` (a dict),
        for a method that re-scores its candidates (``Fusion.score_parts``), each composed query's parts by its place."""
        start = time.perf_counter()
        out: list = [self._refused(q) for q in queries]
        if self.model.reads_raw_queries:  # the method makes each query's inputs itself (DQU): one by one
            out = [self._raw(q) if o is None and q.image is not None and q.text is not None else o
                   for q, o in zip(queries, out)]
        views = tuple(sorted(set(self.model.image_views) | set(self.model.gallery_views)))
        refs = self._references([q.image if o is None else None for q, o in zip(queries, out)], views)
        out = [r if isinstance(r, Exception) else o for o, r in zip(out, refs)]
        todo = [n for n, o in enumerate(out) if o is None]
        composed = [n for n in todo if queries[n].image is not None and queries[n].text is not None]
        text_only = [n for n in todo if queries[n].image is None]
        image_only = [n for n in todo if queries[n].text is None]
        reference = self._on(_stack([refs[n] for n in composed], self.model.image_views)) if composed else {}
        if composed and self.model.writes_query_texts:  # the method reads each text with its reference
            text = self._on(self.model.query_texts(reference, [queries[n].text for n in composed], self.text_encoder))
        else:
            text = self._on(self.text_views([queries[n].text for n in composed], self.model.text_views)) if composed \
                else {}
        pooled = self._on(self.text_views([queries[n].text for n in text_only], ("pooled",)))["pooled"] if text_only \
            else None
        encoded = time.perf_counter()
        if composed:
            out = _place(out, composed, self.model(reference, text))
            if parts is not None and self.model.rescores:
                parts.update(zip(composed, self.model.score_parts(reference, text).cpu().numpy()))
        if text_only:
            out = _place(out, text_only, self.model.project_text(pooled) if self.text_head is None else self.text_head(pooled))
        if image_only:
            out = _place(out, image_only, self.model.embed_gallery(self._on(_stack([refs[n] for n in image_only],
                                                                                   self.model.gallery_views))))
        if timing is not None:
            timing["encode"] = timing.get("encode", 0.0) + encoded - start
            timing["fuse"] = timing.get("fuse", 0.0) + time.perf_counter() - encoded
        return out

    def _refused(self, q: "Query") -> CirlabError | None:
        if q.image is None and q.text is None:
            return CirlabError("a query needs a text, a reference image, or both")
        if q.image is None and not self.text_search:
            return CirlabError("this model has no text-to-image head (its training data had no captions): "
                               "give a reference image, or retrain on data with captions")
        return None

    def _raw(self, q: "Query") -> np.ndarray | CirlabError:
        """A query whose inputs the method makes itself from the raw image and text (``Fusion.raw_query_views``;
        DQU draws on the reference and unifies the text with its caption), then composed."""
        try:
            image = q.image
            if not isinstance(image, Image.Image):
                (checked,) = self._references([image], tuple(self.model.image_views))
                if isinstance(checked, Exception):  # a missing or unreadable file: the same one-line error
                    return checked
                image = load_image(image)
            iv, tv = self.model.raw_query_views(image, q.text, self.image_encoder, self.text_encoder)
        except CirlabError as e:
            return e
        return self.model(self._on(iv), self._on(tv))[0].cpu().numpy()

    def _references(self, images: Sequence, views: tuple[str, ...]) -> list:
        """Per query: the reference's views (one row a view), its error, or None where it has no reference.
        Uploaded images are encoded in one batch; files (gallery images) read from the feature cache at once."""
        out: list = [None] * len(images)
        uploads = [n for n, im in enumerate(images) if isinstance(im, Image.Image)]
        files = [n for n, im in enumerate(images) if im is not None and not isinstance(im, Image.Image)]
        if uploads:
            enc = as_tensors(self.image_encoder.encode_images([images[n].convert("RGB") for n in uploads], views))
            for row, n in enumerate(uploads):
                out[n] = {v: enc[v][row] for v in views}
        if files:
            feats = self.cache.image_features(self.image_encoder, [images[n] for n in files], views, progress=False)
            failed = {str(p): why for p, why in feats.failed}
            got = as_tensors(feats.views) if feats.paths else {}
            row = 0
            for n in files:
                path = str(Path(images[n]))
                if path in failed:
                    why = failed[path]
                    out[n] = UnreadableImage(why if path in why else f"reference image {path}: {why}")
                else:
                    out[n] = {v: got[v][row] for v in views}
                    row += 1
        return out

    def search(self, index: BaseIndex | GalleryVectors, image: str | Path | Image.Image | None, text: str,
               k: int = 10, exclude_reference: bool = False, scoring: CombinedScoring | None = None,
               filter: dict | None = None, rerank=None) -> list[Hit]:
        """Top-k of an index (or of a folder's :class:`GalleryVectors`, as an exact index) for the composed query,
        through the one search (:func:`cirlab.index.search.search`), the text's spelling corrected where
        :attr:`spelling` is on (:meth:`spell`): ``exclude_reference`` leaves the reference
        file out, ``scoring`` re-ranks candidates (paper 000's combined score), ``filter`` keeps images whose
        metadata match (``{field: value or [values]}``), ``rerank`` (a ``cirlab.rerank.Reranker``) reorders the
        top candidates by a second model."""
        if isinstance(index, GalleryVectors):
            index = index.to_index()
        if k < 1:
            raise CirlabError(f"-k must be at least 1, got {k}")
        if index.dim != self.model.embed_dim:
            raise CirlabError(f"the index holds {index.dim}-d vectors, this model makes {self.model.embed_dim}-d ones: "
                              "use the model the index was built with")
        check_filter(filter)  # refused before encoding
        if scoring is not None and self.model.rescores:
            raise CirlabError(f"{self.model.name} re-scores its candidates itself: leave --scoring out")
        parts: dict = {}
        asked = Query(image, self.spell(check_text(text))[0])  # checked once, for both models
        query = self._composed(asked, parts)
        skip = file_ids(index, image) if exclude_reference else set()
        # a search the re-ranker cannot compose (text alone, and it has no text head) keeps the first order, as served
        second = rerank.for_query(asked, index) if rerank is not None else None
        (ranked,) = search(index, query[None], k, [skip], filter, scoring or self.rescoring([query], parts), second)
        return hits(index, ranked)

    def rescoring(self, vectors: Sequence[np.ndarray], parts: dict) -> ProductScoring | None:
        """The method's own second stage for these query vectors (``parts`` from :meth:`compose_many`, by place):
        the product of similarities over each composed query's parts, a query without parts kept at its own cosine;
        None for a method that does not re-score (``Fusion.rescores``)."""
        if not self.model.rescores:
            return None
        return ProductScoring([parts.get(n, v[None]) for n, v in enumerate(vectors)], self.model.candidates)
