"""The modality audit: which queries the reference image alone, or the text alone, already solves, and how a method
does on the rest (the composition subset). docs/evaluation.md#the-modality-audit.

Each query's target is ranked three times by the same model, over the same gallery, the reference excluded as the
protocol says:
- **composed**: the method's query, as evaluated;
- **image only**: the reference's own vector in the model's gallery space (``embed_gallery``): what the reference
  alone finds, the text unread;
- **text only**: the method's query with the reference replaced by the *blank reference*, each view's mean over the
  evaluated queries' references: what the text alone finds, every query given the same uninformative image. A method
  that reads the text with its reference (``Fusion.query_texts``) writes its text with the blank reference too.

The composition subset is the queries that neither single modality solves: the target is not within the first
``solved_at`` (1) of the image-only or of the text-only ranking. The composition gap is the composed R@1 less the
better single modality's R@1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from cirlab.data.features import FeatureTable, QuerySide
from cirlab.data.triplets import Triplet
from cirlab.eval.evaluate import (Rankings, compose_queries, embed_gallery, evaluate, gallery_index, ranked, ranked_ids,
                                  references, written_queries)
from cirlab.eval.metrics import first_hits
from cirlab.fusion.base import Fusion

BLANK = "\x00blank reference"
SOLVED_AT = 1  # a single modality solves a query when the target is its rank 1
AUDIT_KS = (1, 10)
MODALITIES = ("composed", "image", "text")
# the summary's columns, in the order the tables show them
AUDIT_COLUMNS = (*(f"{m} R@{k}" for m in MODALITIES for k in AUDIT_KS), "subset share",
                 *(f"subset R@{k}" for k in AUDIT_KS), "composition gap")


@dataclass
class ModalityAudit:
    """The 0-based rank of each query's first target under each modality (inf: not within the ranked list)."""

    composed: np.ndarray
    image: np.ndarray
    text: np.ndarray
    solved_at: int = SOLVED_AT

    @property
    def subset(self) -> np.ndarray:
        """Which queries make up the composition subset: neither the image alone nor the text alone solves them."""
        return (self.image >= self.solved_at) & (self.text >= self.solved_at)

    def summary(self, ks: Sequence[int] = AUDIT_KS) -> dict[str, float]:
        """R@K (%) of each modality, the composition subset's share of the queries and its composed R@K, and the
        composition gap (composed R@1 - the better single modality's R@1)."""
        out = {f"{m} R@{k}": _recall(getattr(self, m), k) for m in MODALITIES for k in ks}
        sub = self.subset
        out["subset share"] = float(100.0 * sub.mean()) if len(sub) else 0.0
        out.update({f"subset R@{k}": _recall(self.composed[sub], k) for k in ks})
        out["composition gap"] = out[f"composed R@{ks[0]}"] - max(out[f"image R@{ks[0]}"], out[f"text R@{ks[0]}"])
        return out

    def per_query(self) -> list[dict]:
        """Each query's three ranks (1-based; None beyond the ranked list) and whether it is in the subset."""
        def one(x: float) -> int | None:
            return int(x) + 1 if np.isfinite(x) else None
        return [{"composed": one(c), "image": one(i), "text": one(t), "subset": bool(s)}
                for c, i, t, s in zip(self.composed, self.image, self.text, self.subset)]


def _recall(ranks: np.ndarray, k: int) -> float:
    return float(100.0 * np.mean(ranks < k)) if len(ranks) else 0.0


def blank_reference(images: FeatureTable, keys: Sequence[str]) -> FeatureTable:
    """A one-row table, :data:`BLANK`: each view's mean over the rows of ``keys`` (each reference as often as it is
    queried)."""
    rows = images.rows(list(keys))
    views = {name: v[rows].astype(np.float32).mean(0, keepdims=True).astype(v.dtype) if len(rows)
             else np.zeros((1, *v.shape[1:]), v.dtype) for name, v in images.views.items()}
    return FeatureTable([BLANK], views)


