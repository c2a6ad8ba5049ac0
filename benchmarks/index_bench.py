"""Index backends at 10k, 100k and 1M vectors: build time, bytes per vector, latency, QPS, Recall@10.

    .venv/bin/python benchmarks/index_bench.py [--sizes 10000 100000 1000000] [--dim 512]
        [--data random embedding] [--queries 200] [--out benchmarks/results/index/index.md]

One run measures, on this machine and in this process:
- the memory-bandwidth bound: GB/s of a plain numpy pass (a sum) over the n x d float32 matrix;
  exact single-query search cannot beat bytes / bandwidth;
- per data set, size and backend: build seconds, bytes per vector of the search structure (the
  raw float32 vectors, kept for re-ranking and rebuilds, are counted where the backend searches
  them itself), mean single-query latency, batched queries per second over all queries at
  once, and Recall@10 against exact search on the same queries.
Query-time options (HNSW ``ef``, IVF ``nprobe``, ``rerank``, LSH ``candidates``) are swept on one
built index with ``tune``.

Two data sets, both unit vectors in ``--dim`` dimensions:
- ``random``: i.i.d. Gaussian directions. No structure at all: a true neighbour is barely closer
  than any other point (cosine ~0.23 at 1M x 512), the hardest case for any approximate index.
- ``embedding``: a power-law spectrum (variance 1/i along the i-th of 128 random orthogonal
  directions) plus 5% isotropic noise. Its PCA profile matches the gallery vectors cirlab's
  demo model makes of EmojiEdit (50% of the variance in ~10 directions, 90% in ~80; the script
  prints both), which is the structure approximate indexes exploit on real catalogues.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from cirlab.index import build_index

# (spec, query-time sweep, the largest size it runs at: a k-d tree or per-query LSH scan at 1M is minutes)
BACKENDS = [
    ("exact", {}, 10**9),
    ("knn", {}, 10**9),
    ("kdtree", {}, 10**5),
    ("lsh:bits=512", {"candidates": [200, 1000]}, 10**5),
    ("kmeans_svm:k=15", {"probe": [1, 2]}, 10**9),
    ("faiss:Flat", {}, 10**9),
    ("faiss:HNSW32", {"ef": [32, 64, 128, 256, 512]}, 10**9),
    ("faiss:IVF1024,Flat", {"nprobe": [16, 32, 64, 128]}, 10**9),
    ("faiss:IVF1024,PQ64,nprobe=64", {"rerank": [0, 100, 400]}, 10**9),
    ("faiss:IVF1024,PQ128x4fs,nprobe=32", {"rerank": [0, 100, 200, 400]}, 10**9),
]


def parse_backend(arg: str) -> tuple[str, dict, int]:
    """``SPEC`` or ``SPEC@key=v1/v2/...`` (a query-time sweep on one built index)."""
    spec, _, sweep = arg.partition("@")
    if not sweep:
        return spec, {}, 10**9
    key, _, values = sweep.partition("=")
    return spec, {key: [int(v) for v in values.split("/")]}, 10**9


def random_vectors(n: int, d: int, seed: int, chunk: int = 100_000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.empty((n, d), np.float32)
    for s in range(0, n, chunk):
        x = rng.standard_normal((min(chunk, n - s), d), dtype=np.float32)
        out[s:s + len(x)] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def embedding_vectors(n: int, d: int, seed: int, rank: int = 128, noise: float = 0.05,
                      chunk: int = 100_000) -> np.ndarray:
    basis = np.linalg.qr(np.random.default_rng(7).standard_normal((d, rank)))[0].T.astype(np.float32)
    scale = np.sqrt(1.0 / np.arange(1, rank + 1)).astype(np.float32)
    sigma = np.float32(noise * np.sqrt((scale ** 2).sum() / d))
    rng = np.random.default_rng(seed)
    out = np.empty((n, d), np.float32)
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        x = (rng.standard_normal((m, rank), dtype=np.float32) * scale) @ basis
        x += rng.standard_normal((m, d), dtype=np.float32) * sigma
        out[s:s + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


DATA = {"random": random_vectors, "embedding": embedding_vectors}


def pca_profile(x: np.ndarray, sample: int = 5000) -> str:
    x = x[:sample] - x[:sample].mean(0)
    var = np.linalg.svd(x, compute_uv=False) ** 2
    cum = np.cumsum(var) / var.sum()
    return ", ".join(f"{int(p * 100)}% in {int(np.searchsorted(cum, p)) + 1}" for p in (0.5, 0.9, 0.99))


def bandwidth(x: np.ndarray, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        x.sum(axis=0)
        best = min(best, time.perf_counter() - t)
    return x.nbytes / best / 1e9


def structure_bytes(index) -> int:
    """Bytes held in memory to search: the backend's own structure, plus the raw vectors where it
    scans them itself (exact, knn, kdtree, kmeans_svm). Backends that only re-rank a few candidates
    from the raw rows (lsh, faiss with rerank) memory-map them from disk once loaded."""
    state = index.state()
    own = sum(np.asarray(v).nbytes for k, v in state.items() if k not in ("planes", "coef", "intercept", "classes"))
    return own + (0 if getattr(index, "raw_vectors_on_disk", False) else index.vectors.nbytes)


def sweep_points(sweep: dict) -> list[dict]:
    if not sweep:
        return [{}]
    (key, values), = sweep.items()
    return [{key: v} for v in values]


def label(spec: str, opts: dict) -> str:
    if not opts:
        return spec
    extra = ",".join(f"{k}={v}" for k, v in opts.items())
    return f"{spec}{',' if ':' in spec else ':'}{extra}"


def measure(index, queries: np.ndarray, single: int) -> tuple[float, float, list]:
    index.search(queries[:2], 10)  # warm up
    t = time.perf_counter()
    for q in queries[:single]:
        index.search(q[None], 10)
    single_ms = (time.perf_counter() - t) / single * 1e3
    t = time.perf_counter()
    found, _ = index.search(queries, 10)
    return single_ms, len(queries) / (time.perf_counter() - t), found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--data", nargs="+", choices=sorted(DATA), default=["random", "embedding"])
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--single", type=int, default=20, help="single queries timed one at a time")
    ap.add_argument("--backends", nargs="+", default=None,
                    help="specs to run, SPEC or SPEC@option=v1/v2 to sweep a query-time option (default: the built-in "
                         "list; put exact first: the other rows' speed-ups are relative to it)")
    ap.add_argument("--out", type=Path, default=None, help="also write the report (Markdown) here")
    a = ap.parse_args()
    backends = [parse_backend(b) for b in a.backends] if a.backends else BACKENDS
    lines = [f"machine: {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
             f"command: python benchmarks/{Path(__file__).name} {' '.join(sys.argv[1:])}"]
    print("\n".join(lines), flush=True)
    rows = []
    for data in a.data:
        queries = DATA[data](a.queries, a.dim, seed=1)
        for n in a.sizes:
            vectors = DATA[data](n, a.dim, seed=0)
            ids = [str(i) for i in range(n)]
            gbs = bandwidth(vectors)
            bound_ms = vectors.nbytes / (gbs * 1e9) * 1e3
            note = (f"{data} n={n:,}: numpy pass {gbs:.1f} GB/s -> single-query bound {bound_ms:.2f} ms; "
                    f"PCA {pca_profile(vectors)}")
            lines.append(note)
            print("\n" + note, flush=True)
            truth, exact_qps = None, None
            for spec, sweep, limit in backends:
                if n > limit:
                    continue
                index = build_index(spec, a.dim)
                t = time.perf_counter()
                index.add(ids, vectors)
                build = time.perf_counter() - t
                per_vec = structure_bytes(index) / n
                for opts in sweep_points(sweep):
                    if opts:
                        index.tune(**opts)
                    single_ms, qps, found = measure(index, queries, a.single)
                    if truth is None:
                        truth = found if spec == "exact" else exact_truth(vectors, queries)
                    if spec == "exact":
                        exact_qps = qps
                    recall = np.mean([len(set(f) & set(g)) / 10 for f, g in zip(found, truth)])
                    rows.append({"data": data, "n": n, "backend": label(spec, opts), "build_s": build,
                                 "bytes": per_vec, "single_ms": single_ms, "qps": qps, "recall": recall,
                                 "x_exact": qps / exact_qps if exact_qps else float("nan"),
                                 "vs_bound": single_ms / bound_ms if spec in ("exact", "faiss:Flat") else None})
                    r = rows[-1]
                    print(f"  {r['backend']}: build {build:.1f}s, {per_vec:.0f} B/vec, {single_ms:.2f} ms, "
                          f"{qps:.0f} QPS ({r['x_exact']:.1f}x exact), R@10 {recall:.3f}", flush=True)
                del index
    table = ["| data | vectors | backend | build s | bytes/vector | 1-query ms | batched QPS | x exact QPS | Recall@10 "
             "| 1-query vs bound |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        bound = f"{r['vs_bound']:.2f}x" if r["vs_bound"] is not None else ""
        table.append(f"| {r['data']} | {r['n']:,} | {r['backend']} | {r['build_s']:.1f} | {r['bytes']:.0f} | "
                     f"{r['single_ms']:.2f} | {r['qps']:.0f} | {r['x_exact']:.1f} | {r['recall']:.3f} | {bound} |")
    summary = []
    for data in a.data:
        for n in a.sizes:
            here = [r for r in rows if r["data"] == data and r["n"] == n and r["backend"] != "exact"]
            fast = [r for r in here if r["recall"] >= 0.95 and r["x_exact"] >= 10]
            small = [r for r in here if r["bytes"] <= 128]
            best = max(fast, key=lambda r: r["qps"]) if fast else None
            smallest = max(small, key=lambda r: r["recall"]) if small else None
            summary.append(f"- {data} {n:,}: Recall@10 >= 0.95 at >= 10x exact QPS: "
                           + (f"{best['backend']} ({best['recall']:.3f}, {best['x_exact']:.1f}x)" if best else "none")
                           + "; <= 128 B/vector: "
                           + (f"{smallest['backend']} ({smallest['bytes']:.0f} B, Recall@10 {smallest['recall']:.3f})"
                              if smallest else "none"))
    report = "\n".join(lines + [""] + table + ["", "Targets:"] + summary) + "\n"
    print("\n" + report)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(report)


def exact_truth(vectors: np.ndarray, queries: np.ndarray) -> list[list[str]]:
    index = build_index("exact", vectors.shape[1])
    index.add([str(i) for i in range(len(vectors))], vectors)
    return index.search(queries, 10)[0]


if __name__ == "__main__":
    main()
