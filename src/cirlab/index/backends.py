"""Index backends: exact, knn (paper 003), kdtree and lsh (paper 000), faiss, kmeans_svm (paper 003)."""

from __future__ import annotations

import numpy as np
import torch

from cirlab.errors import CirlabError
from cirlab.index.base import BaseIndex, index_backends
from cirlab.index.exact import exact_topk
from cirlab.optional import need


@index_backends.register("exact")
class ExactIndex(BaseIndex):
    """Brute force: one matrix product per chunk of queries, top-k by partial sort. The reference."""

    name = "exact"

    def _extend(self, start: int) -> bool:
        return True

    def _search_rows(self, queries, k):
        return exact_topk(queries, self.vectors, k)


@index_backends.register("knn")
class KNNIndex(BaseIndex):
    """Exact k nearest neighbours by Euclidean distance (paper 003's retrieval); scores are ``-distance``."""

    name = "knn"

    def _extend(self, start: int) -> bool:
        new = self.vectors[start:]
        self._norms = np.concatenate([self._norms, np.einsum("ij,ij->i", new, new)])
        return True

    def _rebuild(self) -> None:
        self._norms = np.einsum("ij,ij->i", self.vectors, self.vectors)

    def _search_rows(self, queries, k):
        return euclidean_topk(queries, self.vectors, self._norms, k)

    def _search_filtered(self, queries, k, where, allowed):
        rows, scores = euclidean_topk(queries, np.asarray(self.vectors[allowed]), self._norms[allowed], k)
        return allowed[rows], scores


