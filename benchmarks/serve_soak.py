"""Soak ``cirlab serve``: clients that search, upload, delete and send hostile images while ``cirlab index
add`` writes the same index every 30 s; at the end, every acknowledged item must be on disk.

    .venv/bin/python benchmarks/serve_soak.py [--seconds 600] [--clients 8] [--images 2000] [--model CKPT]

The gallery is the serve benchmark's (Twemoji PNGs, CC-BY 4.0, Twitter/X and contributors; built
once into ``data/serve_load/gallery``), its first ``--images`` files indexed with the model
(default: the one ``make demo`` trains) into a fresh index under ``data/serve_soak/``. Each client
is a thread with its own connection; per request it picks: a search by a gallery reference
(``image_id`` + text, 60%), a search by an uploaded image (15%), an upload to the gallery (15%), or
a delete of an image it uploaded (10%). 5% of the images sent are hostile: a malformed AVIF, a
truncated PNG, a 20000x300 PNG, a decompression bomb, random bytes. Every 30 s ``cirlab index add``
adds 10 new images to the same index folder from a separate process.

Reported (``benchmarks/results/serving/serve_soak.{md,json}``): requests by kind and status, 5xx answers
and transport errors (both expected 0), search latency, the items acknowledged (server 201s not
deleted since, plus the CLI's additions) against the items on disk at the end (expected equal),
and the server's resident memory at start, peak and end (read from /proc every 0.5 s).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
import zlib
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_load import TEXTS, build_gallery

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "soak-token"


def png(rng: random.Random, size: int = 72) -> bytes:
    arr = np.full((size, size, 3), 255, np.uint8)
    c = [rng.randrange(256) for _ in range(3)]
    a, b = sorted(rng.sample(range(size), 2))
    arr[a:b + 2, a:b + 2] = c
    arr[rng.randrange(size), :] = [rng.randrange(256) for _ in range(3)]
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def hostile_images() -> list[tuple[str, bytes]]:
    """Files a careless or hostile client sends: each must get a 4xx, never a 5xx."""
    out = []
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 40, 3), dtype=np.uint8)).save(buf, "AVIF")
    avif = buf.getvalue()
    for pos in range(min(400, len(avif))):  # a single flipped byte that makes Pillow raise RuntimeError
        bad = avif[:pos] + bytes([avif[pos] ^ 0xFF]) + avif[pos + 1:]
        try:
            with Image.open(io.BytesIO(bad)) as im:
                im.load()
        except RuntimeError:
            out.append(("malformed.avif", bad))
            break
        except Exception:
            continue
    good = png(random.Random(1))
    out.append(("truncated.png", good[: len(good) // 2]))
    wide = np.full((300, 20000, 3), 255, np.uint8)
    wide[100:200, ::40] = (200, 30, 30)
    buf = io.BytesIO()
    Image.fromarray(wide).save(buf, "PNG", optimize=True)
    out.append(("wide.png", buf.getvalue()))

    def chunk(kind, data):
        body = kind + data
        return len(data).to_bytes(4, "big") + body + zlib.crc32(body).to_bytes(4, "big")
    side = 30_000
    bomb = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", side.to_bytes(4, "big") * 2 + bytes([1, 0, 0, 0, 0]))
            + chunk(b"IDAT", zlib.compress((b"\x00" * (1 + side // 8)) * 64)) + chunk(b"IEND", b""))
    out.append(("bomb.png", bomb))
    out.append(("noise.jpg", os.urandom(5000)))
    return out


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Soak:
    def __init__(self, base: str, ids: list[str], seconds: float, seed: int) -> None:
        self.base, self.ids, self.deadline = base, ids, time.time() + seconds
        self.lock = threading.Lock()
        self.counts: Counter = Counter()
        self.latency: list[float] = []
        self.acked: set[str] = set()
        self.deleted: set[str] = set()
        self.server_errors: list[str] = []
        self.hostile = hostile_images()
        self.seed = seed

    def record(self, kind: str, status: int | str, detail: str = "") -> None:
        with self.lock:
            self.counts[(kind, status)] += 1
            if status == "transport" or (isinstance(status, int) and status >= 500):
                self.server_errors.append(f"{kind} {status} {detail[:200]}")

    def image(self, rng: random.Random) -> tuple[str, bytes, bool]:
        if rng.random() < 0.05:
            name, data = rng.choice(self.hostile)
            return name, data, True
        return f"soak-{rng.randrange(10**9)}.png", png(rng), False

    def client(self, n: int) -> None:
        rng = random.Random(self.seed * 100 + n)
        mine: list[str] = []
        auth = {"Authorization": f"Bearer {TOKEN}"}
        with httpx.Client(base_url=self.base, timeout=120) as http:
            while time.time() < self.deadline:
                r = rng.random()
                try:
                    if r < 0.60:
                        t0 = time.perf_counter()
                        resp = http.post("/search", data={"image_id": rng.choice(self.ids), "text": rng.choice(TEXTS)})
                        with self.lock:
                            self.latency.append(time.perf_counter() - t0)
                        self.record("search by id", resp.status_code, resp.text)
                    elif r < 0.75:
                        name, data, hostile = self.image(rng)
                        resp = http.post("/search", data={"text": rng.choice(TEXTS)}, files={"image": (name, data)})
                        self.record("search by upload" + (" (hostile)" if hostile else ""), resp.status_code, resp.text)
                    elif r < 0.90:
                        name, data, hostile = self.image(rng)
                        resp = http.post("/gallery", files={"image": (name, data)}, headers=auth)
                        self.record("upload" + (" (hostile)" if hostile else ""), resp.status_code, resp.text)
                        if resp.status_code == 201:
                            added = [x["id"] for x in resp.json()["added"]]
                            mine += added
                            with self.lock:
                                self.acked.update(added)
                    elif mine:
                        victim = mine.pop(rng.randrange(len(mine)))
                        resp = http.delete(f"/gallery/{victim}", headers=auth)
                        self.record("delete", resp.status_code, resp.text)
                        if resp.status_code == 200:
                            with self.lock:
                                self.deleted.add(victim)
                except httpx.HTTPError as e:
                    self.record("any", "transport", repr(e))


def cli_adder(index: Path, model: str | None, cache: Path, out: Path, stop: threading.Event, added: list[str],
              log: list[str]) -> None:
    """Every 30 s: ``cirlab index add`` of 10 new images from a separate process."""
    rng = random.Random(7)
    k = 0
    while not stop.wait(30 if k else 5):
        folder = out / f"batch-{k}"
        folder.mkdir(parents=True)
        paths = []
        for i in range(10):
            p = folder / f"cli-{k}-{i}.png"
            p.write_bytes(png(rng))
            paths.append(p)
        cmd = [sys.executable, "-m", "cirlab.cli", "index", "add", str(index), str(folder), "--cache", str(cache),
               "--quiet"] + (["--model", model] if model else [])
        run = subprocess.run(cmd, capture_output=True, text=True)
        log.append(f"index add batch {k}: exit {run.returncode} {run.stdout.strip() or run.stderr.strip()[:300]}")
        if run.returncode == 0:
            added += [str(p.resolve()) for p in paths]
        k += 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=600)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--model", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "serving" / "serve_soak.md")
    a = ap.parse_args()
    from cirlab import settings
    from cirlab.api import Pipeline
    from cirlab.data.triplets import Gallery
    from cirlab.index import load_index, save_index
    from cirlab.serve.launch import start_server, stop_server

    settings.offline()
    gallery = ROOT / "data" / "serve_load" / "gallery"
    build_gallery(gallery, max(a.images, 1))
    work = ROOT / "data" / "serve_soak"
    shutil.rmtree(work, ignore_errors=True)
    (work / "cli").mkdir(parents=True)
    pipe = Pipeline.load(a.model)
    files = sorted(gallery.glob("*.png"))[: a.images]
    from cirlab.indexing import index_gallery
    index, _ = index_gallery(pipe, Gallery([p.stem for p in files], files), "exact")
    save_index(index, work / "index", {**pipe.identity, "gallery": str(gallery)})
    ids = list(index.ids)
    env = {**os.environ, "CIRLAB_API_TOKEN": TOKEN}
    proc, base = start_server(["--index", work / "index"] + (["--model", a.model] if a.model else []), env=env,
                              log=work / "server.log")
    memory = {"start": rss_mib(proc.pid), "peak": 0.0}
    stop = threading.Event()

    def watch():
        while not stop.wait(0.5):
            memory["peak"] = max(memory["peak"], rss_mib(proc.pid))
    threading.Thread(target=watch, daemon=True).start()
    cli_added: list[str] = []
    cli_log: list[str] = []
    adder = threading.Thread(target=cli_adder, args=(work / "index", a.model, settings.cache_dir(), work / "cli", stop,
                                                     cli_added, cli_log))
    adder.start()
    soak = Soak(base, ids, a.seconds, a.seed)
    t0 = time.time()
    clients = [threading.Thread(target=soak.client, args=(n,)) for n in range(a.clients)]
    for c in clients:
        c.start()
    for c in clients:
        c.join()
    stop.set()
    adder.join()
    elapsed = time.time() - t0
    memory["end"] = rss_mib(proc.pid)
    stop_server(proc, timeout=60)
    on_disk, manifest = load_index(work / "index")
    disk = set(on_disk.ids)
    expected = (soak.acked - soak.deleted) | set(cli_added)
    lost = sorted(expected - disk)
    resurrected = sorted(soak.deleted & disk)
    total = sum(soak.counts.values())
    lat = np.array(soak.latency) * 1000
    result = {
        "seconds": round(elapsed, 1), "clients": a.clients, "gallery": len(ids), "requests": total,
        "by_kind_and_status": {f"{k} {s}": n for (k, s), n in sorted(soak.counts.items(), key=str)},
        "server_errors_5xx_or_transport": len(soak.server_errors), "server_error_samples": soak.server_errors[:10],
        "search_latency_ms": {"p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99))} if len(lat) else {},
        "acknowledged_items": len(expected), "acknowledged_on_disk": len(expected) - len(lost), "lost": lost[:20],
        "deleted_but_on_disk": resurrected[:20], "server_adds_acked": len(soak.acked), "server_deletes_acked": len(soak.deleted),
        "cli_adds": len(cli_added), "cli_runs": cli_log, "index_count_on_disk": manifest["count"],
        "server_rss_mib": {k: round(v, 1) for k, v in memory.items()},
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    rows = "\n".join(f"| {k} | {n} |" for k, n in result["by_kind_and_status"].items())
    md = f"""# Soak of cirlab serve ({a.seconds:.0f} s, {a.clients} clients, loopback)

