"""Index backends on random unit vectors: build time, bytes per vector, latency, QPS, Recall@10.

    .venv/bin/python benchmarks/index_bench.py [--sizes 10000 100000 1000000] [--dim 512]
        [--queries 200] [--backends exact faiss:HNSW32,ef=128 ...]

One run measures, on this machine and in this process:
- the memory-bandwidth bound: GB/s of a plain numpy pass (a sum) over the n x d float32 matrix;
  exact single-query search cannot beat bytes / bandwidth;
- per backend and size: build seconds, bytes per vector of its search structure (raw vectors
  kept for re-scoring and rebuilds live on disk beside it), mean single-query latency, batched
  queries per second, and Recall@10 against exact search on the same queries.
Random unit vectors have no cluster structure: the hardest case for approximate indexes.
Prints a Markdown table. Slow backends are skipped above the size their row names.
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch

from cirlab.index import build_index

# backend spec -> the largest size it is run at (a k-d tree or per-query LSH scan at 1M is minutes per batch)
DEFAULT_BACKENDS = {
    "exact": 10**9,
    "knn": 10**9,
    "kdtree": 10**5,
    "lsh:bits=512,candidates=200": 10**5,
    "kmeans_svm:k=15,probe=2": 10**9,
    "faiss:Flat": 10**9,
    "faiss:HNSW32,ef=256": 10**9,
    "faiss:IVF1024,Flat,nprobe=64": 10**9,
    "faiss:IVF1024,PQ64,nprobe=64": 10**9,
}


def unit_vectors(n: int, d: int, seed: int, chunk: int = 100_000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.empty((n, d), np.float32)
    for s in range(0, n, chunk):
        x = rng.standard_normal((min(chunk, n - s), d), dtype=np.float32)
        out[s:s + len(x)] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def bandwidth(x: np.ndarray, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        x.sum(axis=0)
        best = min(best, time.perf_counter() - t)
    return x.nbytes / best / 1e9


def structure_bytes(index) -> int:
    state = index.state()
    if state:
        return sum(np.asarray(v).nbytes for k, v in state.items() if k not in ("planes", "coef", "intercept", "classes"))
    return index.vectors.nbytes  # exact, knn, kdtree search the raw vectors themselves


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--single", type=int, default=20, help="single queries timed one at a time")
    ap.add_argument("--backends", nargs="+", default=None)
    a = ap.parse_args()
    backends = {b: 10**9 for b in a.backends} if a.backends else DEFAULT_BACKENDS
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    queries = unit_vectors(a.queries, a.dim, seed=1)
    rows = []
    for n in a.sizes:
        vectors = unit_vectors(n, a.dim, seed=0)
        ids = [str(i) for i in range(n)]
        gbs = bandwidth(vectors)
        bound_ms = vectors.nbytes / (gbs * 1e9) * 1e3
        print(f"\nn={n:,}: numpy pass {gbs:.1f} GB/s -> single-query bound {bound_ms:.2f} ms", flush=True)
        truth = None
        for spec, limit in backends.items():
            if n > limit:
                rows.append((n, spec, "skipped", "", "", "", "", ""))
                continue
            index = build_index(spec, a.dim)
            t = time.perf_counter()
            index.add(ids, vectors)
            build = time.perf_counter() - t
            index.search(queries[:2], 10)  # warm up
            t = time.perf_counter()
            for q in queries[:a.single]:
                index.search(q[None], 10)
            single_ms = (time.perf_counter() - t) / a.single * 1e3
            t = time.perf_counter()
            found, _ = index.search(queries, 10)
            qps = len(queries) / (time.perf_counter() - t)
            if truth is None or spec == "exact":
                truth = found if spec == "exact" else build_exact_truth(vectors, queries)
            recall = np.mean([len(set(f) & set(g)) / 10 for f, g in zip(found, truth)])
            per_vec = structure_bytes(index) / n
            rows.append((n, spec, f"{build:.1f}", f"{per_vec:.0f}", f"{single_ms:.2f}", f"{qps:.0f}", f"{recall:.3f}",
                         f"{single_ms / bound_ms:.2f}x" if spec in ("exact", "faiss:Flat") else ""))
            print("  " + " | ".join(map(str, rows[-1])), flush=True)
            del index
    print("\n| vectors | backend | build s | bytes/vector | 1-query ms | batched QPS | Recall@10 | vs bound |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r[0]:,} | {r[1]} | " + " | ".join(r[2:]) + " |")


def build_exact_truth(vectors: np.ndarray, queries: np.ndarray) -> list[list[str]]:
    index = build_index("exact", vectors.shape[1])
    index.add([str(i) for i in range(len(vectors))], vectors)
    return index.search(queries, 10)[0]


if __name__ == "__main__":
    main()
