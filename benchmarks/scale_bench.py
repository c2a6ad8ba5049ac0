"""Scale-out pieces on one machine: the local build engine against Ray Data, and the vector-database
backend (Qdrant's local mode) against the exact index.

    .venv/bin/python benchmarks/scale_bench.py [--images 2048] [--workers 1,2] [--sizes 10000,100000]
        [--queries 200] [--out benchmarks/results/index/scale_bench.md]

Part 1, engines: ``cirlab index build`` over the first ``--images`` Twemoji PNGs of serve_load's
gallery (CC-BY 4.0, Twitter/X and contributors; built by ``benchmarks/serve_load.py``), with the
demo model, into a fresh feature cache each time, by the local engine and by Ray with each worker
count. Reported: wall seconds of the whole command, Ray's start-up (``ray.init`` to the first
dataset), the embedding phase and images per second of that phase.

Part 2, vector database: the real gallery vectors of the latency budget's 100k index
(``benchmarks/latency_budget.py`` builds it), the first N for each size. Built over them, each in a
fresh folder: ``exact``, ``faiss:HNSW32``, Qdrant Edge (Qdrant's engine embedded) without a graph
(``m=0``, every search a full scan) and with HNSW (``m=16``, then also queried with ``exact=1``), and
qdrant-client's local mode on disk (``local=1``). Each is timed on ``--queries`` gallery vectors as
queries, one at a time, unfiltered and with a filter that keeps a third of the rows (a payload
index on the field). Recall@10 is against the exact index on the same queries. Disk: the saved
cirlab index plus the engine's own folder.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _report import save_report

ROOT = Path(__file__).resolve().parent.parent


def engines(a) -> list[dict]:
    source = ROOT / "data" / "serve_load" / "gallery"
    files = sorted(source.glob("*.png"))[:a.images]
    if len(files) < a.images:
        raise SystemExit(f"{source} has {len(files)} images; run benchmarks/serve_load.py first")
    work = Path(tempfile.mkdtemp(prefix="scale_bench-"))
    gallery = work / "gallery"
    gallery.mkdir()
    for f in files:
        os.link(f, gallery / f.name) if f.stat().st_dev == work.stat().st_dev else shutil.copy(f, gallery)
    rows = []
    runs = [("local", [])] + [(f"ray, {w} worker{'s' * (w > 1)}", ["--engine", "ray", "--workers", str(w)])
                             for w in map(int, a.workers.split(","))]
    for label, extra in runs:
        cache = work / f"cache-{len(rows)}"
        cmd = [sys.executable, "-m", "cirlab.cli", "index", "build", str(gallery), "--out", str(work / f"ix-{len(rows)}"),
               "--quiet", "--cache", str(cache), *extra]
        start = time.perf_counter()
        r = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if r.returncode:
            raise SystemExit(r.stderr[-2000:])
        phases = {k: float(v) for k, v in re.findall(r"(\w+) ([\d.]+) s", r.stdout.splitlines()[-1])}
        row = {"engine": label, "images": len(files), "wall_s": round(wall, 1), "ray_start_s": phases.get("ray_start"),
               "embed_s": round(phases["embed"], 1), "images_per_s": round(len(files) / phases["embed"], 1)}
        rows.append(row)
        print(row, flush=True)
    shutil.rmtree(work, ignore_errors=True)
    return rows


def timed(index, queries: np.ndarray, k: int, where: dict | None, budget_s: float) -> tuple[list[list[str]], np.ndarray]:
    """One query at a time, until all are done or ``budget_s`` seconds have gone (at least 20 queries)."""
    ids, times = [], []
    stop = time.perf_counter() + budget_s
    for n, q in enumerate(queries):
        if n >= 20 and time.perf_counter() > stop:
            break
        t = time.perf_counter()
        found, _ = index.search(q[None], k, where)
        times.append(time.perf_counter() - t)
        ids += found
    return ids, np.array(times) * 1e3


def folder_bytes(path: Path) -> int:
    """Bytes the files of a folder take on disk (allocated blocks: Qdrant's segment and WAL files are sparse, their
    apparent size is far larger)."""
    return sum(f.stat().st_blocks * 512 for f in Path(path).rglob("*") if f.is_file()) if Path(path).exists() else 0


BACKENDS = {"exact": "exact", "faiss:HNSW32": "faiss:HNSW32", "qdrant Edge, m=0": "qdrant:m=0,path={work}/edge",
            "qdrant Edge, HNSW m=16": "qdrant:path={work}/edge", "qdrant local mode": "qdrant:local=1,path={work}/local"}


def databases(a) -> list[dict]:
    from cirlab.index import build_index, load_index, save_index

    source, _ = load_index(a.source)
    rows = []
    for size in map(int, a.sizes.split(",")):
        if size > len(source):
            raise SystemExit(f"the latency budget's index has {len(source)} vectors; run benchmarks/latency_budget.py")
        ids, vectors = source.ids[:size], np.asarray(source.vectors[:size])
        meta = [{"part": n % 3} for n in range(size)]
        queries = vectors[np.random.default_rng(0).choice(size, a.queries, replace=False)]
        exact = build_index("exact", source.dim)
        exact.add(ids, vectors, meta)
        truth = {str(w): exact.search(queries, 10, w)[0] for w in (None, {"part": 1})}
        for name, template in [(n, t) for n, t in BACKENDS.items() if not a.only or n in a.only.split(";")]:
            work = Path(tempfile.mkdtemp(prefix="scale_bench-db-"))
            spec = template.format(work=work)
            start = time.perf_counter()
            index = exact if spec == "exact" else build_index(spec, source.dim)
            if spec != "exact":
                index.add(ids, vectors, meta)
            build = time.perf_counter() - start
            save_index(index, work / "saved")  # what cirlab writes, then the engine's own folder
            engine = getattr(getattr(index, "engine", None), "folder", None) or (work / "local" if "local" in spec else None)
            disk = folder_bytes(work / "saved") + (folder_bytes(engine) if engine else 0)
            for label, where, tune in (("none", None, {}), ("a third", {"part": 1}, {}),
                                       *((("none, exact=1", None, {"exact": True}), ("a third, exact=1", {"part": 1},
                                          {"exact": True})) if "HNSW m=16" in name else ())):
                if tune:
                    index.tune(**tune)
                found, ms = timed(index, queries, 10, where, a.budget)
                recall = np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth[str(where)][:len(found)])])
                row = {"size": size, "backend": name,
                       "filter": label, "build_s": round(build, 1), "disk_mb": round(disk / 2 ** 20, 1),
                       "p50_ms": round(float(np.percentile(ms, 50)), 2), "p99_ms": round(float(np.percentile(ms, 99)), 2),
                       "recall_at_10": round(float(recall), 4), "queries": len(found)}
                rows.append(row)
                print(row, flush=True)
            if hasattr(index, "close"):
                index.close()
            shutil.rmtree(work, ignore_errors=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=2048)
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--budget", type=float, default=60, help="seconds of queries per backend, filter and size (at least 20)")
    ap.add_argument("--source", type=Path, default=ROOT / "data" / "latency_budget" / "index-exact",
                    help="the index whose vectors part 2 reads (default: the latency budget's 100k gallery)")
    ap.add_argument("--skip", choices=["engines", "databases"], default=None)
    ap.add_argument("--only", default=None, metavar="NAMES",
                    help=f"part 2: only these backends, ';'-separated, of: {'; '.join(BACKENDS)}")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    eng = engines(a) if a.skip != "engines" else []
    dbs = databases(a) if a.skip != "databases" else []
    report = f"command: python benchmarks/scale_bench.py {' '.join(sys.argv[1:])}\n\n"
    if eng:
        report += ("Build engines (`cirlab index build`, demo model, fresh feature cache each run, 2 cores):\n\n"
                   "| engine | images | wall s | Ray start s | embed s | images/s (embed) |\n|---|---:|---:|---:|---:|---:|\n")
        for r in eng:
            start = r["ray_start_s"] if r["ray_start_s"] is not None else ""
            report += f"| {r['engine']} | {r['images']:,} | {r['wall_s']} | {start} | {r['embed_s']} | {r['images_per_s']} |\n"
    if dbs:
        report += ("\nBackends over the demo model's real gallery vectors (512-d), one query at a time, k=10; recall "
                   "against exact on the same queries; disk = the saved index and the engine's folder:\n\n| vectors | backend | "
                   "filter | queries | build s | disk MB | p50 ms | p99 ms | Recall@10 |\n"
                   "|---:|---|---|---:|---:|---:|---:|---:|---:|\n")
        for r in dbs:
            report += (f"| {r['size']:,} | {r['backend']} | {r['filter']} | {r['queries']} | {r['build_s']} | "
                       f"{r['disk_mb']} | {r['p50_ms']} | "
                       f"{r['p99_ms']} | "
                       f"{r['recall_at_10']} |\n")
    save_report(report, a.out, {"engines": eng, "databases": dbs})


if __name__ == "__main__":
    main()
