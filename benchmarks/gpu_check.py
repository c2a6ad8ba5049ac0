"""The parts of ``benchmarks/gpu_check.sh`` that are Python: preparing its inputs, the parity of a query vector
across devices, the data-parallel step, and the summary.

    python benchmarks/gpu_check.py prepare --data data/emojiedit --work WORK [--triplets 256]
    python benchmarks/gpu_check.py parity --model WORK/chain/model.pt --device cuda --out OUT/parity.json
    python benchmarks/gpu_check.py summary --out OUT [--dry-run]

``prepare`` writes a CLIP ViT-B/32-sized model with random weights (``device_bench.clip_b32``: no CLIP weights
exist offline, and the speed is the same), a subset of the data set (its first ``--triplets`` training triplets
and 64 validation ones) and a stage-1 config: the ``clip_ft`` preset (both towers whole, paper 004) for one epoch.

``parity`` loads one checkpoint twice, on the CPU in fp32 and on ``--device``, and composes the same queries on
both (the data set's first validation references with their texts, through ``Pipeline``): the largest absolute
difference and the smallest cosine between the two devices' query vectors.

``summary`` reads the steps' status lines (``steps.tsv``: name, exit code, seconds) and the parity JSON and writes
``summary.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))


def prepare(a) -> None:
    from device_bench import clip_b32, subset

    from cirlab.training.stage1_config import read_stage1_config

    a.work.mkdir(parents=True, exist_ok=True)
    clip_b32(a.work / "clip-b32")
    subset(a.data, a.work, a.triplets)
    cfg = dict(read_stage1_config("clip_ft"))
    cfg["train"] = {**cfg.get("train", {}), "epochs": 1}
    (a.work / "stage1-clip_ft-1epoch.json").write_text(json.dumps(cfg, indent=1))
    print(f"prepared {a.work}: clip-b32/, {a.data.name}-{a.triplets}/, stage1-clip_ft-1epoch.json")


def parity(a) -> None:
    import numpy as np
    import torch

    from cirlab.api import Pipeline
    from cirlab.data.triplets import Dataset
    from cirlab.devices import Placement
    from cirlab.images import load_image

    ds = Dataset.open(a.data)
    triplets = ds.triplets("val")[:a.queries]
    gallery = ds.gallery()
    files = dict(zip(gallery.ids, gallery.paths))
    images = [load_image(files[t.reference]) for t in triplets]
    texts = [t.text for t in triplets]

    def vectors(placement: Placement) -> np.ndarray:
        pipe = Pipeline.load(a.model, a.work / f"cache-parity-{placement.device.type}", placement)
        with torch.inference_mode():
            return np.stack([pipe.compose(image, text) for image, text in zip(images, texts)])

    cpu = vectors(Placement.resolve("cpu", "torch", "fp32"))
    other = vectors(Placement.resolve(a.device, "torch", "auto"))
    cos = (cpu * other).sum(1) / (np.linalg.norm(cpu, axis=1) * np.linalg.norm(other, axis=1))
    out = {"device": a.device, "queries": len(triplets), "max_abs_diff": float(np.abs(cpu - other).max()),
           "min_cosine": float(cos.min()), "mean_cosine": float(cos.mean())}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out))


def summary(a) -> None:
    steps = [line.split("\t") for line in (a.out / "steps.tsv").read_text().splitlines() if line.strip()]
    lines = ["# GPU check" + (" (dry run, on the CPU)" if a.dry_run else ""), "",
             f"Command: `bash benchmarks/gpu_check.sh{' --dry-run' if a.dry_run else ''}`", "",
             "| step | exit code | seconds | what |", "|---|---:|---:|---|"]
    lines += [f"| {name} | {rc} | {seconds} | {what} |" for name, rc, seconds, what in steps]
    parity_file = a.out / "parity.json"
    if parity_file.is_file():
        p = json.loads(parity_file.read_text())
        lines += ["", f"Query vectors, CPU fp32 against {p['device']} (its auto precision), {p['queries']} queries: "
                      f"largest absolute difference {p['max_abs_diff']:.2e}, smallest cosine {p['min_cosine']:.6f}."]
    lines += ["", "Logs of each step beside this file (`<step>.log`)."]
    (a.out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="verb", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--data", type=Path, default=Path("data/emojiedit"))
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--triplets", type=int, default=256)
    q = sub.add_parser("parity")
    q.add_argument("--model", type=Path, required=True)
    q.add_argument("--data", type=Path, required=True)
    q.add_argument("--device", default="cuda")
    q.add_argument("--queries", type=int, default=16)
    q.add_argument("--work", type=Path, required=True)
    q.add_argument("--out", type=Path, required=True)
    s = sub.add_parser("summary")
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--dry-run", action="store_true")
    a = ap.parse_args()
    {"prepare": prepare, "parity": parity, "summary": summary}[a.verb](a)


if __name__ == "__main__":
    main()