def blank_queries(model: Fusion, side: QuerySide, triplets: list[Triplet], text_encoder,
                  texts: FeatureTable | None = None, progress: bool = False) -> QuerySide:
    """The text-only query side of ``triplets``: every query's reference is the blank one (:func:`blank_reference` of
    ``side``'s references) and its text is ``texts``' row (default ``side.texts``; a method that unifies its queries
    from the reference, DQU, passes the plain texts), or, for a method that reads the text with its reference, the
    text it writes with the blank reference."""
    keys = [k for t in triplets if (k := side.key(t.reference, t.text)) is not None]
    blank = blank_reference(side.images, [k[0] for k in keys])
    unique = sorted({t.text for t in triplets})
    if model.writes_query_texts:
        written = written_queries(model, blank, text_encoder, [(BLANK, x) for x in unique], progress)
        text_key = {x: written.keys[(BLANK, x)][1] for x in unique}
        table = written.texts
    else:
        table = side.texts if texts is None else texts
        text_key = {x: x for x in unique}
    return QuerySide(blank, table, {(t.reference, t.text): (BLANK, text_key[t.text]) for t in triplets})


def modality_audit(model: Fusion, triplets: list[Triplet], images: FeatureTable, blank: QuerySide,
                   gallery: np.ndarray, gallery_ids: list[str], composed: list[list[str]],
                   exclude_reference: bool = True, keep: int = 50) -> ModalityAudit:
    """The audit of ``triplets`` whose composed rankings (gallery ids, best first) are ``composed``: their references'
    rows of ``images`` give the image-only queries, ``blank`` (:func:`blank_queries`) the text-only ones; both are
    ranked by exact search over ``gallery`` (the model's vectors of ``gallery_ids``), each reference left out as for
    the composed ones where ``exclude_reference``."""
    targets = [t.targets for t in triplets]
    index, exclude = gallery_index(gallery, gallery_ids), references(triplets, exclude_reference)

    def ranks(vectors: np.ndarray) -> np.ndarray:
        top, scores = ranked(index, vectors, keep, exclude)
        return first_hits(ranked_ids(top, scores, gallery_ids), targets)

    image = embed_gallery(model, images, [t.reference for t in triplets])
    return ModalityAudit(first_hits(composed, targets), ranks(image), ranks(compose_queries(model, blank, triplets)))


def evaluate_audited(model: Fusion, triplets: list[Triplet], images: FeatureTable, queries: QuerySide,
                     gallery_ids: list[str], blank: QuerySide, exclude_reference: bool = True, keep: int = 50,
                     **options) -> Rankings:
    """:func:`~cirlab.eval.evaluate.evaluate` (``options``: its ``ks``, ``backend``), the rankings carrying the
    modality audit; ``blank``: the text-only query side (:func:`blank_queries`)."""
    gallery = embed_gallery(model, images, gallery_ids)
    rankings = evaluate(model, triplets, images, queries, gallery_ids, exclude_reference=exclude_reference, keep=keep,
                        gallery=gallery, **options)
    rankings.audit = modality_audit(model, rankings.triplets, images, blank, gallery, gallery_ids, rankings.ids,
                                    exclude_reference, keep)
    return rankings


def audit_report(audit: ModalityAudit, queries: Sequence) -> dict:
    """The audit as an eval report writes it: the summary, and each query (a triplet or a benchmark query: its
    ``reference`` and ``text``) with its three ranks."""
    return {"solved_at": audit.solved_at, "summary": audit.summary(),
            "queries": [{"reference": q.reference, "text": q.text, **r} for q, r in zip(queries, audit.per_query())]}


def audit_line(audit: ModalityAudit) -> str:
    """One line for a terminal: the three R@1, the composition subset, the gap."""
    s = audit.summary()
    return (f"modality audit: R@1 composed {s['composed R@1']:.1f}, image only {s['image R@1']:.1f}, text only "
            f"{s['text R@1']:.1f}; composition subset {s['subset share']:.0f}% of the queries, R@1 {s['subset R@1']:.1f} "
            f"on it; composition gap {s['composition gap']:+.1f}")
