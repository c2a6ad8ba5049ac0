"""Zero-shot composed search on a data set: every zero-shot method (``fusion.zero_shot``) in the offline aligned space,
next to the supervised ``sum`` on the same encoders and, where given, the best supervised result.

    .venv/bin/python benchmarks/zero_shot.py --data data/emojiedit [--seeds 3] [--best RESULTS.json]
        [--out benchmarks/results/zero_shot/zero-shot-emojiedit.md]

The aligned space is a stage-1 model trained under the zero-shot protocol (``Dataset.zero_shot()``: the training
images and their captions, no triplet) with the ``align`` preset: the offline stand-in for CLIP (docs/zero-shot.md).
Each zero-shot method is assembled on it: the training-free ones once (they are deterministic), Pic2Word and LinCIR
trained on the training images or captions alone for each of ``--seeds`` seeds. All are evaluated on the test split,
the usual protocol. The supervised ``sum`` trains on the training triplets (its config's 12 epochs) over the same
frozen encoders and pooled vectors, so those rows differ only in what they learned from. ``--best``: a saved bench
JSON (``cirlab bench``) whose best method's mean R@1 is the supervised best the 0.7x target is measured against.
Each method's checkpoint is kept under ``--work`` (``benchmarks/zero_shot_latency.py`` serves them). Wall times are
this machine's.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from cirlab.data.triplets import Dataset
from cirlab.encoders.cache import FeatureCache
from cirlab.experiment.measures.edits import recall_by
from cirlab.experiment.workspace import Workspace, train_method
from cirlab.files import atomic_write_text
from cirlab.fusion import zero_shot_methods
from cirlab.training.stage1 import run_stage1
from cirlab.training.stage1_config import read_stage1_config


def measure(ws: Workspace, name: str, method: str, config: dict, seeds: int, work: Path) -> dict:
    """Each seed's R@1, R@10, R@1 by edit and on novel compositions; the mean over seeds; the times."""
    runs = []
    for seed in range(seeds):
        start = time.perf_counter()
        out = work / "models" / f"{name.split()[0]}-seed{seed}.pt"
        model, result, _ = train_method(ws, method, {**config, "train": {**config.get("train", {}), "seed": seed}},
                                        out=out, progress=False, text_head=False)
        prepared = time.perf_counter() - start
        ev = ws.evaluate(model, "test")
        runs.append({"R@1": ev.recall[1], "R@10": ev.recall[10], "by edit": recall_by(ev, "edit", 1),
                     "novel": recall_by(ev, "composition", 1).get("novel"), "train s": round(prepared, 1),
                     "eval s": round(time.perf_counter() - start - prepared, 1), "queries": len(ev.triplets)})
        if model.zero_shot and not model.num_parameters():
            break  # nothing learned, nothing seeded: one run is every run

    def mean(key):
        values = [r[key] for r in runs if r[key] is not None]
        return float(np.mean(values)) if values else None
    edits = sorted({e for r in runs for e in r["by edit"]})
    return {"method": name, "seeds": len(runs), "R@1": mean("R@1"), "R@1 std": float(np.std([r["R@1"] for r in runs])),
            "R@10": mean("R@10"), "novel R@1": mean("novel"), "train s": mean("train s"), "eval s": mean("eval s"),
            "R@1 by edit": {e: float(np.mean([r["by edit"][e] for r in runs if e in r["by edit"]])) for e in edits},
            "runs": runs}