def euclidean_topk(queries: np.ndarray, gallery: np.ndarray, norms: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest gallery rows by Euclidean distance (``norms``: the rows' squared norms); scores are
    ``-distance``."""
    g = torch.from_numpy(gallery)
    norms = torch.from_numpy(norms)
    rows, scores = [], []
    for s in range(0, len(queries), 1024):
        q = torch.from_numpy(queries[s:s + 1024])
        d2 = (q * q).sum(1, keepdim=True) + norms[None] - 2 * q @ g.T
        top = torch.topk(d2, k, dim=1, largest=False)
        rows.append(top.indices.numpy())
        scores.append(-top.values.clamp(min=0).sqrt().numpy())
    return np.concatenate(rows), np.concatenate(scores)


@index_backends.register("kdtree")
class KDTreeIndex(BaseIndex):
    """scikit-learn's k-d tree over the unit vectors (paper 000's UFRM); cosine = 1 - d^2 / 2.

    Exact, but a k-d tree prunes little in hundreds of dimensions: it is here because paper 000
    names it, and the benchmark shows where it stands against the others.
    """

    name = "kdtree"
    options = {"leaf_size": int}

    def _rebuild(self) -> None:
        KDTree = need("sklearn.neighbors", "index", "the kdtree index backend").KDTree

        self._tree = KDTree(self.vectors, leaf_size=self.opts.get("leaf_size", 40)) if len(self.vectors) else None

    def _search_rows(self, queries, k):
        dist, rows = self._tree.query(queries, k=k)
        return rows, (1.0 - dist ** 2 / 2.0).astype(np.float32)


def _popcount_table() -> np.ndarray:
    return np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


@index_backends.register("lsh")
class LSHIndex(BaseIndex):
    """Random-hyperplane LSH (paper 000's UFRM): ``bits`` signs of random projections per vector.

    A query's candidates are the ``candidates`` rows of smallest Hamming distance between the
    codes; they are re-ranked by exact cosine. The hyperplanes come from ``seed``.
    """

    name = "lsh"
    options = {"bits": int, "candidates": int, "seed": int}
    search_options = ("candidates",)
    raw_vectors_on_disk = True  # codes are searched; raw rows are read only for the candidates

    def __init__(self, dim: int, **options: str) -> None:
        super().__init__(dim, **options)
        bits = self.opts.get("bits", 256)
        if bits % 8 or bits < 8:
            raise CirlabError(f"lsh bits must be a positive multiple of 8, got {bits}")
        self._planes = np.random.default_rng(self.opts.get("seed", 0)).standard_normal((dim, bits)).astype(np.float32)
        self._codes = np.zeros((0, bits // 8), np.uint8)
        self._pop = _popcount_table()

    def encode(self, vectors: np.ndarray) -> np.ndarray:
        return np.packbits(vectors @ self._planes > 0, axis=1)

    def _rebuild(self) -> None:
        self._codes = self.encode(self.vectors) if len(self.vectors) else np.zeros((0, self._planes.shape[1] // 8), np.uint8)

    def _extend(self, start: int) -> bool:
        self._codes = np.concatenate([self._codes, self.encode(self.vectors[start:])])
        return True

    def _search_rows(self, queries, k):
        n = len(self.ids)
        cand = min(n, max(k, self.opts.get("candidates", 10 * k)))
        codes = self.encode(queries)
        rows = np.empty((len(queries), k), np.int64)
        scores = np.empty((len(queries), k), np.float32)
        for i, code in enumerate(codes):
            ham = self._pop[np.bitwise_xor(self._codes, code)].sum(axis=1, dtype=np.int32)
            pick = np.argpartition(ham, cand - 1)[:cand] if cand < n else np.arange(n)
            sims = self.vectors[pick] @ queries[i]
            top = np.argsort(-sims)[:k]
            rows[i], scores[i] = pick[top], sims[top]
        return rows, scores

    def state(self):
        return {"planes": self._planes, "codes": self._codes}

    def load_state(self, state):
        self._planes, self._codes = state["planes"], state["codes"]


@index_backends.register("faiss")
class FaissIndex(BaseIndex):
    """A FAISS index by factory string over inner products: ``Flat``, ``HNSW32``, ``IVF1024,PQ64``...

    ``nprobe`` (IVF) and ``ef`` (HNSW efSearch) tune recall against speed at query time.
    ``rerank=R`` takes the compressed index's top R and re-scores them by exact cosine on the
    raw vectors (which a loaded index memory-maps from disk, so only the R rows are read).
    Trained indexes (IVF, PQ) are trained on the vectors present at build; later adds are
    appended without retraining, removals rebuild.
    """

    name = "faiss"
    options = {"factory": str, "nprobe": int, "ef": int, "rerank": int}
    search_options = ("nprobe", "ef", "rerank")
    raw_vectors_on_disk = True

    def __init__(self, dim: int, **options: str) -> None:
        super().__init__(dim, **options)
        need("faiss", "index", "the faiss index backend")
        self.opts.setdefault("factory", "Flat")
        self._index = None

    def _new(self):
        import faiss

        try:
            return faiss.index_factory(self.dim, self.opts["factory"], faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as e:
            raise CirlabError(f"faiss cannot build {self.opts['factory']!r}: {str(e).splitlines()[-1]}") from None

    def _tune(self) -> None:
        import faiss

        params = faiss.ParameterSpace()
        if "nprobe" in self.opts:
            params.set_index_parameter(self._index, "nprobe", self.opts["nprobe"])
        if "ef" in self.opts:
            params.set_index_parameter(self._index, "efSearch", self.opts["ef"])

    def _rebuild(self) -> None:
        self._index = self._new()
        if len(self.vectors):
            if not self._index.is_trained:
                self._index.train(self.vectors)
            self._index.add(self.vectors)
        self._tune()

    def _extend(self, start: int) -> bool:
        if self._index is None or not self._index.is_trained:
            return False
        self._index.add(self.vectors[start:])
        return True

    def _search_rows(self, queries, k):
        rerank = self.opts.get("rerank", 0)
        scores, rows = self._index.search(queries, max(k, min(rerank, len(self.ids))))
        if rerank <= k:
            return rows, scores
        out_rows = np.full((len(queries), k), -1, np.int64)
        out_scores = np.full((len(queries), k), -np.inf, np.float32)
        for s in range(0, len(queries), 32):  # gather the candidates' raw rows a chunk of queries at a time
            cand = rows[s:s + 32]
            sims = np.einsum("crd,cd->cr", np.asarray(self.vectors[np.maximum(cand, 0)]), queries[s:s + 32])
            sims[cand < 0] = -np.inf
            top = np.argsort(-sims, axis=1)[:, :k]
            out_rows[s:s + 32] = np.where(np.isfinite(np.take_along_axis(sims, top, 1)), np.take_along_axis(cand, top, 1), -1)
            out_scores[s:s + 32] = np.take_along_axis(sims, top, 1)
        return out_rows, out_scores

    def state(self):
        import faiss

        return {"faiss": faiss.serialize_index(self._index)}

    def load_state(self, state):
        import faiss

        self._index = faiss.deserialize_index(np.ascontiguousarray(state["faiss"]))
        self._tune()


@index_backends.register("kmeans_svm")
class KMeansSVMIndex(BaseIndex):
    """Paper 003's cluster retrieval: K-means (``k`` clusters, 15 by default) over the vectors, a
    linear SVM trained to predict a vector's cluster; a query goes to its ``probe`` best clusters
    by SVM decision value and is ranked by cosine within them. New vectors join the cluster the
    SVM gives them; removals and fewer rows than clusters rebuild."""

    name = "kmeans_svm"
    options = {"k": int, "probe": int, "seed": int}
    search_options = ("probe",)

    def _rebuild(self) -> None:
        KMeans = need("sklearn.cluster", "index", "the kmeans_svm index backend").KMeans
        LinearSVC = need("sklearn.svm", "index", "the kmeans_svm index backend").LinearSVC

        n = len(self.vectors)
        k = max(1, min(self.opts.get("k", 15), n))
        self._labels = np.zeros(n, np.int64)
        self._coef = np.zeros((1, self.dim), np.float32)
        self._intercept = np.zeros(1, np.float32)
        self._classes = np.zeros(1, np.int64)
        if n == 0 or k == 1:
            return
        sample = self.vectors if n <= 50_000 else self.vectors[np.random.default_rng(0).choice(n, 50_000, replace=False)]
        km = KMeans(k, n_init=1, random_state=self.opts.get("seed", 0)).fit(sample)
        sample_labels = km.predict(sample)
        if len(set(sample_labels)) < 2:
            return
        svm = LinearSVC(C=1.0, dual="auto", random_state=0).fit(sample, sample_labels)
        coef, intercept = svm.coef_.astype(np.float32), svm.intercept_.astype(np.float32)
        if coef.shape[0] == 1:  # two classes: sklearn gives one hyperplane
            coef, intercept = np.concatenate([-coef, coef]), np.concatenate([-intercept, intercept])
        self._coef, self._intercept, self._classes = coef, intercept, svm.classes_.astype(np.int64)
        self._labels = self._route(self.vectors, 1)[:, 0]

    def _route(self, vectors: np.ndarray, probe: int) -> np.ndarray:
        decision = vectors @ self._coef.T + self._intercept
        probe = min(probe, decision.shape[1])
        return self._classes[np.argsort(-decision, axis=1)[:, :probe]]

    def _extend(self, start: int) -> bool:
        if len(self._classes) < 2:
            return False
        self._labels = np.concatenate([self._labels, self._route(self.vectors[start:], 1)[:, 0]])
        return True

    def _search_rows(self, queries, k):
        probe = self.opts.get("probe", 1)
        routes = self._route(queries, probe) if len(self._classes) > 1 else np.zeros((len(queries), 1), np.int64)
        rows = np.full((len(queries), k), -1, np.int64)
        scores = np.full((len(queries), k), -np.inf, np.float32)
        members = {c: np.nonzero(self._labels == c)[0] for c in np.unique(self._labels)}
        for i, route in enumerate(routes):
            pick = np.concatenate([members.get(c, np.zeros(0, np.int64)) for c in route])
            if not len(pick):
                continue
            sims = self.vectors[pick] @ queries[i]
            top = np.argsort(-sims)[:k]
            rows[i, :len(top)], scores[i, :len(top)] = pick[top], sims[top]
        return rows, scores

    def state(self):
        return {"labels": self._labels, "coef": self._coef, "intercept": self._intercept, "classes": self._classes}

    def load_state(self, state):
        self._labels, self._coef = state["labels"], state["coef"]
        self._intercept, self._classes = state["intercept"], state["classes"]
