"""What a zero-shot query costs in the server, next to the supervised ``sum`` on the same encoders.

    .venv/bin/python benchmarks/zero_shot_latency.py [--work data/zero_shot/emojiedit] [--data data/emojiedit]
        [--requests 200] [--out benchmarks/results/zero_shot/zero-shot-latency.md]

It serves the seed-0 checkpoints that ``benchmarks/zero_shot.py`` keeps under ``--work``/models (run that first):
for each, an exact index over the data set's images (embedded once into the feature cache), a real ``cirlab serve``
process, and one client that sends ``--requests`` searches one after another, each a gallery image as the reference
(``image_id``) with a text new to the server, after 10 unmeasured ones. Every method pays one text encoding a query
(``sum`` reads the text alone; the pseudo-word methods read a prompt with the reference's word in it, through the
text network exported with the word as one more input, ``word_network``; the text-shift proxy reads its edited
caption, and the words it compares once each), so the difference is the method's own work. OTI
optimises its word for each query, so it gets ``--requests`` / 10 and is reported apart. Reported: client-side
p50 / p99 in ms, the p50's difference to ``sum``, and the server's median encode and fuse stage times.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from _report import save_report
from latency_budget import fresh_texts, measure

ROOT = Path(__file__).resolve().parent.parent
METHODS = ("sum (supervised)", "zs_sum", "zs_slerp", "zs_weighted", "zs_product", "zs_text_shift", "pic2word", "lincir",
           "zs_oti")


def indexed(model: Path, gallery: Path, folder: Path, cache: Path) -> None:
    """An exact index of ``gallery`` built by ``model``'s pipeline (features from the shared cache)."""
    from cirlab.api import Pipeline
    from cirlab.index import read_manifest, save_index
    from cirlab.indexing import index_gallery

    pipe = Pipeline.load(model, cache)
    if (folder / "CURRENT").is_file() and read_manifest(folder)[0].get("model") == pipe.identity:
        return
    index, _ = index_gallery(pipe, gallery, "exact", progress=False)
    save_index(index, folder, pipe.identity)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, default=ROOT / "data" / "zero_shot" / "emojiedit")
    ap.add_argument("--data", type=Path, default=ROOT / "data" / "emojiedit")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--k", type=int, default=12)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from cirlab.serve.launch import start_server, stop_server

    import httpx

    cache = a.work / "cache"
    texts = fresh_texts(len(METHODS) * (a.requests + 10), 1)
    rows = []
    for name in METHODS:
        model = a.work / "models" / f"{name.split()[0]}-seed0.pt"
        if not model.is_file():
            raise SystemExit(f"{model} is missing: run benchmarks/zero_shot.py --data {a.data} first")
        folder = a.work / "latency" / ("index-" + name.split()[0])
        indexed(model, a.data / "images", folder, cache)
        server, base = start_server(["--index", folder, "--model", model, "--cache", cache],
                                    env={**os.environ, "CIRLAB_HOME": str(a.work / "latency")})
        try:
            ids = [x["id"] for x in httpx.get(base + "/gallery", params={"limit": 100, "random": 1, "seed": 0}
                                              ).json()["items"]]
            n = max(10, a.requests // 10) if name == "zs_oti" else a.requests
            row = {"method": name, **measure(base, "image_id", n, ids, [], texts, a.k)}
        finally:
            stop_server(server, timeout=30)
        rows.append(row)
        print(row, flush=True)
    base_p50 = rows[0]["p50_ms"]
    report = (f"command: python benchmarks/zero_shot_latency.py {' '.join(sys.argv[1:])}\n\n"
              "One client, searches one after another, each a gallery image as the reference with a text new to the "
              f"server, k={a.k}, an exact index over {a.data.name}'s images; the seed-0 checkpoints of "
              "benchmarks/zero_shot.py (the offline aligned stand-in: EfficientNet-Lite0 + MiniLM and the aligned "
              "stage-1 projections). Client-side latency over loopback HTTP; the server's median stage times from "
              "Server-Timing. The target: a zero-shot query adds at most 2 ms over `sum` at p50; OTI apart.\n\n"
              "| method | requests | p50 ms | p99 ms | p50 over sum | encode | fuse | server total |\n"
              "|---|---:|---:|---:|---:|---:|---:|---:|\n")
    for r in rows:
        s = r["server_ms"]
        report += (f"| {r['method']} | {r['requests']} | {r['p50_ms']} | {r['p99_ms']} | "
                   f"{r['p50_ms'] - base_p50:+.1f} | " + " | ".join(str(s.get(x, "")) for x in ("encode", "fuse", "total"))
                   + " |\n")
    timed = [r for r in rows[1:] if r["method"] != "zs_oti"]
    within = [r["method"] for r in timed if r["p50_ms"] - base_p50 <= 2.0]
    over = [r["method"] for r in timed if r["method"] not in within]
    report += f"\nWithin 2 ms of `sum` at p50: {', '.join(within) or 'none'}; over: {', '.join(over) or 'none'}.\n"
    save_report(report, a.out or ROOT / "benchmarks" / "results" / "zero_shot" / "zero-shot-latency.md",
                {"rows": rows, "sum_p50_ms": base_p50,
                 "p50_over_sum": {r["method"]: round(r["p50_ms"] - base_p50, 1) for r in rows}})


if __name__ == "__main__":
    main()
