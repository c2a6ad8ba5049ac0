"""Re-ranking: a second, heavier model reorders the first stage's top K (docs/evaluation.md#re-ranking).

The first stage is the index: one vector per image, of the model it was built with, searched as ever. The second
model composes its own query vector of the same (reference, text) and scores each of the first ``candidates``
(default 100; never fewer than the ``k`` asked for) against its own vector of that image, made from the feature
cache at query time (``tirg_gate-local`` over its region maps, a supervised model over a zero-shot index). The set
of the top K is the first stage's; only their order changes.

``--rerank SPEC`` on ``cirlab search``, ``eval``, ``bench`` and ``serve``: ``PATH`` (a checkpoint) or
``model=PATH,candidates=N``. The second model must share the first's encoders (it reads the same cache).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from cirlab.errors import CirlabError
from cirlab.fusion import Fusion
from cirlab.index.scoring import ModelScoring

DEFAULT_CANDIDATES = 100
GALLERY_CACHE = 100_000  # the second model's gallery vectors kept in memory by the server (2 KB each at 512-d)


@dataclass(frozen=True)
class RerankSpec:
    """Which checkpoint re-ranks, and how many of the first stage's candidates."""

    model: Path
    candidates: int = DEFAULT_CANDIDATES

    @classmethod
    def parse(cls, text: str) -> "RerankSpec":
        """``PATH`` or ``model=PATH,candidates=N``."""
        if not text.strip():
            raise CirlabError("--rerank is empty: give a checkpoint PATH or model=PATH,candidates=N, or leave "
                              "--rerank out")
        values: dict = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            key, eq, value = part.partition("=")
            if not eq and "model" not in values:
                key, value = "model", part
            elif key not in ("model", "candidates") or not value:
                raise CirlabError(f"re-rank option {part!r}: give PATH or model=PATH,candidates=N")
            values[key] = value
        if "model" not in values:
            raise CirlabError("--rerank needs a checkpoint: PATH or model=PATH,candidates=N")
        try:
            candidates = int(values.get("candidates", DEFAULT_CANDIDATES))
        except ValueError:
            raise CirlabError(f"re-rank candidates must be a whole number, got {values['candidates']!r}") from None
        if candidates < 1:
            raise CirlabError(f"re-rank candidates must be at least 1, got {candidates}")
        return cls(Path(values["model"]), candidates)

    @classmethod
    def checked(cls, spec: "RerankSpec | str") -> "RerankSpec":
        """A spec (parsed from text where it is one) whose checkpoint exists, else a one-line error."""
        spec = cls.parse(spec) if isinstance(spec, str) else spec
        if not spec.model.is_file():
            raise CirlabError(f"re-rank model {spec.model} does not exist; give a checkpoint made by 'cirlab train'")
        return spec


@dataclass
class Reranker:
    """A loaded second model and how many candidates it reorders."""

    model: Fusion
    candidates: int = DEFAULT_CANDIDATES
    name: str = ""

    @classmethod
    def load(cls, spec: RerankSpec | str, image_encoder, text_encoder) -> "Reranker":
        """The spec's checkpoint, rebuilt for these encoders (refused in one line when it was trained on others)."""
        from cirlab.checkpoint import load_checkpoint

        spec = RerankSpec.checked(spec)
        model, meta = load_checkpoint(spec.model, image_encoder, text_encoder)
        return cls(model, spec.candidates, meta.get("method", model.name))


class ServedReranker:
    """A :class:`Reranker` in the server or ``cirlab search``: its query vectors through a pipeline of the second
    model, its vectors of a gallery image from the feature cache (by the image's file), kept in a bounded memory."""

    def __init__(self, pipeline, candidates: int = DEFAULT_CANDIDATES) -> None:
        self.pipe = pipeline
        self.candidates = candidates
        self._vectors: OrderedDict[str, np.ndarray] = OrderedDict()

    @classmethod
    def load(cls, spec: RerankSpec | str, first) -> "ServedReranker":
        """The spec's checkpoint beside ``first`` (the first stage's pipeline): on its encoders (refused in one line
        when trained on others), cache and placement, with its own text-to-image head."""
        from cirlab.api import Pipeline

        spec = RerankSpec.checked(spec)
        return cls(Pipeline.load(spec.model, beside=first), spec.candidates)

    @property
    def name(self) -> str:
        return self.pipe.meta["method"]

    @torch.inference_mode()
    def gallery(self, paths: Sequence[str]) -> np.ndarray:
        """The second model's vectors of gallery files (each read from the cache once, then kept)."""
        missing = [p for p in dict.fromkeys(paths) if p not in self._vectors]
        if missing:
            model = self.pipe.model
            feats = self.pipe.cache.image_features(self.pipe.image_encoder, [Path(p) for p in missing],
                                                   tuple(model.gallery_views), progress=False)
            if feats.failed:
                raise CirlabError(f"the re-ranker cannot read gallery file {Path(feats.failed[0][0]).name}: "
                                  f"{feats.failed[0][1]}")
            views = self.pipe._on({v: torch.as_tensor(x) for v, x in feats.views.items()})
            for p, v in zip(missing, model.embed_gallery(views).float().cpu().numpy()):
                self._vectors[p] = v
        out = np.stack([self._vectors[p] for p in paths]) if paths else np.zeros((0, self.pipe.model.embed_dim))
        for p in paths:
            self._vectors.move_to_end(p)
        while len(self._vectors) > GALLERY_CACHE:
            self._vectors.popitem(last=False)
        return out.astype(np.float32)

    def scoring(self, queries: np.ndarray, index) -> ModelScoring:
        """The re-ranking of a batch whose second-model query vectors are ``queries`` over ``index`` (keys: ids)."""
        def vectors(ids: Sequence[str]) -> np.ndarray:
            return self.gallery([str(index.metadata[index.row_of[i]].get("path", "")) for i in ids])
        return ModelScoring(np.asarray(queries, np.float32), vectors, self.candidates, self.name)
