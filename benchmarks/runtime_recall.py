"""Recall@K of a trained model when its data set is encoded under each inference runtime: the runtime parity
check at the level users see (issue 16: unchanged to 0.1 points).

    .venv/bin/python benchmarks/runtime_recall.py [--data data/emojiedit] [--model CKPT] [--split test]
        [--runtimes torch,onnx,openvino] [--out benchmarks/results/encoders/runtime_recall.md]

Each runtime encodes the whole split afresh into its own empty feature cache (``cirlab eval --runtime R
--cache TMP``), so no vector is shared between the arms; the model is the one ``make demo`` trains unless
``--model`` names another. A runtime may name the encoders' precision after a slash (``openvino/bf16``:
``--encoder-precision bf16``), which is the issue-45 parity check: gallery and queries encoded in bf16, searched by a
model trained on fp32 features. Reports R@K per arm, the largest difference from the first arm, and the wall time of
each evaluation (encoding included).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _report import save_report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("data/emojiedit"))
    ap.add_argument("--model", default=None)
    ap.add_argument("--split", default="test")
    ap.add_argument("--runtimes", default="torch,onnx,openvino")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for arm in a.runtimes.split(","):
            runtime, _, encoding = arm.partition("/")
            out = Path(tmp) / arm.replace("/", "-")
            cmd = [sys.executable, "-m", "cirlab.cli", "eval", "--data", str(a.data), "--split", a.split, "--runtime",
                   runtime, "--encoder-precision", encoding or "fp32", "--cache", str(out / "cache"), "--out", str(out),
                   "--examples", "0", "--quiet"]
            if a.model:
                cmd += ["--model", a.model]
            start = time.perf_counter()
            run = subprocess.run(cmd, capture_output=True, text=True)
            if run.returncode:
                raise SystemExit(f"{arm}: {run.stderr.strip().splitlines()[-1]}")
            report = json.loads(next(out.glob("*.json")).read_text())
            rows[arm] = {"recall": report["recall"], "seconds": round(time.perf_counter() - start, 1),
                             "queries": report["queries"], "model": report["model"]["fusion"]}
            print(arm, json.dumps(rows[arm]), flush=True)
    first = next(iter(rows))
    base = rows[first]
    ks = list(next(iter(rows.values()))["recall"])
    command = "python benchmarks/runtime_recall.py " + " ".join(sys.argv[1:])
    lines = ["# Recall@K by encoder runtime and precision", "", f"Command: `{command}`", "",
             f"{a.data.name} {a.split}, {next(iter(rows.values()))['queries']} queries, model "
             f"{next(iter(rows.values()))['model']}; each runtime encodes the split into its own empty cache.", "",
             "| runtime | " + " | ".join(f"R@{k}" for k in ks) + f" | largest change from {first} | eval s (encoding included) |",
             "|---|" + "---:|" * (len(ks) + 2)]
    for runtime, r in rows.items():
        change = max(abs(r["recall"][k] - base["recall"][k]) for k in ks)
        lines.append(f"| {runtime} | " + " | ".join(f"{r['recall'][k]:.2f}" for k in ks) + f" | {change:.2f} | {r['seconds']} |")
    text = "\n".join(lines) + "\n"
    save_report(text, a.out, {"command": command, "rows": rows})


if __name__ == "__main__":
    main()
