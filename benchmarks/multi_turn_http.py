"""Multi-turn search served over HTTP: the bench's simulated user, each of its searches a ``POST /search`` with the
session's history, against the same sessions run in-process.

    .venv/bin/python benchmarks/multi_turn_http.py --data data/emojiedit --model M [--cache C] [--split test]
        [--sessions 50] [--turns 10] [--shown 10] [--history mean] [--start random] [--seed 0]
        [--out benchmarks/results/multi_turn/multi-turn-http-emojiedit.md]

An exact index of the split's gallery is built with the checkpoint and ``cirlab serve`` started over it. The
simulated sessions (``eval.multiturn.simulate``) then search through the server: the turn's reference as
``image_id`` (none for a search by words alone), the user's text, the earlier turns as ``history`` and the mode as
``history_mode``. The same sessions (same seed, same user) run in-process through the bench's path
(``eval.multiturn.run_sessions``). Reported: both success curves, the share of turns where the two paths ranked the
target alike, and one session that reached its target, turn by turn.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from _report import save_report
from cirlab.api import Pipeline
from cirlab.data.triplets import Dataset
from cirlab.data.user import simulated_user
from cirlab.eval.multiturn import TOP, run_sessions, simulate
from cirlab.experiment.workspace import Workspace
from cirlab.index import save_index
from cirlab.indexing import index_gallery
from cirlab.serve.launch import start_server, stop_server

ROOT = Path(__file__).resolve().parent.parent


def http_search(base: str, mode: str, log: list):
    """A ``search`` for ``simulate`` that asks the server, one request per running session."""
    def search(histories, k):
        out = []
        for turns in histories:
            now = turns[-1]
            data = {"k": str(k), "history_mode": mode, "text": now.text}
            if now.reference is not None:
                data["image_id"] = now.reference
            if len(turns) > 1:
                data["history"] = json.dumps([{**({"image_id": t.reference} if t.reference else {}), "text": t.text}
                                              for t in turns[:-1]])
            start = time.perf_counter()
            r = httpx.post(base + "/search", data=data, timeout=120)
            log.append(time.perf_counter() - start)
            if r.status_code != 200:
                raise SystemExit(f"POST /search answered {r.status_code}: {r.text[:300]}")
            out.append([x["id"] for x in r.json()["results"]])
        return out
    return search


def rel(path: Path) -> str:
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else path.name


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--cache", type=Path, default=None)
    p.add_argument("--split", default="test")
    p.add_argument("--sessions", type=int, default=50)
    p.add_argument("--turns", type=int, default=10)
    p.add_argument("--shown", type=int, default=10)
    p.add_argument("--history", default="mean")
    p.add_argument("--start", default="random")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args()

    pipe = Pipeline.load(a.model, a.cache)
    ds = Dataset(a.data)
    user = simulated_user(ds)
    ws = Workspace.for_model(ds, pipe.model, pipe.image_encoder, pipe.text_encoder, pipe.cache, a.split, progress=False)
    gallery_ids = ws.gallery_ids(a.split)
    local = run_sessions(ws, pipe.model, a.split, a.sessions, a.turns, a.history, a.shown, a.seed, pipe.text_head,
                         a.start)
    with tempfile.TemporaryDirectory() as tmp:
        index, _ = index_gallery(pipe, ds.gallery(a.split), "exact", progress=False)
        save_index(index, Path(tmp) / "index", pipe.identity)
        args = ["--index", Path(tmp) / "index", "--model", a.model, "--batch-window-ms", "0"]
        proc, base = start_server(args + (["--cache", a.cache] if a.cache else []), log=Path(tmp) / "server.log")
        latencies: list[float] = []
        try:
            served = simulate(user, gallery_ids, http_search(base, a.history, latencies), a.sessions, a.turns, a.shown,
                              a.seed, a.start)
        finally:
            stop_server(proc)
    pairs = [(x, y) for s, t in zip(local.ranks, served.ranks) for x, y in zip(s, t)]
    alike = 100.0 * np.mean([min(x, TOP) == min(y, TOP) for x, y in pairs])
    rows = []
    for name, got in (("served (HTTP)", served), ("in-process (bench)", local)):
        s = got.summary()
        rows.append(f"| {name} | " + " | ".join(f"{s[f'R@1 by {t}']:.1f}" for t in (1, 2, 3, 5, 10) if t <= a.turns)
                    + " | " + " | ".join(f"{s[f'R@{TOP} by {t}']:.1f}" for t in (1, 3, 5) if t <= a.turns)
                    + f" | {s['mean turns']:.2f} | {s['never']:.1f} |")
    head = [f"R@1 by {t}" for t in (1, 2, 3, 5, 10) if t <= a.turns] + [f"R@{TOP} by {t}" for t in (1, 3, 5)
                                                                        if t <= a.turns]
    reached = [d for d, r in zip(served.dialogs, served.ranks) if r and r[-1] == 0 and len(r) > 1]
    example = max(reached, key=lambda d: len(d["turns"])) if reached else None
    text = (f"# Multi-turn search served over HTTP: {ds.name} ({a.split})\n\n"
            f"Command: `.venv/bin/python benchmarks/multi_turn_http.py {' '.join(sys.argv[1:])}`\n\n"
            f"Model {rel(a.model)} ({pipe.meta['method']}); {len(gallery_ids)} gallery images; {a.sessions} sessions "
            f"of at most {a.turns} turns, seed {a.seed}, start {a.start}; the user refines from the closest of the top "
            f"{a.shown}; history mode `{a.history}`. Each served search is a `POST /search` with the session's "
            f"`history`; p50 {1e3 * np.median(latencies):.1f} ms a request over {len(latencies)} requests.\n\n"
            f"| path | " + " | ".join(head) + " | mean turns | never |\n|---|" + "---:|" * (len(head) + 2) + "\n"
            + "\n".join(rows) + f"\n\nTurns where both paths ranked the target alike (within the top {TOP}): "
            f"{alike:.1f}% of {len(pairs)}.\n")
    if example:
        name = {i: ds.by_id[i].get("caption", i) for i in gallery_ids}
        text += (f"\nA served session that reached its target `{example['target']}` ({name[example['target']]}), "
                 f"from `{example['start']}` ({name[example['start']]}):\n\n| turn | reference | said | top 3 | "
                 f"target's rank |\n|---:|---|---|---|---:|\n")
        for n, t in enumerate(example["turns"], 1):
            ref = f"`{t['reference']}` {name[t['reference']]}" if t["reference"] else "(words alone)"
            rank = "-" if not np.isfinite(t["rank"]) else str(int(t["rank"]) + 1)
            text += (f"| {n} | {ref} | {t['text']} | " + ", ".join(f"`{i}`" for i in t["top"][:3]) + f" | {rank} |\n")
    payload = {"served": served.summary(), "in_process": local.summary(), "alike_percent": alike,
               "p50_ms": 1e3 * float(np.median(latencies)), "example": example and {
                   **example, "turns": [{**t, "rank": None if not np.isfinite(t["rank"]) else int(t["rank"]) + 1}
                                        for t in example["turns"]]}}
    save_report(text, a.out, payload)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
