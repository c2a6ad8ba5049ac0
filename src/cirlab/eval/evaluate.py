"""Evaluate a fusion method on a triplet split: Recall@K over a gallery, reference excluded."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Collection, Sequence

import numpy as np
import torch
from tqdm import tqdm

from cirlab.data.features import FeatureTable, QuerySide
from cirlab.data.triplets import Triplet
from cirlab.devices import module_device, to_device
from cirlab.eval.metrics import DEFAULT_KS, map_where_several, recall_at_k
from cirlab.fusion.base import Fusion
from cirlab.index import build_index
from cirlab.index.base import BaseIndex
from cirlab.index.scoring import ModelScoring, ProductScoring
from cirlab.index.search import search


@dataclass
class Rankings:
    """Top-k gallery ids and scores of each evaluated query, and the recalls they give."""

    triplets: list[Triplet]
    ids: list[list[str]]
    scores: np.ndarray
    recall: dict[int, float]
    skipped: int
    exclude_reference: bool = True
    map: dict[int, float] = field(default_factory=dict)  # mAP@K where some query has several targets
    audit: object | None = None  # the modality audit (eval.audit.ModalityAudit), where the evaluation asked for one


@torch.inference_mode()
def embed_gallery(model: Fusion, images: FeatureTable, gallery_ids: list[str], batch: int = 1024) -> np.ndarray:
    rows, device = images.rows(gallery_ids), module_device(model)
    parts = [model.embed_gallery(to_device(images.tensors(rows[s:s + batch], model.gallery_views), device)).cpu()
             for s in range(0, len(rows), batch)]
    return torch.cat(parts).numpy() if parts else np.zeros((0, model.embed_dim), np.float32)


@torch.inference_mode()
def compose_queries(model: Fusion, queries: QuerySide, triplets: list[Triplet], batch: int = 512,
                    call=None) -> np.ndarray:
    """The query vectors of ``triplets`` (``call(model, reference views, text views)``: another output of the
    model's query side instead, e.g. its ``score_parts``)."""
    keys = [queries.key(t.reference, t.text) for t in triplets]
    ref = queries.images.rows([k[0] for k in keys])
    txt = queries.texts.rows([k[1] for k in keys])
    device = module_device(model)
    call = call or (lambda m, r, t: m(r, t))
    parts = [call(model, to_device(queries.images.tensors(ref[s:s + batch], model.image_views), device),
                  to_device(queries.texts.tensors(txt[s:s + batch], model.text_views), device)).cpu()
             for s in range(0, len(ref), batch)]
    return torch.cat(parts).numpy() if parts else np.zeros((0, model.embed_dim), np.float32)


@torch.inference_mode()
def query_rescoring(model: Fusion, queries: QuerySide, triplets: list[Triplet]) -> ProductScoring | None:
    """The method's own second stage over the triplets' queries (``Fusion.score_parts``), or None."""
    if not model.rescores or not triplets:
        return None
    return ProductScoring(list(compose_queries(model, queries, triplets, call=lambda m, r, t: m.score_parts(r, t))),
                          model.candidates)


def gallery_index(gallery: np.ndarray, gallery_ids: Sequence[str], backend: str | None = None) -> BaseIndex:
    """The evaluated gallery as an in-memory index, row i being ``gallery_ids[i]``: exact cosine search (what a
    folder search ranks through), or through ``backend`` (``knn``, ``kmeans_svm:k=15``...)."""
    index = build_index(backend or "exact", gallery.shape[1])
    if len(gallery_ids):
        index.add(list(gallery_ids), gallery)
    return index


def ranked(index: BaseIndex, queries: np.ndarray, k: int, exclude: Sequence[Collection[str]] | None = None,
           scoring: ProductScoring | None = None, rerank: ModelScoring | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The best ``k`` rows of ``index`` (-1: none) and their scores (-inf there) for each query vector, ranked by the
    one search (:func:`cirlab.index.search.search`) that answers the CLI, the API and the server: ``exclude``, the
    ids left out of each query's answer (its reference); ``scoring``, the method's re-scoring of its candidates;
    ``rerank``, a second model's reordering of them (keys: gallery ids)."""
    top = np.full((len(queries), k), -1, np.int64)
    scores = np.full((len(queries), k), -np.inf, np.float32)
    if len(queries):
        for q, hits in enumerate(search(index, queries, k, exclude, scoring=scoring, rerank=rerank)):
            if hits:
                top[q, :len(hits)] = [index.row_of[i] for i, _ in hits]
                scores[q, :len(hits)] = [s for _, s in hits]
    return top, scores


def references(triplets: Sequence[Triplet], exclude_reference: bool = True) -> list[set[str]] | None:
    """What each query leaves out of its answer: its reference image (nothing without ``exclude_reference``)."""
    return [{t.reference} for t in triplets] if exclude_reference else None


@torch.inference_mode()
def written_queries(model: Fusion, images: FeatureTable, text_encoder, pairs: list[tuple[str, str]],
                    progress: bool = False, batch: int = 128) -> QuerySide:
    """The query side of a method that reads each text with its reference (``Fusion.query_texts``): a text table
    with a row per (reference, text) pair whose reference is encoded, made by the method in batches."""
    todo = sorted({p for p in pairs if p[0] in images.row})
    device = module_device(model)
    views = tuple(sorted(set(model.image_views) | set(model.gallery_views)))
    parts: dict[str, list[np.ndarray]] = {}
    for s in tqdm(range(0, len(todo), batch), desc=f"{model.name}: query texts", disable=not progress or not todo):
        chunk = todo[s:s + batch]
        reference = to_device(images.tensors(images.rows([r for r, _ in chunk]), views), device)
        for name, value in model.query_texts(reference, [t for _, t in chunk], text_encoder).items():
            parts.setdefault(name, []).append(value.float().cpu().numpy())
    keys = [f"{r}\x1f{t}" for r, t in todo]
    texts = FeatureTable(keys, {k: np.concatenate(v) for k, v in parts.items()} if todo
                         else {"pooled": np.zeros((0, model.embed_dim), np.float32)})
    return QuerySide(images, texts, {p: (p[0], k) for p, k in zip(todo, keys)})


def evaluate(model: Fusion, triplets: list[Triplet], images: FeatureTable, queries: QuerySide,
             gallery_ids: list[str], ks=DEFAULT_KS, exclude_reference: bool = True, keep: int = 50,
             backend: str | None = None, gallery: np.ndarray | None = None,
             rerank=None, rerank_queries: QuerySide | None = None) -> Rankings:
    """Rank ``gallery_ids`` (rows of ``images``) for every triplet whose query and a target are encoded.

    Queries whose images are missing (unreadable, or outside the encoded set) are skipped and
    counted. With ``exclude_reference`` the reference image never appears in its own ranking.
    ``backend``: rank through that index backend (``knn``, ``kmeans_svm:k=15``...) instead of exact
    cosine search; a backend that returns fewer than ``keep`` candidates leaves the rest unranked.
    ``gallery``: the model's vectors of ``gallery_ids`` where the caller has them (``eval.audit.evaluate_audited``).
    ``rerank``: a second model (``cirlab.rerank.Reranker``) reorders each query's first candidates, its query side
    ``rerank_queries``.
    """
    model.eval()
    gallery_set = set(gallery_ids)
    usable = [t for t in triplets
              if queries.key(t.reference, t.text) is not None and any(x in gallery_set for x in t.targets)]
    gallery = embed_gallery(model, images, gallery_ids) if gallery is None else gallery
    vectors = compose_queries(model, queries, usable)
    return rank(vectors, gallery, gallery_ids, usable, ks, exclude_reference, keep, backend,
                skipped=len(triplets) - len(usable), scoring=query_rescoring(model, queries, usable),
                rerank=rerank.measured_scoring(rerank_queries, usable, images, gallery_ids) if rerank else None)


def rank(queries: np.ndarray, gallery: np.ndarray, gallery_ids: list[str], triplets: list[Triplet], ks=DEFAULT_KS,
         exclude_reference: bool = True, keep: int = 50, backend: str | None = None, skipped: int = 0,
         scoring: ProductScoring | None = None, rerank: ModelScoring | None = None) -> Rankings:
    """Rankings and Recall@K of query vectors (one per triplet) over gallery vectors, ranked by the one search
    (:func:`ranked`): the part of :func:`evaluate` after the model, shared with stage 1's validation. A triplet
    whose targets are all outside the gallery counts as a miss. ``scoring``: the method's re-scoring of its
    candidates."""
    pos = {g: i for i, g in enumerate(gallery_ids)}
    top, scores = ranked(gallery_index(gallery, gallery_ids, backend), queries, max(max(ks), keep),
                         references(triplets, exclude_reference), scoring, rerank)
    targets = [[pos[x] for x in t.targets if x in pos] for t in triplets]
    ids = ranked_ids(top, scores, gallery_ids)
    return Rankings(triplets, ids, scores, recall_at_k(top, targets, ks), skipped, exclude_reference,
                    map_where_several(ids, [[gallery_ids[j] for j in t] for t in targets]))


def ranked_ids(top: np.ndarray, scores: np.ndarray, gallery_ids: list[str]) -> list[list[str]]:
    """Gallery ids of each top-k row, best first; a place with no result (row -1, score -inf) is dropped."""
    return [[gallery_ids[j] for j, v in zip(row, srow) if np.isfinite(v)] for row, srow in zip(top, scores)]
