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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from cirlab.errors import CirlabError
from cirlab.fusion import Fusion
from cirlab.index.scoring import ModelScoring
from cirlab.session import combine_each

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
    """A second model that reorders the first stage's top ``candidates``: one type wherever a search is answered or
    measured. Given its query vectors and a function from candidate keys to its vectors of those gallery images, it
    makes the finished :class:`~cirlab.index.scoring.ModelScoring` that the one search (``index.search``) runs:
    served, the function reads the feature cache by each image's file (:meth:`served_scoring`); evaluated, the
    workspace's encoded table (:meth:`measured_scoring`). ``pipe``: its pipeline beside the first model's, where it
    answers queries (:meth:`beside`); None where it is measured only (:meth:`load`)."""

    model: Fusion
    candidates: int = DEFAULT_CANDIDATES
    name: str = ""
    pipe: object | None = None  # a cirlab.api.Pipeline
    _vectors: OrderedDict = field(default_factory=OrderedDict, repr=False)  # file -> its vector, served

    @classmethod
    def load(cls, spec: RerankSpec | str, image_encoder, text_encoder) -> "Reranker":
        """The spec's checkpoint, rebuilt for these encoders (refused in one line when it was trained on others)."""
        from cirlab.checkpoint import load_checkpoint

        spec = RerankSpec.checked(spec)
        model, meta = load_checkpoint(spec.model, image_encoder, text_encoder)
        return cls(model, spec.candidates, meta.get("method", model.name))

    @classmethod
    def beside(cls, spec: RerankSpec | str, first) -> "Reranker":
        """The spec's checkpoint beside ``first`` (the first stage's ``Pipeline``), to answer queries: on its
        encoders (refused in one line when trained on others), cache and placement, with its own text-to-image head."""
        from cirlab.api import Pipeline

        spec = RerankSpec.checked(spec)
        pipe = Pipeline.load(spec.model, beside=first)
        return cls(pipe.model, spec.candidates, pipe.meta["method"], pipe)

    def scoring(self, queries: np.ndarray, gallery: Callable[[Sequence], np.ndarray]) -> ModelScoring:
        """The re-ranking of a batch whose query vectors (this model's) are ``queries``; ``gallery``: candidate
        keys -> this model's (C, D) vectors of those images."""
        return ModelScoring(np.asarray(queries, np.float32), gallery, self.candidates, self.name)

    # -- measured ------------------------------------------------------------------------------
    def measured_scoring(self, queries, triplets: Sequence, images, gallery_ids: Sequence[str]) -> ModelScoring:
        """Its scoring of ``triplets`` over ``gallery_ids`` (keys: gallery ids), from a workspace's encoded tables:
        ``queries``, this model's query side (``Workspace.queries``); ``images``, the image table."""
        from cirlab.eval.evaluate import compose_queries, embed_gallery

        self.model.eval()
        vectors = embed_gallery(self.model, images, list(gallery_ids))
        pos = {g: i for i, g in enumerate(gallery_ids)}
        return self.scoring(compose_queries(self.model, queries, list(triplets)),
                            lambda ids: vectors[np.asarray([pos[i] for i in ids], np.int64)])

    # -- served --------------------------------------------------------------------------------
    @property
    def checkpoint(self) -> str:
        return self.pipe.path.name if self.pipe is not None and self.pipe.path else ""

    def query_vectors(self, queries: Sequence, sizes: Sequence[int] | None = None) -> list:
        """Its query vector of each ``cirlab.api.Query`` (the first stage checked their texts), or of each session
        (``sizes``: its queries' counts, combined as ``cirlab.session.combine``); None where it cannot compose one
        (a text alone, and it has no text-to-image head): that search keeps the first stage's order."""
        made = combine_each(self.pipe.compose_many(list(queries)), sizes or [1] * len(queries))
        return [None if isinstance(v, Exception) else v for v in made]

    def for_query(self, query, index) -> ModelScoring | None:
        """The re-ranking of one search over a served ``index``, or None where it cannot compose the query."""
        (vector,) = self.query_vectors([query])
        return None if vector is None else self.served_scoring(vector[None], index)

    def served_scoring(self, queries: np.ndarray, index) -> ModelScoring:
        """The re-ranking of a batch over a served ``index`` (keys: ids), its vectors read from the feature cache by
        each image's file (kept in a bounded memory)."""
        def vectors(ids: Sequence[str]) -> np.ndarray:
            return self.gallery([str(index.metadata[index.row_of[i]].get("path", "")) for i in ids])
        return self.scoring(queries, vectors)

    def gallery(self, paths: Sequence[str]) -> np.ndarray:
        """Its vectors of gallery files (each read from the cache once, then kept)."""
        from cirlab.data.triplets import Gallery

        missing = list(dict.fromkeys(p for p in paths if p not in self._vectors))
        if missing:
            made = self.pipe.gallery_vectors(Gallery(missing, [Path(p) for p in missing]), progress=False)
            if made.failed:
                raise CirlabError(f"the re-ranker cannot read gallery file {Path(made.failed[0][0]).name}: "
                                  f"{made.failed[0][1]}")
            self._vectors.update(zip(made.ids, made.vectors))
        out = np.stack([self._vectors[p] for p in paths]) if paths else np.zeros((0, self.model.embed_dim))
        for p in paths:
            self._vectors.move_to_end(p)
        while len(self._vectors) > GALLERY_CACHE:
            self._vectors.popitem(last=False)
        return out.astype(np.float32)

    def info(self) -> dict:
        return {"method": self.name, "checkpoint": self.checkpoint, "candidates": self.candidates}
