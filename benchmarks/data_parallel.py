"""Data-parallel training against one process (issue 33): the same method, data, global batch and seed trained by
``cirlab train`` in one process and with ``--nproc N``, over seeds; the kept epoch's validation R@1 and the test R@1.

    .venv/bin/python benchmarks/data_parallel.py --data data/emojiedit [--method combiner] [--seeds 3] [--nproc 2]
        [--out benchmarks/results/data_parallel/data-parallel-emojiedit.md]

Every run reads the same feature cache (the first one fills it, unless ``--cache`` names a warm one).
On one 2-core machine the ranks share the cores (one thread each): the time says what the gathering and the
gradient averaging cost, not what more machines would gain. Dropout masks are drawn per rank, so a data-parallel
run equals the one-process run in expectation, not step for step (tests/test_parallel.py checks the step exactly
without dropout).
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _report import save_report


def run(cmd: list[str]) -> tuple[str, float]:
    start = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"{' '.join(cmd)}\n{r.stderr[-3000:]}")
    return r.stdout, time.perf_counter() - start


def measure(a, seed: int, nproc: int) -> dict:
    out = a.work / f"{a.method}-seed{seed}-nproc{nproc}"
    cmd = [sys.executable, "-m", "cirlab.cli", "train", "--method", a.method, "--data", str(a.data), "--out", str(out),
           "--seed", str(seed), "--cache", str(a.cache or a.work / "cache"), "--quiet"] + (["--nproc", str(nproc)] if nproc > 1
                                                                                else [])
    stdout, wall = run(cmd)
    history = [json.loads(line) for line in (out / "model-metrics.jsonl").read_text().splitlines()]
    best = int(re.search(r"best epoch (\d+)", stdout).group(1))
    test = re.search(rf"\| {re.escape(a.method)} \| ([\d.]+) \|", stdout)
    return {"seed": seed, "nproc": nproc, "val R@1": history[best - 1]["val_R@1"], "best epoch": best,
            "test R@1": float(test.group(1)) if test else None, "wall s": round(wall, 1),
            "train s": round(sum(h["seconds"] for h in history), 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--method", default="combiner")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--work", type=Path, default=Path("data/data_parallel"))
    ap.add_argument("--cache", type=Path, default=None, help="a feature cache (default: one under --work, which the "
                                                             "first run then fills)")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    rows = [measure(a, seed, n) for seed in range(a.seeds) for n in (1, a.nproc)]
    for r in rows:
        print(r, flush=True)

    def cell(n: int, key: str) -> str:
        values = [r[key] for r in rows if r["nproc"] == n and r[key] is not None]
        return f"{statistics.fmean(values):.1f} ± {statistics.stdev(values):.1f}" if len(values) > 1 else \
            f"{values[0]:.1f}" if values else ""
    command = "python benchmarks/data_parallel.py " + " ".join(shlex.quote(x) for x in sys.argv[1:])
    text = (f"# Data-parallel training against one process ({a.data.name}, {a.method})\n\nCommand: `{command}`\n\n"
            f"`cirlab train --method {a.method}` with the method's config (its global batch) in one process and with "
            f"`--nproc {a.nproc}` (gloo, this machine's 2 cores shared), seeds 0-{a.seeds - 1}; mean ± sample std "
            "over seeds. val R@1: the kept epoch's validation R@1; train s: the epochs' training and validation "
            "time; wall s: the whole command.\n\n| processes | val R@1 | test R@1 | train s | wall s |\n"
            "|---:|---:|---:|---:|---:|\n"
            + "".join(f"| {n} | {cell(n, 'val R@1')} | {cell(n, 'test R@1')} | {cell(n, 'train s')} | "
                      f"{cell(n, 'wall s')} |\n" for n in (1, a.nproc))
            + "\nEach run:\n\n| seed | processes | val R@1 | best epoch | test R@1 | train s | wall s |\n"
              "|---:|---:|---:|---:|---:|---:|---:|\n"
            + "".join(f"| {r['seed']} | {r['nproc']} | {r['val R@1']:.1f} | {r['best epoch']} | "
                      f"{r['test R@1'] if r['test R@1'] is not None else ''} | {r['train s']} | {r['wall s']} |\n"
                      for r in rows))
    out = a.out or Path(__file__).parent / "results" / "data_parallel" / f"data-parallel-{a.data.name}.md"
    save_report(text, out, {"command": command, "rows": rows})


if __name__ == "__main__":
    main()
