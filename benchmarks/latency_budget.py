"""The latency budget of one search at 100k images: a single client's p50 / p99 by kind of query.

    .venv/bin/python benchmarks/latency_budget.py [--images 100000] [--requests 300]
        [--backends 'exact;faiss:HNSW32'] [--model CKPT] [--serve-args "..."] [--rerank SPEC]
        [--out benchmarks/results/serving/latency_budget.md]

The gallery is serve_load's (Twemoji PNGs, CC-BY 4.0, Twitter/X and contributors) extended with
more variants of each emoji (rotations, scales, shifts, backgrounds) to ``--images`` files in
``data/latency_budget/gallery``. It is embedded once with the model (default: the one ``make demo``
trains) into an exact index; each other backend is built from the exact index's vectors (no
second encoding). For each backend a ``cirlab serve`` process is started, and one client sends
``--requests`` searches of each kind, one after another, after a short warm-up:

- ``upload``: an uploaded reference PNG (decoded and encoded by the server) and a text;
- ``image_id``: a gallery image as the reference (its stored features are read) and a text;
- ``text``: a text alone;
- ``image_id, repeated text``: as ``image_id``, with texts the server has seen (its text cache).

Every text of the first three kinds is new to the server, so each pays a text encoding. Reported:
client-side p50 / p90 / p99 in ms, and the server's median stage times from ``Server-Timing``. With ``--rerank``,
each backend is measured again with that second model reordering the top candidates (``cirlab serve --rerank``): its
``rerank`` stage is its own query composition; reading and scoring its candidates falls in ``search``.
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
import sys
import time
from pathlib import Path

import httpx
import numpy as np

from _report import save_report
from serve_load import TEXTS, build_gallery

ROOT = Path(__file__).resolve().parent.parent
STAGES = ("decode", "queue", "encode", "fuse", "search", "rerank", "total")
KINDS = ("upload", "image_id", "text", "image_id, repeated text")
EDITS = ["make it red", "make it blue", "a green one", "turn it yellow", "in orange", "make it purple",
         "give it a dark skin tone", "with a medium skin tone", "a lighter skin tone", "make it a woman",
         "same but a man", "a gender-neutral person", "facing right", "facing left", "a bit bigger",
         "with a white background", "on a grey background", "tilted a little", "mirrored"]


def fresh_texts(n: int, seed: int) -> list[str]:
    """``n`` distinct modification texts (pairs and triples of edits), shuffled."""
    pool = [", ".join(c) for r in (2, 3) for c in itertools.permutations(EDITS, r)]
    random.Random(seed).shuffle(pool)
    return pool[:n]


def build_indexes(gallery: Path, work: Path, backends: list[str], model: str | None) -> dict[str, Path]:
    """One saved index per backend spec, over the same vectors (encoded once, into the exact index)."""
    from cirlab.api import Pipeline
    from cirlab.index import build_index, load_index, read_manifest, save_index

    pipe = Pipeline.load(model)
    folders = {}
    exact = work / "index-exact"
    if not ((exact / "CURRENT").is_file() and read_manifest(exact)[0].get("model") == pipe.identity):
        print(f"embedding {gallery} (once; cached) ...", flush=True)
        t = time.perf_counter()
        from cirlab.indexing import index_gallery
        index, failed = index_gallery(pipe, gallery, "exact")
        save_index(index, exact, pipe.identity)
        print(f"embedded {len(index):,} images in {time.perf_counter() - t:.0f} s ({len(failed)} unreadable)", flush=True)
    for spec in backends:
        folder = exact if spec == "exact" else work / ("index-" + spec.replace(":", "-").replace(",", "-").replace("=", ""))
        if spec != "exact" and not ((folder / "CURRENT").is_file() and read_manifest(folder)[0].get("model") == pipe.identity):
            source, _ = load_index(exact)
            t = time.perf_counter()
            index = build_index(spec, source.dim)
            index.add(source.ids, np.asarray(source.vectors), source.metadata)
            save_index(index, folder, pipe.identity)
            print(f"built {spec} over {len(index):,} vectors in {time.perf_counter() - t:.0f} s", flush=True)
        folders[spec] = folder
    return folders


def server_timing(header: str) -> dict[str, float]:
    out = {}
    for part in header.split(","):
        name, _, dur = part.strip().partition(";dur=")
        if dur:
            out[name] = float(dur)
    return out


def measure(base: str, kind: str, n: int, ids: list[str], uploads: list[bytes], texts: list[str], k: int) -> dict:
    """``n`` searches of one kind from one client (after 10 unmeasured ones): latency percentiles and
    the server's median stage times."""
    rng = random.Random(kind)
    seen = TEXTS  # texts the warm-up sent, so the server has them cached
    latencies, stages, errors = [], {s: [] for s in STAGES}, 0
    with httpx.Client(base_url=base, timeout=60) as http:
        for i in range(-10, n):
            text = rng.choice(seen) if kind == "image_id, repeated text" or i < 0 else texts.pop()
            data, files = {"text": text, "k": str(k)}, None
            if kind == "upload":
                files = {"image": ("ref.png", rng.choice(uploads), "image/png")}
            elif kind.startswith("image_id"):
                data["image_id"] = rng.choice(ids)
            t = time.perf_counter()
            r = http.post("/search", data=data, files=files)
            dt = (time.perf_counter() - t) * 1e3
            if i < 0:
                continue
            if r.status_code != 200 or len(r.json()["results"]) != k:
                errors += 1
                print(f"error ({kind}): {r.status_code} {r.text[:160]}", flush=True)
                continue
            latencies.append(dt)
            for stage, ms in server_timing(r.headers.get("server-timing", "")).items():
                stages.setdefault(stage, []).append(ms)
    lat = np.array(latencies)
    return {"kind": kind, "requests": len(lat), "errors": errors,
            **{f"p{q}_ms": round(float(np.percentile(lat, q)), 1) for q in (50, 90, 99)},
            "server_ms": {s: round(float(np.median(v)), 2) for s, v in stages.items() if v}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=100_000)
    ap.add_argument("--requests", type=int, default=300, help="measured searches per kind and backend")
    ap.add_argument("--backends", default="exact;faiss:HNSW32", help="';'-separated index specs (a spec may hold commas)")
    ap.add_argument("--model", default=None)
    ap.add_argument("--k", type=int, default=12)
    ap.add_argument("--serve-args", default="", help="extra 'cirlab serve' arguments, e.g. '--runtime torch'")
    ap.add_argument("--rerank", default=None, metavar="SPEC",
                    help="also measure each backend with this re-ranker ('cirlab serve --rerank SPEC'), in the same run")
    ap.add_argument("--work", type=Path, default=ROOT / "data" / "latency_budget")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    gallery = a.work / "gallery"
    build_gallery(gallery, a.images)
    backends = [s.strip() for s in a.backends.split(";") if s.strip()]
    folders = build_indexes(gallery, a.work, backends, a.model)

    from cirlab.serve.launch import start_server, stop_server

    uploads = [p.read_bytes() for p in sorted(gallery.glob("*.png"))[::max(1, a.images // 50)][:50]]
    runs = [(s, r) for s in backends for r in [None] + ([a.rerank] if a.rerank else [])]
    texts = fresh_texts(len(KINDS) * a.requests * len(runs), 0)  # every measured search a new text
    rows = []
    for spec, rerank in runs:
        server, base = start_server(["--index", folders[spec]] + (["--model", a.model] if a.model else [])
                                    + a.serve_args.split() + (["--rerank", rerank] if rerank else []))
        try:
            info = httpx.get(base + "/info").json()
            ids = [x["id"] for x in httpx.get(base + "/gallery", params={"limit": 100, "random": 1, "seed": 0}).json()["items"]]
            for kind in KINDS:
                row = {"backend": spec + (f", re-ranked by {info['rerank']['method']} (top "
                                          f"{info['rerank']['candidates']})" if rerank else ""),
                       "gallery": info["index"]["size"], "runtime": info["encoders"]["runtime"],
                       **measure(base, kind, a.requests, ids, uploads, texts, a.k)}
                rows.append(row)
                print(row, flush=True)
        finally:
            stop_server(server, timeout=30)
    report = (f"command: python benchmarks/latency_budget.py {' '.join(sys.argv[1:])}\n\n"
              f"One client, searches one after another, k={a.k}; client-side latency over loopback HTTP, and the "
              "server's median stage times (Server-Timing). Texts are new to the server except in the last kind.\n\n"
              "| backend | gallery | query | requests | p50 ms | p90 ms | p99 ms | decode | encode | fuse | search | "
              "rerank | server total |\n|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
    for r in rows:
        s = r["server_ms"]
        report += (f"| {r['backend']} | {r['gallery']:,} | {r['kind']} | {r['requests']} | {r['p50_ms']} | {r['p90_ms']} | "
                   f"{r['p99_ms']} | " + " | ".join(str(s.get(x, "")) for x in ("decode", "encode", "fuse", "search", "rerank",
                                                                  "total"))
                   + " |\n")
    save_report(report, a.out, {"rows": rows, "images": a.images})


if __name__ == "__main__":
    main()