Command: `.venv/bin/python benchmarks/serve_soak.py --seconds {a.seconds:.0f} --clients {a.clients} --images {a.images}`

Model {pipe.meta['method']} ({pipe.identity['fusion']}), exact index of {len(ids)} gallery images; `cirlab index add`
of 10 images every 30 s from a separate process ({len(cli_log)} runs, {len(cli_added)} images added); 5% of the
images sent were hostile (malformed AVIF, truncated PNG, 20000x300 PNG, decompression bomb, random bytes).

| | |
|---|---:|
| requests | {total} |
| 5xx answers or transport errors | {len(soak.server_errors)} |
| search p50 / p99 (ms) | {result['search_latency_ms'].get('p50', 0):.0f} / {result['search_latency_ms'].get('p99', 0):.0f} |
| items acknowledged (server 201s not deleted since + CLI additions) | {len(expected)} |
| of them on disk at the end | {len(expected) - len(lost)} |
| deleted (200) but still on disk | {len(resurrected)} |
| server memory at start / peak / end (MiB) | {memory['start']:.0f} / {memory['peak']:.0f} / {memory['end']:.0f} |

Requests by kind and status:

| kind and status | count |
|---|---:|
{rows}
"""
    a.out.write_text(md)
    print(md)


if __name__ == "__main__":
    main()
