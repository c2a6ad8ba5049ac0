"""Similarity-based pseudo triplets (paper 004, section 3.3).

Every training image gets *substitutes*: the (at most) ``s_max`` most similar other training
images whose cosine lies in ``[eps_l, eps_u]`` (similar enough to stand in, not a near
duplicate). A pseudo triplet replaces the reference or the target of a real triplet by one of
its substitutes; it is kept only if the stage-1 model scores the pseudo query against its
target above ``alpha``. Stage 2 then trains ``every`` epochs on real triplets and one on the
kept pseudo triplets, repeatedly.

Similarities are taken in the stage-1 model's image space (its ``sum`` fusion's projected,
normalised image vectors): with our encoders the raw pooled features are all positive and
crowd near cosine 1, where CLIP's embeddings, which the paper's thresholds were set for, do not.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from cirlab.config import PseudoConfig
from cirlab.data.features import FeatureTable
from cirlab.data.triplets import Triplet
from cirlab.errors import CirlabError


@dataclass
class PseudoSet:
    triplets: list[Triplet]
    made: int  # candidates from the similarity constraint
    kept: int  # after the matching constraint
    with_substitutes: int  # training images that have at least one substitute
    images: int

    def stats(self) -> dict:
        d = asdict(self)
        d.pop("triplets")
        return d


def substitutes(vectors: np.ndarray, s_max: int, eps_l: float, eps_u: float, chunk: int = 2048) -> list[np.ndarray]:
    """For each row of unit ``vectors``: up to ``s_max`` other rows by descending cosine, only those
    with cosine in ``[eps_l, eps_u]``."""
    v = np.ascontiguousarray(vectors, dtype=np.float32)
    out: list[np.ndarray] = []
    for s in range(0, len(v), chunk):
        sims = v[s:s + chunk] @ v.T
        rows = np.arange(len(sims))
        sims[rows, rows + s] = -np.inf  # never its own substitute
        sims[(sims < eps_l) | (sims > eps_u)] = -np.inf
        k = min(s_max, v.shape[0] - 1)
        if k <= 0:
            out += [np.zeros(0, np.int64)] * len(sims)
            continue
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        for r, cand in enumerate(top):
            cand = cand[np.isfinite(sims[r, cand])]
            out.append(cand[np.argsort(-sims[r, cand], kind="stable")])
    return out


@torch.inference_mode()
def make_pseudo_triplets(scorer, triplets: list[Triplet], images: FeatureTable, texts: FeatureTable,
                         train_ids: list[str], cfg: PseudoConfig) -> PseudoSet:
    """Pseudo triplets of ``triplets`` under the two constraints. ``scorer`` is the stage-1 model (a
    fusion whose ``compose`` / ``embed_gallery`` read pooled views of ``images`` and ``texts``)."""
    scorer.eval()
    ids = [i for i in train_ids if i in images.row]
    if not ids:
        raise CirlabError("no encoded training images to draw substitutes from")
    pooled = {"pooled": torch.from_numpy(images.views["pooled"][images.rows(ids)]).float()}
    vectors = scorer.embed_gallery(pooled).numpy()
    subs = substitutes(vectors, cfg.s_max, cfg.eps_l, cfg.eps_u)
    row = {i: n for n, i in enumerate(ids)}
    candidates: list[Triplet] = []
    for t in triplets:
        target = next((x for x in t.targets if x in row), None)
        if t.reference not in row or target is None or t.text not in texts.row:
            continue
        candidates += [Triplet(ids[s], t.text, [target], {"pseudo": "reference"}) for s in subs[row[t.reference]]
                       if ids[s] != target]
        candidates += [Triplet(t.reference, t.text, [ids[s]], {"pseudo": "target"}) for s in subs[row[target]]
                       if ids[s] != t.reference]
    kept: list[Triplet] = []
    for s in range(0, len(candidates), 1024):
        part = candidates[s:s + 1024]
        ref = {"pooled": torch.from_numpy(images.views["pooled"][images.rows([c.reference for c in part])]).float()}
        txt = {"pooled": torch.from_numpy(texts.views["pooled"][texts.rows([c.text for c in part])]).float()}
        tgt = {"pooled": torch.from_numpy(images.views["pooled"][images.rows([c.targets[0] for c in part])]).float()}
        score = (scorer.compose(ref, txt) * scorer.embed_gallery(tgt)).sum(-1).numpy()
        for c, sc in zip(part, score):
            if sc > cfg.alpha:
                c.attributes["score"] = round(float(sc), 4)
                kept.append(c)
    return PseudoSet(kept, len(candidates), len(kept), sum(len(x) > 0 for x in subs), len(ids))


def pseudo_epochs(epochs: int, every: int) -> list[bool]:
    """Which epochs train on pseudo triplets: after every ``every`` real epochs, one pseudo epoch."""
    return [(e + 1) % (every + 1) == 0 for e in range(epochs)]


__all__ = ["PseudoConfig", "PseudoSet", "make_pseudo_triplets", "pseudo_epochs", "substitutes"]
