"""Qdrant Edge's filtered HNSW recall by point-id scheme and search parameters, on real gallery vectors.

    .venv/bin/python benchmarks/edge_filtered_recall.py --ids uuid [--size 100000] [--source DIR]

Builds one Edge shard (HNSW m=16, ef_construct 100, an integer payload index on ``part`` = row % 3) over the first
``--size`` vectors of the latency budget's exact index, with point ids that are the rows in order (``rows``), the
UUID-5 of each cirlab id (``uuid``, what the ``qdrant`` backend uses) or a 63-bit hash of it (``hash``). 200 queries
(gallery vectors) search with the filter ``part == 1`` (a third of the rows) under the default parameters, larger
``hnsw_ef`` and ACORN; Recall@10 is against the exact filtered top 10. Latencies are this machine's, batched.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import qdrant_edge as qe

from cirlab.index import load_index
from cirlab.index.qdrant import point_id

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ids", choices=["rows", "uuid", "hash"], default="uuid")
    ap.add_argument("--size", type=int, default=100_000)
    ap.add_argument("--source", type=Path, default=ROOT / "data" / "latency_budget" / "index-exact")
    a = ap.parse_args()
    src, _ = load_index(a.source)
    vectors, ids = np.asarray(src.vectors[:a.size], np.float32), src.ids[:a.size]
    part = np.arange(len(ids)) % 3
    queries = vectors[np.random.default_rng(0).choice(len(ids), 200, replace=False)]
    keep = np.where(part == 1)[0]
    truth = [set(keep[np.argsort(-(vectors[keep] @ q))[:10]]) for q in queries]
    points = {"rows": list(range(len(ids))), "uuid": [point_id(i) for i in ids],
              "hash": [int.from_bytes(uuid.UUID(point_id(i)).bytes[:8], "big") >> 1 for i in ids]}[a.ids]
    back = {str(p): n for n, p in enumerate(points)}
    folder = Path(tempfile.mkdtemp(prefix="edge-recall-")) / "shard"
    hnsw = qe.HnswIndexConfig(m=16, ef_construct=100, full_scan_threshold=10_000)
    shard = qe.EdgeShard.create(str(folder), qe.EdgeConfig(
        vectors=qe.EdgeVectorParams(size=vectors.shape[1], distance=qe.Distance.Cosine), hnsw_config=hnsw,
        optimizers=qe.EdgeOptimizersConfig(indexing_threshold=1)))
    shard.update(qe.UpdateOperation.create_field_index("part", qe.PayloadSchemaType.Integer))
    for s in range(0, len(ids), 512):
        shard.update(qe.UpdateOperation.upsert_points([qe.Point(points[n], vectors[n].tolist(), {"part": int(part[n])})
                                                       for n in range(s, min(len(ids), s + 512))]))
    start = time.perf_counter()
    shard.optimize()
    shard.flush()
    print(f"ids {a.ids}, {len(ids):,} points: graph built in {time.perf_counter() - start:.0f} s", flush=True)
    flt = qe.Filter(must=[qe.FieldCondition(key="part", match=qe.MatchValue(1))])
    for label, params in [("default", None), ("hnsw_ef=256", qe.SearchParams(hnsw_ef=256)),
                          ("hnsw_ef=1024", qe.SearchParams(hnsw_ef=1024)),
                          ("ACORN", qe.SearchParams(acorn=qe.AcornSearchParams(enable=True)))]:
        start = time.perf_counter()
        got = shard.query_batch(qe.QueryBatchRequest([qe.QueryRequest(limit=10, query=qe.Query.Nearest(q), filter=flt,
                                                                      params=params, with_payload=False)
                                                      for q in queries.tolist()]))
        ms = (time.perf_counter() - start) / len(queries) * 1e3
        recall = np.mean([len({back[str(p.id)] for p in r} & t) / 10 for r, t in zip(got, truth)])
        print(f"| {a.ids} | {label} | {recall:.4f} | {ms:.2f} |", flush=True)
    shard.close()
    shutil.rmtree(folder.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
