"""Feature tables: cached encoder views of a gallery or a list of texts, addressed by key."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from cirlab.data.triplets import Gallery
from cirlab.encoders.cache import FeatureCache

log = logging.getLogger("cirlab")


@dataclass
class FeatureTable:
    """Views (name -> array with one row per key) and the key -> row map."""

    keys: list[str]
    views: dict[str, np.ndarray]

    def __post_init__(self) -> None:
        self.row = {k: i for i, k in enumerate(self.keys)}

    def __len__(self) -> int:
        return len(self.keys)

    def rows(self, keys: Sequence[str]) -> np.ndarray:
        return np.fromiter((self.row[k] for k in keys), dtype=np.int64, count=len(keys))

    def tensors(self, rows: np.ndarray | torch.Tensor) -> dict[str, torch.Tensor]:
        """The views of these rows as float tensors (masks as bool)."""
        rows = np.asarray(rows)
        out = {}
        for name, arr in self.views.items():
            t = torch.from_numpy(np.ascontiguousarray(arr[rows]))
            out[name] = t.bool() if name == "mask" else t.float()
        return out


def image_table(cache: FeatureCache, encoder, gallery: Gallery, views: Sequence[str] = ("pooled",),
                progress: bool = True) -> tuple[FeatureTable, list[tuple[str, str]]]:
    """Encode (or read from the cache) every gallery image; unreadable files are skipped and reported."""
    feats = cache.image_features(encoder, gallery.paths, views, progress=progress)
    id_of = {p: i for i, p in zip(gallery.ids, gallery.paths)}
    failed = [(str(p), why) for p, why in feats.failed]
    if failed:
        log.warning("skipped %d unreadable image(s), e.g. %s", len(failed), failed[0][1])
    return FeatureTable([id_of[p] for p in feats.paths], feats.views), failed


def text_table(cache: FeatureCache, encoder, texts: Sequence[str], views: Sequence[str] = ("pooled",),
               progress: bool = True) -> FeatureTable:
    unique = sorted(set(texts))
    return FeatureTable(unique, cache.text_features(encoder, unique, views, progress=progress))
