"""DQU-CIR's query unification on a data set and on a single query (the raw-data level step
before the encoders): captions, drawn keywords, and their cached features."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from cirlab.data.features import FeatureTable, QuerySide
from cirlab.data.triplets import Triplet
from cirlab.encoders.cache import FeatureCache
from cirlab.encoders.precision import cache_id
from cirlab.encoders.runtime import runtime_name
from cirlab.errors import CirlabError
from cirlab.fusion.dqu import DQU, DRAW_VERSION, draw_keywords, keywords, unified_text
from cirlab.images import load_image


def _file_key(path: Path) -> str:
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()[:16]


def triplet_keywords(t: Triplet) -> str:
    """Keywords of a triplet: the data set's own (``attributes.keywords``) or extracted from its text."""
    given = t.attributes.get("keywords") if isinstance(t.attributes, dict) else None
    if isinstance(given, list):
        given = " ".join(map(str, given))
    return str(given) if given else keywords(t.text)


def fit_captioner(model: DQU, cache: FeatureCache, text_encoder, images: FeatureTable, captions: dict[str, str],
                  train_ids: list[str], progress: bool = True, image_encoder=None) -> None:
    """Fit the retrieval captioner on the training images that have captions: a ridge map, or the aligned
    projections of the stage-1 model named by ``model.captioner_model`` (same encoders required)."""
    ids = [i for i in train_ids if captions.get(i) and i in images.row]
    if len(ids) < 2:
        return
    phrases = sorted({captions[i] for i in ids})
    vec = cache.text_features(text_encoder, phrases, ("pooled",), progress=progress)["pooled"]
    if model.captioner_model:
        from cirlab.checkpoint import is_aligned, load_checkpoint, stage1_model_path

        if image_encoder is None:
            raise CirlabError("dqu's aligned captioner needs the image encoder the features come from")
        path = stage1_model_path(model.captioner_model)
        aligned, meta = load_checkpoint(path, image_encoder, text_encoder)  # refused unless the same encoders
        if not is_aligned(meta):
            raise CirlabError(f"{path}: dqu's aligned captioner needs a stage-1 model trained on image-caption "
                              "retrieval ('cirlab train --stage 1 --stage1-config align')")
        with torch.no_grad():
            phrase_vectors = aligned.project_text(torch.from_numpy(vec).float())
        model.set_aligned_captioner(aligned.image_proj, phrase_vectors, phrases)
        return
    row = {p: n for n, p in enumerate(phrases)}
    model.fit_captioner(images.views["pooled"][images.rows(ids)], vec[[row[captions[i]] for i in ids]], phrases, vec)


def unify_queries(model: DQU, cache: FeatureCache, image_encoder, text_encoder, images: FeatureTable,
                  paths: dict[str, Path], captions: dict[str, str], triplets: list[Triplet],
                  progress: bool = True) -> QuerySide:
    """Query tables of DQU: unified texts and drawn references, cached per (image, keywords)."""
    usable = [t for t in triplets if t.reference in images.row]
    need_visual, need_textual = model.unify != "textual", model.unify != "visual"
    image_key: dict[tuple[str, str], str] = {}
    drawn_table = images
    if need_visual:
        file_key = {r: _file_key(paths[r]) for r in sorted({t.reference for t in usable})}
        draw_of: dict[str, tuple[str, str]] = {}
        for t in usable:
            kw = triplet_keywords(t)
            key = f"{file_key[t.reference]}\t{kw}"
            image_key[(t.reference, t.text)] = key
            draw_of[key] = (t.reference, kw)

        def encode(keys: list[str], views: tuple[str, ...]) -> dict[str, np.ndarray]:
            drawn = [draw_keywords(load_image(paths[draw_of[k][0]]), draw_of[k][1], image_encoder.size) for k in keys]
            return image_encoder.encode_images(drawn, views)

        keys = sorted(draw_of)
        views = cache.keyed_features(f"{cache_id(image_encoder)}+drawn{DRAW_VERSION}", keys, model.image_views, encode,
                                     batch_size=32, progress=progress, desc="drawing keywords",
                                     runtime=runtime_name(image_encoder))
        drawn_table = FeatureTable(keys, views)
    text_key: dict[tuple[str, str], str] = {}
    if need_textual:
        missing = [t.reference for t in usable if model.captions == "captioner" or not captions.get(t.reference)]
        generated = dict(zip(missing, model.caption(images.views["pooled"][images.rows(missing)]))) if missing else {}
        for t in usable:
            text_key[(t.reference, t.text)] = unified_text(generated.get(t.reference) or captions.get(t.reference, ""), t.text)
    else:
        text_key = {(t.reference, t.text): t.text for t in usable}
    texts = sorted(set(text_key.values()))
    text_table = FeatureTable(texts, cache.text_features(text_encoder, texts, model.text_views, progress=progress))
    keys_map = {q: (image_key.get(q, q[0]), text_key[q]) for q in text_key}
    return QuerySide(drawn_table, text_table, keys_map)
