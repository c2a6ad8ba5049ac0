"""That a rebuild of the query path changes no answer: the same runs under an earlier revision and under this
tree, compared by the hashes of what they produce.

    .venv/bin/python benchmarks/search_parity.py --base b917afb [--out benchmarks/results/serving/search_parity.md]

A worktree of ``--base`` is checked out under ``--work``; a small CSS-like data set is built once. Each side
then runs in its own processes (``PYTHONPATH`` at its ``src``), with an empty home and feature cache of its
own, through the command line and the HTTP API only (their form is the contract both sides share):

- ``cirlab train`` (``combiner``, 3 epochs): the stage-2 weights; the same for ``combiner-mirror`` (a colour
  head and the reference mirror) and ``tirg_gate-local`` (grid and colour heads over the method's own map);
- the query vector of one composed query (``Pipeline.load(...).compose``), for each of the three models;
- ``cirlab search --gallery`` (a folder search, the reference left out);
- ``cirlab index build``, then ``cirlab search --index``: plain, with ``--filter``, with ``--scoring`` and with
  ``--rerank`` (``tirg_gate-local`` reorders ``combiner``'s top 20);
- ``cirlab serve`` over that index and ``POST /search`` over real HTTP, by gallery id and by upload, and a server
  with ``--rerank``.

Equal hashes mean bit-identical weights and vectors, and the same ids with the same scores in the same order.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

from _parity import base_and_data, save_parity

VECTOR = r'''
import hashlib, sys, torch
from cirlab.api import Pipeline
q = Pipeline.load(sys.argv[1], sys.argv[2]).compose(sys.argv[3], "make it red")
print(hashlib.sha1(q.tobytes()).hexdigest()[:16])
'''
WEIGHTS = r'''
import hashlib, sys, torch
state = torch.load(sys.argv[1], map_location="cpu", weights_only=False)["state_dict"]
print(hashlib.sha1(b"".join(t.numpy().tobytes() for t in state.values())).hexdigest()[:16])
'''


def digest(obj) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def ranking(hits: list[dict]) -> list:
    """What a search answered: the ids (or names) and the scores, in order."""
    return [[h.get("id"), h.get("score")] for h in hits]


class Side:
    def __init__(self, src: Path, data: Path, out: Path) -> None:
        self.data, self.out = data, out
        out.mkdir(parents=True, exist_ok=True)
        self.env = {**{k: v for k, v in os.environ.items() if not k.startswith("CIRLAB_")}, "PYTHONPATH": str(src),
                    "CIRLAB_HOME": str(out / "home"), "HF_HUB_OFFLINE": "1", "CIRLAB_DEVICE": "cpu"}
        self.cache = out / "cache"

    def run(self, *args: str) -> str:
        res = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=self.env)
        if res.returncode:
            sys.exit(f"{' '.join(args[:4])} failed under {self.env['PYTHONPATH']}:\n{res.stderr[-2000:]}")
        return res.stdout

    def cli(self, *args: str) -> str:
        return self.run("-m", "cirlab.cli", *args)

    def search(self, *args: str) -> list:
        out = json.loads(self.cli("search", "--model", str(self.out / "m.pt"), "--cache", str(self.cache), "--json",
                                  *args))
        return ranking(out["results"])


def http_search(port: int, fields: dict, upload: Path | None = None) -> list:
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    if upload is not None:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{upload.name}"\r\n'
                     f"Content-Type: image/png\r\n\r\n".encode() + upload.read_bytes() + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/search", body,
                                 {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return ranking(json.loads(r.read())["results"])


def served(side: Side, index: Path, queries: list[tuple[dict, Path | None]], *extra: str) -> list:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "cirlab.cli", "serve", "--index", str(index), "--model",
                             str(side.out / "m.pt"), "--cache", str(side.cache), "--port", str(port), *extra],
                            env=side.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).read()
                break
            except OSError:
                if proc.poll() is not None:
                    sys.exit(f"cirlab serve died:\n{proc.stderr.read().decode()[-2000:]}")
                time.sleep(0.2)
        return [http_search(port, f, up) for f, up in queries]
    finally:
        proc.terminate()
        proc.wait(30)


def run_side(side: Side) -> dict:
    data, out = side.data, side.out
    images = sorted((data / "images").glob("*.png"))
    ref, upload = images[0], images[1]
    side.cli("train", "--method", "combiner", "--data", str(data), "--epochs", "3", "--out", str(out / "m.pt"),
             "--cache", str(side.cache), "--quiet")
    row = {"stage 2 weights": side.run("-c", WEIGHTS, str(out / "m.pt")).strip(),
           "query vector": side.run("-c", VECTOR, str(out / "m.pt"), str(side.cache), str(ref)).strip()}
    for method in ("combiner-mirror", "tirg_gate-local"):  # image heads and the mirror; a method's own map
        model = out / f"{method}.pt"
        side.cli("train", "--method", method, "--data", str(data), "--epochs", "3", "--out", str(model),
                 "--cache", str(side.cache), "--quiet")
        row[f"stage 2 weights, {method}"] = side.run("-c", WEIGHTS, str(model)).strip()
        row[f"query vector, {method}"] = side.run("-c", VECTOR, str(model), str(side.cache), str(ref)).strip()
    query = ["--image", str(ref), "--text", "make it red", "-k", "10", "--exclude-reference"]
    row["folder search"] = digest(side.search("--gallery", str(data / "images"), *query))
    index = out / "index"
    side.cli("index", "build", str(data / "images"), "--out", str(index), "--model", str(out / "m.pt"),
             "--cache", str(side.cache), "--quiet")
    row["index search"] = digest(side.search("--index", str(index), *query))
    row["index search, --filter"] = digest(side.search("--index", str(index), *query, "--filter", "split=test"))
    row["index search, --scoring"] = digest(side.search("--index", str(index), *query, "--scoring",
                                                        "cosine=1,euclidean=0.5,hamming=0.2,candidates=50"))
    rerank = ["--rerank", f"model={out / 'tirg_gate-local.pt'},candidates=20"]  # a second model reorders
    row["index search, --rerank"] = digest(side.search("--index", str(index), *query, *rerank))
    image_id = ref.stem
    http = served(side, index, [({"image_id": image_id, "text": "make it red", "k": 10}, None),
                                ({"text": "make it red", "k": 10}, upload),
                                ({"image_id": image_id, "text": "make it red", "k": 10,
                                  "filter": '{"split": "test"}'}, None)])
    row["HTTP search, gallery id"] = digest(http[0])
    row["HTTP search, upload"] = digest(http[1])
    row["HTTP search, filter"] = digest(http[2])
    ids = [h[0] for h in http[0]]  # the server rounds its scores to 6 digits: compare the ids
    row["HTTP ids = index search ids"] = "yes" if ids == [h[0] for h in side.search("--index", str(index), *query)] else "no"
    reranked = served(side, index, [({"image_id": image_id, "text": "make it red", "k": 10}, None)], *rerank)
    row["HTTP search, --rerank"] = digest(reranked[0])
    row["HTTP ids = index search ids, --rerank"] = \
        "yes" if [h[0] for h in reranked[0]] == [h[0] for h in side.search("--index", str(index), *query, *rerank)] else "no"
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", default="b917afb", help="the revision before the query path was rebuilt")
    ap.add_argument("--work", type=Path, default=Path("data/search_parity"))
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "serving" / "search_parity.md")
    a = ap.parse_args()
    work = a.work.resolve()
    old, data = base_and_data(a.base, work)
    before = run_side(Side(old / "src", data, work / "before"))
    after = run_side(Side(Path(__file__).resolve().parent.parent / "src", data, work / "after"))
    save_parity("The query path rebuilt: the same answers as before", f"python benchmarks/search_parity.py --base {a.base}",
                f"The same runs under {a.base} and under this tree, each in its own processes with its own empty home and "
                "cache, through the CLI and the HTTP API; sha1 of the weights, the query vector's bytes, and each "
                "search's (id, score) list (first 16 hex digits).",
                a.base, "this tree", before, after, a.out)


if __name__ == "__main__":
    main()
