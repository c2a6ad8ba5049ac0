"""Evaluate a trained pipeline on a loaded benchmark split under that benchmark's protocol, and
write CIRR's and CIRCO's test-server submission files.

The features come from the same cache and encoders as everywhere else; the fusion composes the
queries in batches; the ranking is exact over the split's gallery (reference removed where the
protocol says so). CIRR's Recall_subset@K ranks each query's image set by the same scores.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from cirlab.data.circo import load_circo
from cirlab.data.cirr import load_cirr
from cirlab.data.fashion200k import load_fashion200k
from cirlab.data.fashioniq import FASHIONIQ_CATEGORIES, load_fashioniq
from cirlab.data.features import QuerySide, image_table, text_table
from cirlab.data.public import BenchmarkSplit
from cirlab.data.shoes import load_shoes
from cirlab.data.triplets import Gallery, Triplet
from cirlab.errors import CirlabError
from cirlab.eval.audit import ModalityAudit, audit_report, blank_queries, modality_audit
from cirlab.eval.evaluate import (compose_queries, embed_gallery, gallery_index, query_rescoring, ranked, ranked_ids,
                                  references, written_queries)
from cirlab.eval.metrics import map_where_several, recall_at_k, recall_curve, recall_subset_at_k
from cirlab.files import atomic_write_text

CIRR_VERSION = "rc2"


@dataclass
class BenchmarkResult:
    name: str
    metrics: dict[str, float]
    queries: int
    gallery: int
    skipped: int
    ranked: list[list[str]] = field(repr=False, default_factory=list)  # top 50 per evaluated query
    scores: np.ndarray | None = field(repr=False, default=None)
    subset_ranked: list[list[str]] = field(repr=False, default_factory=list)  # CIRR: the image set, best first
    evaluated: list = field(repr=False, default_factory=list)  # the BenchmarkQuery of each ranking
    curve: list[float] = field(repr=False, default_factory=list)  # Recall@K for K = 1..keep
    audit: ModalityAudit | None = field(repr=False, default=None)  # of the queries with targets (eval.audit)
    audited: list = field(repr=False, default_factory=list)  # those queries

    def to_dict(self) -> dict:
        return {"name": self.name, "metrics": self.metrics, "queries": self.queries, "gallery": self.gallery,
                "skipped": self.skipped, **({"audit": audit_report(self.audit, self.audited)} if self.audit else {})}


@torch.inference_mode()
def evaluate_benchmark(pipe, split: BenchmarkSplit, keep: int = 50, progress: bool = True) -> BenchmarkResult:
    """Rank ``split.gallery`` for every query; metrics where the split has targets."""
    model = pipe.model
    if model.reads_raw_queries:
        raise CirlabError("dqu needs its unified queries, built from a data set's image captions: make the benchmark "
                          "a data set ('cirlab data make NAME --annotations A --images I --captions C --out D') "
                          "and run 'cirlab eval --data D'")
    ids = sorted(set(split.gallery) | {q.reference for q in split.queries})
    views = tuple(sorted(set(model.image_views) | set(model.gallery_views)))
    images, failed = image_table(pipe.cache, pipe.image_encoder, Gallery(ids, [split.paths[i] for i in ids]), views,
                                 progress)
    gallery = [g for g in split.gallery if g in images.row]
    usable = [q for q in split.queries if q.reference in images.row]
    if model.writes_query_texts:  # the method reads each text with its reference
        side = written_queries(model, images, pipe.text_encoder, [(q.reference, q.text) for q in usable], progress)
    else:
        side = QuerySide(images, text_table(pipe.cache, pipe.text_encoder, [q.text for q in split.queries],
                                            model.text_views, progress))
    triplets = [Triplet(q.reference, q.text, q.targets) for q in usable]
    query_vectors = compose_queries(model, side, triplets)
    gallery_vectors = embed_gallery(model, images, gallery)
    pos = {g: i for i, g in enumerate(gallery)}
    top, scores = ranked(gallery_index(gallery_vectors, gallery), query_vectors, max(keep, *split.ks),
                         references(triplets, split.exclude_reference), query_rescoring(model, side, triplets))
    answers = ranked_ids(top, scores, gallery)
    metrics: dict[str, float] = {}
    scored = [i for i, q in enumerate(usable) if q.targets]
    if scored:
        first = split.protocol.get("recall") == "target"  # CIRCO: Recall@K counts the target, not every ground truth
        rec = recall_at_k(top[scored], [[pos[t] for t in usable[i].targets[:1 if first else None] if t in pos]
                                        for i in scored], split.ks)
        metrics.update({f"R@{k}": v for k, v in rec.items()})
        scored_ranked = [answers[i] for i in scored]
        scored_targets = [usable[i].targets for i in scored]
        curve = recall_curve(scored_ranked, scored_targets, keep)
        # several ground truths: CIRCO-style mAP@K too
        metrics.update({f"mAP@{k}": v for k, v in map_where_several(scored_ranked, scored_targets).items()})
        audited = [triplets[i] for i in scored]  # the modality audit, by the same model
        blank = blank_queries(model, side, audited, pipe.text_encoder, progress=progress)
        audit = modality_audit(model, audited, images, blank, gallery_vectors, gallery, scored_ranked,
                               split.exclude_reference, keep)
    else:
        curve, audit, audited = [], None, []
    subset_ranked = []
    if usable and usable[0].members is not None:  # CIRR: rank each image set by the same scores
        for q, vec in zip(usable, query_vectors):
            members = [m for m in q.members if m != q.reference and m in pos]
            sims = gallery_vectors[[pos[m] for m in members]] @ vec if members else np.zeros(0)
            subset_ranked.append([members[j] for j in np.argsort(-sims, kind="stable")])
        if scored:
            sub = recall_subset_at_k([subset_ranked[i] for i in scored], [usable[i].members for i in scored],
                                     [usable[i].reference for i in scored], [usable[i].targets for i in scored])
            metrics.update({f"Rsubset@{k}": v for k, v in sub.items()})
            metrics["(R@5+Rsubset@1)/2"] = (metrics["R@5"] + metrics["Rsubset@1"]) / 2
    return BenchmarkResult(split.name, metrics, len(usable), len(gallery), split.skipped + len(split.queries) - len(usable),
                           answers, scores, subset_ranked, usable, curve, audit, [usable[i] for i in scored])


def cirr_submission(result: BenchmarkResult, out_dir: str | Path, prefix: str = "cirr-test1") -> tuple[Path, Path]:
    """CIRR's two submission files: top 50 per ``pair_id`` for ``recall``, top 3 of the image set for
    ``recall_subset``, each with the ``version`` and ``metric`` fields the evaluation server reads."""
    if not result.subset_ranked or any(q.pair_id is None for q in result.evaluated):
        raise CirlabError("a CIRR submission needs a CIRR split (pair ids and image sets)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    recall = {"version": CIRR_VERSION, "metric": "recall"}
    subset = {"version": CIRR_VERSION, "metric": "recall_subset"}
    for q, top, sub in zip(result.evaluated, result.ranked, result.subset_ranked):
        recall[str(q.pair_id)] = top[:50]
        subset[str(q.pair_id)] = sub[:3]
    paths = out_dir / f"{prefix}-recall.json", out_dir / f"{prefix}-recall_subset.json"
    atomic_write_text(paths[0], json.dumps(recall))
    atomic_write_text(paths[1], json.dumps(subset))
    return paths


def circo_submission(result: BenchmarkResult, out_dir: str | Path) -> Path:
    """CIRCO's submission file for the authors' server: ``{query id: [top 50 image ids]}`` for every query of the
    split (ids as integers, as the server reads them). Refused where a query was skipped: the server needs all."""
    if not result.name.startswith("circo-") or any(q.pair_id is None for q in result.evaluated):
        raise CirlabError("a CIRCO submission needs a CIRCO split (its query ids)")
    if result.skipped:
        raise CirlabError(f"{result.skipped} {result.name} queries were skipped for missing images, and the server "
                          "needs every query: bring the missing images (listed in the -missing.txt file) and rerun")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{result.name}-submission.json"
    atomic_write_text(path, json.dumps({str(q.pair_id): [int(i) for i in top[:50]]
                                        for q, top in zip(result.evaluated, result.ranked)}))
    return path


def load_benchmark(benchmark: str, annotations: str | Path, images: str | Path, split: str | None = None,
                   category: str | None = None, fiq_gallery: str = "original", join: str = "and",
                   spelling: str | Path | None = None) -> list[BenchmarkSplit]:
    """The evaluation splits of a public benchmark from its published files: FashionIQ's categories (one,
    or all three), CIRR's val or test1, CIRCO's val or test, Shoes' test, Fashion200K's test."""
    if benchmark == "fashioniq":
        cats = [category] if category else list(FASHIONIQ_CATEGORIES)
        return [load_fashioniq(annotations, images, c, split or "val", fiq_gallery, join, spelling) for c in cats]
    if benchmark == "cirr":
        return [load_cirr(annotations, images, split or "val")]
    if benchmark == "circo":
        return [load_circo(annotations, images, split or "val")]
    if benchmark == "fashion200k":
        return [load_fashion200k(annotations, images, split or "test")]
    if benchmark == "shoes":
        return [load_shoes(annotations, images, spelling)]
    raise CirlabError(f"unknown benchmark {benchmark!r}; choose fashioniq, cirr, circo, shoes or fashion200k")


def benchmark_table(results: list[BenchmarkResult]) -> str:
    """The splits' metrics as a Markdown table, with their average where there are several (FashionIQ)."""
    keys = list(dict.fromkeys(k for r in results for k in r.metrics))
    rows = [[r.name] + [f"{r.metrics[k]:.2f}" for k in keys] for r in results if r.metrics]
    if len(rows) > 1:
        rows.append(["average"] + [f"{np.mean([r.metrics[k] for r in results]):.2f}" for k in keys])
    if not rows:
        return ""
    return ("| split | " + " | ".join(keys) + " |\n|---|" + "---:|" * len(keys) + "\n"
            + "\n".join("| " + " | ".join(r) + " |" for r in rows))
