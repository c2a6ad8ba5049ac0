"""``cirlab index build`` of a gallery under each encoder runtime and precision: the wall time a catalogue owner
waits, before (fp32) and after (int8, bf16) (issue 45, end to end).

    .venv/bin/python benchmarks/index_build_precision.py [--images 10000] [--arms onnx,onnx/int8,openvino/bf16]
        [--out benchmarks/results/encoders/index_build_precision.md]

The gallery is serve_load's (Twemoji PNGs and their variants, CC-BY 4.0, Twitter/X and contributors), ``--images``
files in ``data/latency_budget/gallery`` (kept, as latency_budget.py keeps it). Each arm is one ``cirlab index build``
process (``--runtime R --encoder-precision P``) into a fresh feature cache and index, so every image is decoded and
encoded; the arms run one after another, ``--rounds`` times in turn, and each arm's figure is its best round. The
model is the one ``make demo`` trains.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _report import save_report
from serve_load import build_gallery

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=10_000)
    ap.add_argument("--arms", default="onnx,onnx/int8,openvino/bf16", help="runtime/precision, comma-separated; the "
                    "first is the baseline (default: %(default)s)")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--work", type=Path, default=ROOT / "data" / "latency_budget")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    gallery = a.work / "gallery"
    build_gallery(gallery, a.images)
    if len(list(gallery.glob("*.png"))) != a.images:
        raise SystemExit(f"{gallery} holds other than {a.images} images: give it a --work of its own")
    arms = a.arms.split(",")
    best = dict.fromkeys(arms, float("inf"))
    for _ in range(a.rounds):
        for arm in arms:
            runtime, _, precision = arm.partition("/")
            with tempfile.TemporaryDirectory() as tmp:
                cmd = [sys.executable, "-m", "cirlab.cli", "index", "build", str(gallery), "--out", f"{tmp}/index",
                       "--cache", f"{tmp}/cache", "--runtime", runtime, "--encoder-precision", precision or "fp32",
                       "--quiet"]
                start = time.perf_counter()
                run = subprocess.run(cmd, capture_output=True, text=True)
                seconds = time.perf_counter() - start
            if run.returncode:
                raise SystemExit(f"{arm}: {run.stderr.strip().splitlines()[-1]}")
            best[arm] = min(best[arm], seconds)
            print(f"{arm}: {seconds:.1f} s", flush=True)
    rows = [{"arm": arm, "seconds": round(s, 1), "images_per_s": round(a.images / s, 1),
             "speedup": round(best[arms[0]] / s, 2)} for arm, s in best.items()]
    command = "python benchmarks/index_build_precision.py " + " ".join(sys.argv[1:])
    lines = ["# cirlab index build by encoder runtime and precision", "", f"Command: `{command}`", "",
             f"{a.images:,} gallery PNGs, each arm a fresh `cirlab index build` process (start, model load, encoding, "
             f"the exact index); best of {a.rounds}.", "",
             f"| arm | wall s | images/s | x {arms[0]} |", "|---|---:|---:|---:|"]
    lines += [f"| {r['arm']} | {r['seconds']} | {r['images_per_s']} | {r['speedup']} |" for r in rows]
    save_report("\n".join(lines) + "\n", a.out, {"command": command, "images": a.images, "rows": rows})


if __name__ == "__main__":
    main()
