"""Load on ``cirlab serve``: N concurrent clients for T seconds on loopback against a 10k-image gallery.

    .venv/bin/python benchmarks/serve_load.py [--clients 1,8] [--seconds 60] [--images 10000]
        [--model CKPT] [--upload-fraction 0.1] [--label NAME] [--serve-args "..."]
        [--out benchmarks/results/serving/serve_load.md]

The gallery: the 4,009 Twemoji PNGs (CC-BY 4.0, Twitter/X and contributors), each as drawn, mirrored
and on a tinted background, until ``--images`` files exist (``data/serve_load/gallery``). It is
embedded with the model (default: the one ``make demo`` trains) into an exact index; both are
built once and reused. The server runs as its own process (``cirlab serve``); each client is a
thread with its own HTTP connection that sends, back to back, ``POST /search`` with a random
gallery reference (``image_id``) and a random EmojiEdit-style modification text, or with
probability ``--upload-fraction`` an uploaded reference image instead. Reported: requests per
second, p50 / p95 / p99 latency, and every non-200 answer or transport failure as an error, for each
client count in turn against the same server. Clients and server share this machine's cores.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from _report import save_report  # benchmarks/_report.py, beside this script

ROOT = Path(__file__).resolve().parent.parent
TEXTS = ["make it red", "give it a dark skin tone", "a green one", "make it a woman", "facing right",
         "with a medium skin tone", "make it blue", "same but a man", "make it a gender-neutral person",
         "a lighter skin tone", "turn it yellow", "the same thing in orange"]


def _variants():
    """Deterministic image edits, in order: the first three are serve_load's 10k gallery (as drawn,
    mirrored, tinted background); the rest (rotations, scales, shifts, grey and mirrored-tinted
    backgrounds) extend it to 25 variants, about 100k images (the latency budget's gallery)."""
    from PIL import Image, ImageOps

    def scale(s):
        def f(im):
            small = im.resize((max(1, round(im.width * s)), max(1, round(im.height * s))), Image.LANCZOS)
            out = Image.new("RGBA", im.size, (0, 0, 0, 0))
            out.alpha_composite(small, ((im.width - small.width) // 2, (im.height - small.height) // 2))
            return out
        return f

    def shift(dx, dy):
        def f(im):
            out = Image.new("RGBA", im.size, (0, 0, 0, 0))
            out.alpha_composite(im, (max(dx, 0), max(dy, 0)), (max(-dx, 0), max(-dy, 0)))
            return out
        return f

    tints = [(255, 236, 236), (236, 245, 255), (240, 255, 236)]
    out = [lambda im: im, ImageOps.mirror, None]  # None: the tint cycles with the image count (serve_load's 10k)
    out += [lambda im, a=a: im.rotate(a, Image.BICUBIC) for a in (-20, -15, -10, -5, 5, 10, 15, 20)]
    out += [scale(0.75), scale(0.85)]
    out += [lambda im, t=t: _on(ImageOps.mirror(im), t) for t in tints]
    out += [lambda im, a=a: ImageOps.mirror(im).rotate(a, Image.BICUBIC) for a in (-10, 10)]
    out += [lambda im, g=g: _on(im, g) for g in ((200, 200, 200), (128, 128, 128), (40, 40, 40))]
    out += [shift(dx, dy) for dx, dy in ((6, 0), (-6, 0), (0, 6), (0, -6))]
    return out, tints


def build_gallery(folder: Path, n: int) -> None:
    """``n`` PNGs in ``folder``: every Twemoji as drawn, then each further variant in turn; files
    already there are kept (a larger ``n`` extends a gallery)."""
    from PIL import Image

    from cirlab.data.emojiedit import twemoji_folder

    folder.mkdir(parents=True, exist_ok=True)
    sources = sorted(twemoji_folder().glob("*.png"))
    variants, tints = _variants()
    made = 0
    for variant, edit in enumerate(variants):
        for src in sources:
            if made >= n:
                return
            target = folder / f"{src.stem}-v{variant}.png"
            if not target.exists():
                im = Image.open(src).convert("RGBA")
                im = edit(im) if edit else _on(im, tints[made % 3])
                im.save(target)
            made += 1
    if made < n:
        raise SystemExit(f"--images {n}: the variants make only {made} images")


def _on(im, colour):
    """``im`` over an opaque background of ``colour``."""
    from PIL import Image

    bg = Image.new("RGBA", im.size, colour + (255,))
    bg.alpha_composite(im)
    return bg


def build_index(gallery: Path, out: Path, model: str | None) -> None:
    from cirlab.api import Pipeline
    from cirlab.index import read_manifest, save_index

    pipe = Pipeline.load(model)
    if (out / "CURRENT").is_file() and read_manifest(out)[0].get("model") == pipe.identity:
        return
    print(f"embedding {gallery} (once; cached) ...", flush=True)
    from cirlab.indexing import index_gallery
    index, failed = index_gallery(pipe, gallery, "exact")
    save_index(index, out, pipe.identity)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", default="8", help="comma list of client counts, run one after another")
    ap.add_argument("--label", default="", help="a name for this run's rows (e.g. the code version)")
    ap.add_argument("--serve-args", default="", help="extra 'cirlab serve' arguments, e.g. '--runtime torch'")
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--images", type=int, default=10_000)
    ap.add_argument("--model", default=None)
    ap.add_argument("--k", type=int, default=12)
    ap.add_argument("--upload-fraction", type=float, default=0.1)
    ap.add_argument("--work", type=Path, default=ROOT / "data" / "serve_load")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    gallery, index_dir = a.work / "gallery", a.work / "index"
    build_gallery(gallery, a.images)
    build_index(gallery, index_dir, a.model)

    from cirlab.serve.launch import start_server, stop_server

    server, base = start_server(["--index", index_dir] + (["--model", a.model] if a.model else [])
                                + a.serve_args.split())
    rows = []
    try:
        info = httpx.get(base + "/info").json()
        ids = [x["id"] for x in httpx.get(base + "/gallery", params={"limit": 100, "random": 1, "seed": 0}).json()["items"]]
        uploads = [p.read_bytes() for p in sorted(gallery.glob("*.png"))[:50]]
        for clients in map(int, a.clients.split(",")):
            rows.append(load(base, clients, a, ids, uploads, info))
            print(json.dumps(rows[-1]), flush=True)
    finally:
        stop_server(server, timeout=30)
    report = (f"command: python benchmarks/serve_load.py {' '.join(sys.argv[1:])}\n\n"
              "| run | clients | seconds | requests | QPS | p50 ms | p95 ms | p99 ms | errors | gallery | method |\n"
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n")
    for r in rows:
        report += (f"| {a.label} | {r['clients']} | {r['seconds']:.0f} | {r['requests']} | {r['qps']} | {r['p50_ms']} | "
                   f"{r['p95_ms']} | {r['p99_ms']} | {r['errors']} | {r['gallery']:,} ({r['backend']}) | {r['method']} |\n")
    save_report(report, a.out, {"label": a.label, "rows": rows})


def load(base: str, clients: int, a, ids: list[str], uploads: list[bytes], info: dict) -> dict:
    """``clients`` threads sending searches back to back for ``a.seconds``."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    stop = time.perf_counter() + a.seconds

    def client(seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(base_url=base, timeout=60) as http:
            while time.perf_counter() < stop:
                data = {"text": rng.choice(TEXTS), "k": str(a.k)}
                files = None
                if rng.random() < a.upload_fraction:
                    files = {"image": ("ref.png", rng.choice(uploads), "image/png")}
                else:
                    data["image_id"] = rng.choice(ids)
                t = time.perf_counter()
                try:
                    r = http.post("/search", data=data, files=files)
                    ok = r.status_code == 200 and len(r.json()["results"]) == a.k
                    why = None if ok else f"{r.status_code}: {r.text[:120]}"
                except httpx.HTTPError as e:
                    why = f"{type(e).__name__}: {e}"
                dt = time.perf_counter() - t
                with lock:
                    latencies.append(dt)
                    if why:
                        errors.append(why)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    for e in errors[:5]:
        print("error:", e)
    lat = np.array(latencies) * 1e3
    return {"clients": clients, "seconds": round(wall, 1), "requests": len(lat), "errors": len(errors),
            "qps": round(len(lat) / wall, 1), "p50_ms": round(float(np.percentile(lat, 50)), 1),
            "p95_ms": round(float(np.percentile(lat, 95)), 1), "p99_ms": round(float(np.percentile(lat, 99)), 1),
            "gallery": info["index"]["size"], "backend": info["index"]["backend"], "method": info["model"]["method"],
            "upload_fraction": a.upload_fraction, "k": a.k}


if __name__ == "__main__":
    main()
