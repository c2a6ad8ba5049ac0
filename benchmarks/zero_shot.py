"""Zero-shot composed search on a data set: every training-free method (``fusion.zero_shot``) in the offline aligned
space, next to the supervised ``sum`` on the same encoders.

    .venv/bin/python benchmarks/zero_shot.py --data data/emojiedit [--out benchmarks/results/zero-shot-emojiedit.md]

The aligned space is a stage-1 model trained under the zero-shot protocol (``Dataset.zero_shot()``: the training
images and their captions, no triplet) with the ``align`` preset: the offline stand-in for CLIP (docs/zero-shot.md).
Each zero-shot method is assembled on it (no training) and evaluated on the test split, the usual protocol. The
supervised ``sum`` trains on the training triplets (its config's 12 epochs, one seed) over the same frozen encoders
and pooled vectors, so the two rows differ only in what they learned from. Wall times are this machine's.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from cirlab.data.triplets import Dataset  # noqa: E402
from cirlab.encoders.cache import FeatureCache  # noqa: E402
from cirlab.experiment.sweep import recall_by_edit  # noqa: E402
from cirlab.experiment.workspace import Workspace, train_method  # noqa: E402
from cirlab.files import atomic_write_text  # noqa: E402
from cirlab.fusion import zero_shot_methods  # noqa: E402
from cirlab.training.stage1 import run_stage1  # noqa: E402
from cirlab.training.stage1_config import read_stage1_config  # noqa: E402


def row(name: str, ev, seconds: float) -> dict:
    return {"method": name, "R@1": ev.recall[1], "R@10": ev.recall[10], "R@1 by edit": recall_by_edit(ev, 1),
            "seconds": round(seconds, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path("data/emojiedit"))
    ap.add_argument("--work", type=Path, default=Path("data/zero_shot"))
    ap.add_argument("--out", type=Path, default=None, help="default: benchmarks/results/zero-shot-<data>.md")
    a = ap.parse_args()
    out = a.out or Path(__file__).parent / "results" / f"zero-shot-{a.data.name}.md"
    cache = FeatureCache(a.work / "cache")
    start = time.perf_counter()
    aligned = run_stage1(Dataset.open(a.data).zero_shot(), a.work / "aligned", cache, "efficientnet_lite0", "minilm",
                         read_stage1_config("align"), progress=False)
    stage1_seconds = time.perf_counter() - start
    ws = Workspace.open(a.data, cache, progress=False)
    rows = []
    for method in zero_shot_methods():
        start = time.perf_counter()
        model, _, _ = train_method(ws, method, {"model": {"aligned": str(aligned.out)}}, progress=False)
        rows.append(row(method, ws.evaluate(model, "test"), time.perf_counter() - start))
    start = time.perf_counter()
    model, _, _ = train_method(ws, "sum", progress=False, text_head=False)
    rows.append(row("sum (supervised)", ws.evaluate(model, "test"), time.perf_counter() - start))
    edits = sorted({e for r in rows for e in r["R@1 by edit"]})
    command = f"python benchmarks/zero_shot.py --data {a.data.as_posix()}"
    lines = [f"# Zero-shot composed search on {ws.dataset.name}", "", f"Command: `{command}`", "",
             "The aligned space: a stage-1 model trained under the zero-shot protocol (the training images and their "
             f"captions only, no triplet; `align` preset, {len(aligned.train.history)} epochs, "
             f"{stage1_seconds:.0f} s), caption -> image R@1 on its held-out training images "
             f"{aligned.alignment.get('val', {}).get('after', {}).get(1, float('nan')):.1f}. Every zero-shot method is "
             "assembled on it without training; `sum (supervised)` trains on the triplets over the same frozen "
             "encoders (pooled vectors, 12 epochs, seed 0). Test split, reference excluded; R@K in %.", "",
             "| method | R@1 | R@10 | " + " | ".join(f"R@1 {e}" for e in edits) + " | seconds |",
             "|---|---:|---:|" + "---:|" * len(edits) + "---:|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['R@1']:.1f} | {r['R@10']:.1f} | "
                     + " | ".join(f"{r['R@1 by edit'].get(e, float('nan')):.1f}" for e in edits) + f" | {r['seconds']} |")
    atomic_write_text(out, "\n".join(lines) + "\n")
    atomic_write_text(out.with_suffix(".json"), json.dumps({"command": command, "stage1_seconds": round(stage1_seconds, 1),
                                                            "alignment": aligned.alignment, "rows": rows}, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
