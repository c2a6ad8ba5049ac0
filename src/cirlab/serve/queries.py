"""The query executor of the server: searches gathered into batches (``serve.batching``), each batch one encoder
batch, one fusion call a kind, one index search (``index.search``), sessions combined (``cirlab.session``) and the
top candidates reordered by a second model where one is served (``cirlab.rerank``); and the rolling stage times."""

from __future__ import annotations

import itertools
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cirlab.api import Query
from cirlab.images import UnreadableImage
from cirlab.index.search import search
from cirlab.serve.batching import MicroBatcher
from cirlab.serve.errors import ServiceError, unreadable_gallery_image
from cirlab.serve.gallery import GalleryKeeper
from cirlab.session import combine_each

STAGES = ("decode", "queue", "encode", "fuse", "search", "rerank", "total")  # rerank: only with a re-ranker
RECENT = 2000  # searches the rolling percentiles cover


@dataclass
class Search:
    """One search waiting for its batch: its queries (one, or one per turn of a session whose history mode averages
    them: ``cirlab.session``), k, the ids left out, the metadata filter, and the gallery files its queries read, each
    with the session's turn (1-based) and image id it came from (to say which failed, as data)."""

    queries: list[Query]
    k: int
    skip: set
    filter: dict | None = None
    files: dict[str, tuple[int, str]] = field(default_factory=dict)
    turns: int = 1


class QueryExecutor:
    def __init__(self, pipe, gallery: GalleryKeeper, rerank=None, batch_window_ms: float = 5.0,
                 max_batch: int = 32) -> None:
        self.pipe, self.gallery = pipe, gallery
        self.rerank = rerank  # a cirlab.rerank.Reranker: a second model reorders the top candidates
        self.batcher = MicroBatcher(self._run_batch, batch_window_ms / 1e3, max_batch)
        self._recent: dict[str, deque] = {s: deque(maxlen=RECENT) for s in STAGES + ("batch",)}

    def close(self) -> None:
        self.batcher.close()

    def run(self, item: Search, decode: float = 0.0) -> tuple[list[dict], dict]:
        """The results of one search, in whatever batch it joins, and its stage seconds (``decode`` given)."""
        start = time.perf_counter()
        (results, batch_stages), queued, size = self.batcher.submit(item)
        stages = {"decode": decode, "queue": queued, **batch_stages, "total": time.perf_counter() - start + decode}
        for stage, value in {**stages, "batch": size}.items():
            self._recent[stage].append(value)
        return results, stages

    def _run_batch(self, items: list[Search]) -> list:
        """One batch of searches. Each item gets ``(results, stage seconds)`` or its own error."""
        stages: dict[str, float] = {}
        with self.gallery.lock:
            self.gallery.refresh()
            parts: dict = {}
            flat = [q for i in items for q in i.queries]
            composed = self.pipe.compose_many(flat, stages, parts)
            vectors = combine_each(composed, [len(i.queries) for i in items])
            firsts = list(itertools.accumulate([0] + [len(i.queries) for i in items]))[:-1]
            ok = [n for n, v in enumerate(vectors) if not isinstance(v, Exception)]
            second = self._second_vectors(items, flat, stages)
            start = time.perf_counter()
            ranked: dict[int, list] = {}
            # a search the re-ranker could not compose (a text-only query and no text head) keeps the first order
            for rerank in (False, True):
                group = [n for n in ok if (second[n] is not None) == rerank]
                if not group:
                    continue
                scoring = self.pipe.rescoring([vectors[n] for n in group],
                                              {m: parts[firsts[n]] for m, n in enumerate(group)
                                               if len(items[n].queries) == 1 and firsts[n] in parts})
                index = self.gallery.index
                reorder = self.rerank.served_scoring(np.stack([second[n] for n in group]), index) if rerank else None
                found = search(index, np.stack([vectors[n] for n in group]), [items[n].k for n in group],
                               [items[n].skip for n in group], [items[n].filter for n in group], scoring, reorder)
                ranked.update(zip(group, found))
            stages["search"] = time.perf_counter() - start
            answers = {n: [self.gallery.item(i, score=s) for i, s in rows] for n, rows in ranked.items()}
        return [(answers[n], stages) if n in answers else
                query_error(it, composed[firsts[n]:firsts[n] + len(it.queries)]) for n, it in enumerate(items)]

    def _second_vectors(self, items: list[Search], flat: list[Query], stages: dict) -> list:
        """The re-ranker's query vector of each search (None: no re-ranker, or it cannot compose that search)."""
        if self.rerank is None:
            return [None] * len(items)
        start = time.perf_counter()
        second = self.rerank.query_vectors(flat, [len(i.queries) for i in items])
        stages["rerank"] = time.perf_counter() - start
        return second

    def latency(self) -> dict:
        """Rolling percentiles (ms) of each stage over the last searches, and the mean batch size."""
        out: dict = {"searches": len(self._recent["total"])}
        for stage in STAGES:
            values = np.array(self._recent[stage]) * 1e3
            if len(values):
                out[stage] = {f"p{q}": round(float(np.percentile(values, q)), 2) for q in (50, 90, 99)}
        if self._recent["batch"]:
            out["mean_batch"] = round(float(np.mean(self._recent["batch"])), 2)
        return out


def query_error(item: Search, outcomes: list) -> ServiceError:
    """The reply for a search one of whose queries failed (``outcomes``: each query's vector or error). A gallery
    file that went bad is named by its id and turn, never by the server's path: the current reference's, or one of
    the session's earlier ones."""
    n, error = next((n, o) for n, o in enumerate(outcomes) if isinstance(o, Exception))
    image = item.queries[n].image
    where = item.files.get(str(image)) if isinstance(image, (str, Path)) else None
    if not isinstance(error, UnreadableImage) or where is None:
        return ServiceError(422, str(error))
    turn, image_id = where
    if turn == item.turns:
        return ServiceError(422, unreadable_gallery_image(image_id), turn=turn, image_id=image_id)
    return ServiceError(422, f"the file of gallery image {image_id!r} (history turn {turn}) is unreadable on the "
                             "server; start the session again from another image", turn=turn, image_id=image_id)
