"""A new user's slips, run as they would meet them (the CLI and a real server): what each exits or answers with,
its first line, whether a traceback shows, and whether the user's own files survive byte for byte.

    .venv/bin/python benchmarks/user_safety.py [--src OTHER/src --label before] [--out benchmarks/results/serving/user_safety.md]

``--src`` runs another checkout's code (``git worktree add /tmp/before 0cedecb``, then ``--src /tmp/before/src``)
with this environment, for a before/after table. The cases are those of the sweep that found them: a Qdrant Edge
``path=`` over a user's folder, a file or a symlink; checkpoints whose metadata lack a field; re-ranking with fewer
candidates than k, a text-only re-ranked search and an empty ``--rerank``; ``index verify`` / ``info`` on an index a
server holds; method options; and the HTTP ``history`` contract. A tiny data set and model are made under ``--work``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


class Run:
    def __init__(self, work: Path, src: Path | None) -> None:
        self.work = work
        self.env = {**os.environ, "HF_HUB_OFFLINE": "1", "CIRLAB_HOME": str(work / "home")}
        if src:
            self.env["PYTHONPATH"] = str(src)
        self.rows: list[dict] = []

    def cli(self, *args) -> tuple[int, str]:
        """Exit code, and stderr then stdout."""
        res = subprocess.run([sys.executable, "-m", "cirlab.cli", *map(str, args)], capture_output=True, text=True,
                             env=self.env, timeout=600)
        self.stdout = res.stdout
        return res.returncode, res.stderr + res.stdout

    def row(self, case: str, command: str, code, output: str, **extra) -> None:
        """One case: its first telling line (an error's, else the first), with this machine's paths made relative."""
        output = output.replace(str(ROOT) + os.sep, "")
        lines = [x for x in output.strip().splitlines() if x.strip()]
        said = [x for x in lines if not x.startswith(("Traceback", "  ")) and ("error" in x.lower() or "in use" in x)]
        first = (said or lines or [""])[0]
        self.rows.append({"case": case, "command": command, "exit": code, "first line": first[:220],
                          "traceback": "Traceback (most recent call last)" in output, **extra})
        print(f"{case}: {code} {first[:160]}", flush=True)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "missing"


def prepare(run: Run) -> dict:
    w = run.work
    data, model, cache = w / "css", w / "sum.pt", w / "cache"
    for args, out in [(("data", "make", "css", "--size", "120", "--out", data), data / "dataset.json"),
                      (("train", "--method", "sum", "--data", data, "--epochs", "1", "--out", model, "--cache", cache,
                        "--quiet"), model),
                      (("train", "--method", "combiner", "--data", data, "--epochs", "1", "--out", w / "combiner.pt",
                        "--cache", cache, "--quiet"), w / "combiner.pt"),
                      (("index", "build", data / "images", "--out", w / "index", "--model", model, "--cache", cache,
                        "--quiet"), w / "index" / "CURRENT")]:
        if not out.exists():
            code, text = run.cli(*args)
            if code:
                sys.exit(f"preparing failed: cirlab {' '.join(map(str, args[:3]))}\n{text[-2000:]}")
    import torch

    for name, drop in [("no-image-encoder.pt", "image_encoder"), ("no-method.pt", "method")]:
        ckpt = torch.load(model, weights_only=False)
        ckpt["meta"].pop(drop)
        torch.save(ckpt, w / name)
    return {"data": data, "model": model, "cache": cache, "images": data / "images", "index": w / "index"}


def qdrant_cases(run: Run, p: dict) -> None:
    """``index build --backend qdrant:path=U`` where ``U/cirlab`` is the user's: their files must survive."""
    for case, make in [("a folder of the user's with Edge's file names", "names"),
                       ("a lone edge_config.json of the user's", "config"),
                       ("a regular file where the shard folder goes", "file"),
                       ("a symlink to an empty folder there", "symlink")]:
        user = run.work / f"user-{make}"
        shutil.rmtree(user, ignore_errors=True)
        place = user / "cirlab"
        mine = {}
        if make == "names":
            (place / "segments").mkdir(parents=True)
            mine = {place / "segments" / "mine.txt": b"my notes\n", place / "wal": b"my write-ahead log\n"}
        elif make == "config":
            place.mkdir(parents=True)
            mine = {place / "edge_config.json": b'{"mine": true}\n'}
        elif make == "file":
            user.mkdir(parents=True)
            mine = {place: b"a file of mine\n"}
        else:
            (user / "empty").mkdir(parents=True)
            place.symlink_to(user / "empty")
        for path, data in mine.items():
            path.write_bytes(data)
        before = {path: digest(path) for path in mine}
        out = run.work / f"ix-{make}"
        shutil.rmtree(out, ignore_errors=True)
        code, text = run.cli("index", "build", p["images"], "--out", out, "--model", p["model"], "--cache", p["cache"],
                             "--backend", f"qdrant:path={user}", "--quiet")
        intact = all(digest(path) == h for path, h in before.items())
        if make == "symlink":
            intact = place.is_symlink() and (user / "empty").is_dir()
        run.row(f"Qdrant path=: {case}", "cirlab index build GAL --out OUT --backend qdrant:path=U", code, text,
                **{"user's files intact": intact})


def checkpoint_and_rerank_cases(run: Run, p: dict) -> None:
    query = ["--index", p["index"], "--model", p["model"], "--cache", p["cache"], "--image",
             p["images"] / sorted(os.listdir(p["images"]))[0], "--text", "make it red"]
    for flag, bad in [("--rerank", "no-image-encoder.pt"), ("--model", "no-image-encoder.pt"),
                      ("--rerank", "no-method.pt")]:
        args = [*query, flag, run.work / bad] if flag == "--rerank" else [*query[:2], flag, run.work / bad, *query[4:]]
        code, text = run.cli("search", *args, "-k", "3")
        run.row(f"{flag} with a checkpoint lacking {bad[3:-3].replace('-', '_')}", f"cirlab search ... {flag} {bad}",
                code, text)
    code, text = run.cli("search", *query, "-k", "3", "--json", "--rerank",
                         f"model={run.work / 'combiner.pt'},candidates=1")
    try:
        got = len(json.loads(run.stdout)["results"])
    except (ValueError, KeyError):
        got = None
    run.row("-k 3 with a re-ranker of 1 candidate", "cirlab search ... -k 3 --rerank model=combiner.pt,candidates=1",
            code, text, results=got)
    code, text = run.cli("search", *query[:6], "--text", "make it red", "-k", "3", "--rerank", run.work / "combiner.pt")
    run.row("a text-only search with --rerank (no text head)", "cirlab search --index IX --text ... --rerank CKPT",
            code, text)
    code, text = run.cli("search", *query, "-k", "3", "--rerank", "")
    run.row("--rerank ''", "cirlab search ... --rerank ''", code, text)


def option_cases(run: Run, p: dict) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import make_tiny_clip

    clip = run.work / "clip"
    if not (clip / "config.json").is_file():
        make_tiny_clip(clip)
    pair = ["--image-encoder", f"clip:{clip}", "--text-encoder", f"clip:{clip}", "--cache", run.work / "zs-cache"]
    search = ["search", "--gallery", p["images"], "--text", "make it red", "-k", "3"]
    for options in ("alpha=abc", "bogus=1"):
        code, text = run.cli(*search, "--method", "zs_slerp", *pair, "--method-options", options)
        run.row(f"--method-options {options}", f"cirlab search ... --method zs_slerp --method-options {options}",
                code, text)
    code, text = run.cli(*search, "--method", "zs_bogus", "--image-encoder", "clip:/nowhere", "--text-encoder",
                         "clip:/nowhere")
    run.row("an unknown zero-shot method", "cirlab search ... --method zs_bogus --image-encoder clip:/nowhere ...",
            code, text)


def served_cases(run: Run, p: dict) -> None:
    """A server over a Qdrant Edge index: ``index verify`` / ``info`` beside it, and the HTTP ``history``."""
    from cirlab.serve.launch import start_server, stop_server

    out, store = run.work / "ix-served", run.work / "edge-store"
    for path in (out, store):
        shutil.rmtree(path, ignore_errors=True)
    code, text = run.cli("index", "build", p["images"], "--out", out, "--model", p["model"], "--cache", p["cache"],
                         "--backend", f"qdrant:path={store}", "--quiet")
    if code:
        run.row("index build over a fresh Qdrant Edge path", "cirlab index build ... --backend qdrant:path=NEW", code,
                text)
        return
    proc, base = start_server(["--index", out, "--model", p["model"], "--cache", p["cache"]], env=run.env,
                              log=run.work / "server.log")
    try:
        for command in ("verify", "info"):
            code, text = run.cli("index", command, out)
            run.row(f"index {command} while a server holds the Qdrant Edge index", f"cirlab index {command} IX",
                    code, text)
        ids = [x["id"] for x in httpx.get(base + "/gallery", params={"limit": 20}).json()["items"]]
        now = {"image_id": ids[0], "text": "make it red", "k": "3", "history_mode": "mean"}
        turns = [{"image_id": ids[n % len(ids)], "text": f"shape {n}"} for n in range(20)]
        for case, history in [("19 earlier turns", json.dumps(turns[:19])), ("20 earlier turns", json.dumps(turns)),
                              ("pretty-printed JSON", json.dumps(turns[:2], indent=2)),
                              ("a turn whose image_id is U+0085", json.dumps([{"image_id": "\u0085"}])),
                              ("a turn with a 10,000-character id", json.dumps([{"image_id": "x" * 10_000}]))]:
            r = httpx.post(base + "/search", data={**now, "history": history}, timeout=60)
            body = r.json()
            said = body.get("error") or f"{len(body['results'])} results, history {body['query']['history']}"
            run.row(f"POST /search history: {case}", "POST /search history=...", r.status_code, said,
                    **{"reply chars": len(r.text)})
    finally:
        stop_server(proc)


def report(rows: list[dict], label: str, command: str) -> str:
    lines = [f"# A new user's slips ({label})", "", f"Command: `{command}`", "",
             "| case | exit / status | first line | traceback | other |", "|---|---:|---|---|---|"]
    for r in rows:
        other = ", ".join(f"{k}: {v}" for k, v in r.items() if k not in ("case", "command", "exit", "first line",
                                                                         "traceback"))
        first = r["first line"].replace("|", "\\|")
        lines.append(f"| {r['case']} | {r['exit']} | {first} | {'yes' if r['traceback'] else 'no'} | {other} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", type=Path, default=None, help="another checkout's src folder to run instead")
    ap.add_argument("--label", default="this checkout")
    ap.add_argument("--work", type=Path, default=Path("data/user_safety"))
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "serving" / "user_safety.md")
    a = ap.parse_args()
    from cirlab.files import atomic_write_text

    work = (a.work / a.label.replace(" ", "-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    run = Run(work, a.src.resolve() if a.src else None)
    start = time.perf_counter()
    p = prepare(run)
    for cases in (qdrant_cases, checkpoint_and_rerank_cases, option_cases, served_cases):
        cases(run, p)
    command = "python benchmarks/user_safety.py" + (f" --src {a.src} --label {a.label}" if a.src else "")
    text = report(run.rows, a.label, command) + f"\n{len(run.rows)} cases in {time.perf_counter() - start:.0f} s.\n"
    atomic_write_text(a.out, text)
    atomic_write_text(a.out.with_suffix(".json"), json.dumps({"command": command, "rows": run.rows}, indent=1))
    print(text)


if __name__ == "__main__":
    main()
