"""Qdrant Edge's filtered HNSW recall by point-id scheme and search parameters, on real gallery vectors.

    .venv/bin/python benchmarks/edge_filtered_recall.py --ids rows,uuid,hash [--size 100000] [--source DIR] [--out F]

Builds one Edge shard (HNSW m=16, ef_construct 100, an integer payload index on ``part`` = row % 3) over the first
``--size`` vectors of the latency budget's exact index, with point ids that are the rows in order (``rows``), the
UUID-5 of each cirlab id (``uuid``, what the ``qdrant`` backend uses) or a 63-bit hash of it (``hash``). 200 queries
(gallery vectors) search with the filter ``part == 1`` (a third of the rows) under the default parameters, larger
``hnsw_ef`` and ACORN; Recall@10 is against the exact filtered top 10. Latencies are this machine's, batched.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys
import tempfile
import time
import uuid
from importlib.metadata import version
from pathlib import Path

import numpy as np
import qdrant_edge as qe

from _report import save_report
from cirlab.index import load_index
from cirlab.index.qdrant import point_id

ROOT = Path(__file__).resolve().parent.parent
SCHEMES = ("rows", "uuid", "hash")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ids", default="uuid", help=f"comma-separated point-id schemes of {SCHEMES}")
    ap.add_argument("--size", type=int, default=100_000)
    ap.add_argument("--source", type=Path, default=ROOT / "data" / "latency_budget" / "index-exact")
    ap.add_argument("--out", type=Path, help="save the table here (Markdown) and its rows beside it (.json)")
    a = ap.parse_args()
    schemes = a.ids.split(",")
    if bad := [s for s in schemes if s not in SCHEMES]:
        ap.error(f"unknown --ids {bad}: pick from {', '.join(SCHEMES)}")
    src, _ = load_index(a.source)
    vectors, ids = np.asarray(src.vectors[:a.size], np.float32), src.ids[:a.size]
    part = np.arange(len(ids)) % 3
    queries = vectors[np.random.default_rng(0).choice(len(ids), 200, replace=False)]
    keep = np.where(part == 1)[0]
    truth = [set(keep[np.argsort(-(vectors[keep] @ q))[:10]]) for q in queries]
    rows = [row for scheme in schemes for row in measure(scheme, vectors, ids, part, queries, truth)]
    command = "python benchmarks/edge_filtered_recall.py " + shlex.join(sys.argv[1:])
    text = "\n".join([
        f"# Qdrant Edge: filtered HNSW recall by point-id scheme ({len(ids):,} real gallery vectors)", "",
        f"Command: `{command}`", "",
        f"qdrant-edge-py {version('qdrant-edge-py')}; HNSW m=16, ef_construct 100; the filter keeps a third "
        "of the rows (`part == 1`); 200 gallery vectors as queries; Recall@10 against the exact filtered top 10; "
        "ms = batched wall time per query on this machine. `uuid` is what the `qdrant` backend's ids are.", "",
        "| ids | build s | search | Recall@10 | ms/query |", "|---|---:|---|---:|---:|",
        *[f"| {r['ids']} | {r['build_s']:.0f} | {r['search']} | {r['recall@10']:.4f} | {r['ms']:.2f} |" for r in rows],
        ""])
    save_report(text, a.out, {"command": command, "size": len(ids), "rows": rows})


def measure(scheme: str, vectors: np.ndarray, ids: list, part: np.ndarray, queries: np.ndarray,
            truth: list[set]) -> list[dict]:
    """Build one shard with ``scheme``'s point ids and measure filtered recall under each search setting."""
    points = {"rows": list(range(len(ids))), "uuid": [point_id(i) for i in ids],
              "hash": [int.from_bytes(uuid.UUID(point_id(i)).bytes[:8], "big") >> 1 for i in ids]}[scheme]
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
    build = time.perf_counter() - start
    print(f"ids {scheme}, {len(ids):,} points: graph built in {build:.0f} s", file=sys.stderr, flush=True)
    rows = []
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
        rows.append({"ids": scheme, "build_s": round(build, 1), "search": label, "recall@10": float(recall),
                     "ms": round(ms, 3)})
    shard.close()
    shutil.rmtree(folder.parent, ignore_errors=True)
    return rows


if __name__ == "__main__":
    main()
