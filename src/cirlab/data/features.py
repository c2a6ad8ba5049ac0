"""Feature tables: cached encoder views of a gallery or a list of texts, addressed by key."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from cirlab.data.triplets import Gallery
from cirlab.encoders.base import as_tensors
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

    def tensors(self, rows: np.ndarray | torch.Tensor, views: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """The views of these rows (all, or the named ones) as float tensors, masks as bool.

        Text token sequences are cut after the batch's longest real token (padding to the
        encoder's maximum would only cost attention time).
        """
        rows = np.asarray(rows)
        names = [v for v in (views or self.views) if v in self.views]
        out = as_tensors({name: self.views[name][rows] for name in names})
        if "mask" in out and out["mask"].dim() == 2 and len(rows):
            longest = max(int(out["mask"].sum(dim=1).max()), 1)
            out["mask"] = out["mask"][:, :longest]
            if "tokens" in out:
                out["tokens"] = out["tokens"][:, :longest]
        return out


@dataclass
class QuerySide:
    """Where the query half of each triplet is read from.

    By default the reference image's row of the gallery table and the text's row of the text
    table. Methods that rewrite the raw query first (DQU-CIR's unification) bring their own
    tables and a key map ``(reference, text) -> (image key, text key)``.
    """

    images: FeatureTable
    texts: FeatureTable
    keys: dict[tuple[str, str], tuple[str, str]] | None = None

    def key(self, reference: str, text: str) -> tuple[str, str] | None:
        """The (image key, text key) of a query, or None where either is not encoded."""
        k = (reference, text) if self.keys is None else self.keys.get((reference, text))
        if k is None or k[0] not in self.images.row or k[1] not in self.texts.row:
            return None
        return k


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