def best_supervised(path: Path | None) -> dict | None:
    if path is None:
        return None
    runs = json.loads(path.read_text())["runs"]
    names = sorted({r["name"] for r in runs})
    means = {n: float(np.mean([r["recall"]["1"] for r in runs if r["name"] == n])) for n in names}
    best = max(means, key=means.get)
    return {"method": best, "R@1": means[best], "source": path.as_posix()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path("data/emojiedit"))
    ap.add_argument("--work", type=Path, default=None, help="default: data/zero_shot/<data>")
    ap.add_argument("--seeds", type=int, default=3, help="seeds of the trained methods (default: %(default)s)")
    ap.add_argument("--epochs", type=int, default=None,
                    help="epochs of pic2word's and lincir's mapping (default: their configs' 20; fewer on a large set)")
    ap.add_argument("--best", type=Path, default=None, help="a bench JSON holding the best supervised method")
    ap.add_argument("--out", type=Path, default=None, help="default: benchmarks/results/zero_shot/zero-shot-<data>.md")
    a = ap.parse_args()
    out = a.out or Path(__file__).parent / "results" / "zero_shot" / f"zero-shot-{a.data.name}.md"
    work = a.work or Path("data/zero_shot") / a.data.name
    cache = FeatureCache(work / "cache")
    start = time.perf_counter()
    aligned = run_stage1(Dataset.open(a.data).zero_shot(), work / "aligned", cache, "efficientnet_lite0", "minilm",
                         read_stage1_config("align"), progress=False)
    stage1_seconds = time.perf_counter() - start
    ws = Workspace.open(a.data, cache, progress=False)
    train = {"epochs": a.epochs} if a.epochs else {}
    rows = [measure(ws, m, m, {"model": {"aligned": str(aligned.out)}, "train": train}, a.seeds, work)
            for m in zero_shot_methods()]
    rows.append(measure(ws, "sum (supervised)", "sum", {}, a.seeds, work))
    best = best_supervised(a.best)
    zs = [r for r in rows if r["method"] != "sum (supervised)"]
    top = max(zs, key=lambda r: r["R@1"])
    edits = sorted({e for r in rows for e in r["R@1 by edit"]})
    novel = any(r["novel R@1"] is not None for r in rows)
    command = f"python benchmarks/zero_shot.py --data {a.data.as_posix()} --seeds {a.seeds}" + (
        f" --epochs {a.epochs}" if a.epochs else "") + (f" --best {a.best.as_posix()}" if a.best else "")
    lines = [f"# Zero-shot composed search on {ws.dataset.name}", "", f"Command: `{command}`", "",
             "The aligned space: a stage-1 model trained under the zero-shot protocol (the training images and their "
             f"captions only, no triplet; `align` preset, {len(aligned.train.history)} epochs, "
             f"{stage1_seconds:.0f} s), caption -> image R@1 on its held-out training images "
             f"{aligned.alignment.get('val', {}).get('after', {}).get(1, float('nan')):.1f}. The training-free methods "
             "are assembled on it once; `pic2word` (on the training images) and `lincir` (on their captions) train "
             f"their mapping ({a.epochs or 20} epochs) for {a.seeds} seed(s), no triplet read; `sum (supervised)` "
             "trains on the triplets over "
             "the same frozen encoders (pooled vectors, 12 epochs). Test split, reference excluded; R@K in %, the mean "
             "over seeds; `train s` is the preparation's wall time (stage 2; stage 1 is above), `eval s` the test "
             "split's.", "",
             "| method | seeds | R@1 | R@10 | " + ("R@1 novel | " if novel else "")
             + " | ".join(f"R@1 {e}" for e in edits) + " | train s | eval s |",
             "|---|---:|---:|---:|" + ("---:|" if novel else "") + "---:|" * len(edits) + "---:|---:|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['seeds']} | {r['R@1']:.1f} ± {r['R@1 std']:.1f} | {r['R@10']:.1f} | "
                     + (f"{r['novel R@1']:.1f} | " if novel else "")
                     + " | ".join(f"{r['R@1 by edit'].get(e, float('nan')):.1f}" for e in edits)
                     + f" | {r['train s']:.1f} | {r['eval s']:.1f} |")
    lines += ["", f"Best zero-shot method: `{top['method']}`, R@1 {top['R@1']:.1f}: "
              f"{top['R@1'] / rows[-1]['R@1']:.2f}x the supervised `sum` on the same encoders"
              + (f", {top['R@1'] / best['R@1']:.2f}x the best supervised R@1 ({best['method']}, {best['R@1']:.1f}, "
                 f"`{best['source']}`; the target is 0.7x)." if best else ".")]
    atomic_write_text(out, "\n".join(lines) + "\n")
    atomic_write_text(out.with_suffix(".json"), json.dumps(
        {"command": command, "stage1_seconds": round(stage1_seconds, 1),
         "alignment": aligned.alignment, "rows": rows, "best_supervised": best}, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
