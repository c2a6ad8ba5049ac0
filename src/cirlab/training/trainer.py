"""Training a fusion method on cached features (stage 2: encoders frozen)."""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from cirlab.data.features import FeatureTable, QuerySide
from cirlab.data.triplets import Triplet
from cirlab.errors import CirlabError
from cirlab.fusion.base import Fusion
from cirlab.training.losses import batch_infonce, batch_triplet


@dataclass
class TrainConfig:
    """Optimisation settings; a method's config file overrides any of them."""

    epochs: int = 30
    batch_size: int = 256
    lr: float = 5e-4
    weight_decay: float = 0.01
    logit_scale: float = 30.0
    seed: int = 0
    select_best: bool = True  # with a validation split: keep the epoch of best val R@1 + R@10
    patience: int = 0  # with a validation split: stop after this many epochs without gain (0: never)
    triplet_weight: float = 0.0  # weight of the triplet loss added to InfoNCE (paper 000)
    triplet_margin: float = 0.2  # its margin, on cosine similarities

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise CirlabError(f"unknown training option(s) {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)


@dataclass
class TrainResult:
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    triplets: int = 0
    best_epoch: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class TripletIndex:
    """Triplets as row indices into the image and text feature tables (unknown ids dropped)."""

    ref: np.ndarray
    text: np.ndarray
    target: np.ndarray
    dropped: int

    @classmethod
    def build(cls, triplets: list[Triplet], images: FeatureTable, queries: QuerySide) -> "TripletIndex":
        """Rows of each triplet's query (in ``queries``' tables) and first encoded target (in ``images``)."""
        ref, txt, tgt, dropped = [], [], [], 0
        for t in triplets:
            target = next((x for x in t.targets if x in images.row), None)
            key = queries.key(t.reference, t.text)
            if key is None or target is None:
                dropped += 1
                continue
            ref.append(queries.images.row[key[0]])
            txt.append(queries.texts.row[key[1]])
            tgt.append(images.row[target])
        return cls(np.array(ref, dtype=np.int64), np.array(txt, dtype=np.int64), np.array(tgt, dtype=np.int64), dropped)

    def __len__(self) -> int:
        return len(self.ref)


def train_fusion(model: Fusion, triplets: list[Triplet], images: FeatureTable, queries: QuerySide,
                 cfg: TrainConfig, progress: bool = True,
                 validate: Callable[[Fusion], dict[int, float]] | None = None) -> TrainResult:
    """AdamW on the batch InfoNCE loss (plus the triplet loss where ``triplet_weight`` > 0).

    ``images`` holds the target (gallery) images; ``queries`` the query halves of the triplets.

    ``validate`` returns Recall@K on a validation split after each epoch; with ``select_best``
    the weights of the best epoch (R@1 + R@10) are kept, with ``patience`` training stops early.
    """
    seed_everything(cfg.seed)
    index = TripletIndex.build(triplets, images, queries)
    if len(index) < 2:
        raise CirlabError(f"only {len(index)} usable training triplet(s): need at least 2 whose images and texts are encoded")
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    rng = np.random.default_rng(cfg.seed)
    result = TrainResult(triplets=len(index))
    best_score, best_state, stale = float("-inf"), None, 0
    start = time.perf_counter()
    bar = tqdm(range(cfg.epochs), desc=f"training {model.name}", disable=not progress)
    for epoch in bar:
        model.train()
        order = rng.permutation(len(index))
        total, batches = 0.0, 0
        for s in range(0, len(order), cfg.batch_size):
            b = order[s:s + cfg.batch_size]
            if len(b) < 2:
                continue
            query = model.compose(queries.images.tensors(index.ref[b], model.image_views),
                                  queries.texts.tensors(index.text[b], model.text_views))
            target = model.embed_gallery(images.tensors(index.target[b], model.gallery_views))
            keys = torch.from_numpy(index.target[b])
            loss = batch_infonce(query, target, cfg.logit_scale, keys)
            if cfg.triplet_weight:
                loss = loss + cfg.triplet_weight * batch_triplet(query, target, cfg.triplet_margin, keys)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach())
            batches += 1
        row: dict = {"epoch": epoch + 1, "loss": total / max(batches, 1)}
        if validate is not None:
            model.eval()
            recall = validate(model)
            row.update({f"val_R@{k}": v for k, v in recall.items()})
            score = recall.get(1, 0.0) + recall.get(10, 0.0)
            if score > best_score:
                best_score, stale = score, 0
                result.best_epoch = epoch + 1
                if cfg.select_best:
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                stale += 1
        result.history.append(row)
        bar.set_postfix(loss=f"{row['loss']:.3f}")
        if cfg.patience and stale >= cfg.patience:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    result.seconds = time.perf_counter() - start
    return result
