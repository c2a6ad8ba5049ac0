"""Issue 13's study of the image side: input resolution, end-to-end fine-tuning with augmentation, and
generalisation to an art style held out of training.

Each *arm* is an image encoder, optionally fine-tuned by stage 1 first; stage 2 then trains the
given methods on it over seeds (``cirlab bench``'s code path) and every model is evaluated on the
test split and on ``--extra-splits``. An arm is written ``NAME=SIZE[/BLOCKS[/AUGMENT]]``:

- ``frozen224=224``: the frozen encoder at 224 px (the default);
- ``frozen112=112``: the same weights at 112 px;
- ``last2=224/2``: stage 1 tunes the last 2 blocks from cached trunk outputs (the fast path);
- ``e2e112=112/all/scale=0.15,blur=1,noise=0.02``: stage 1 tunes the whole network from augmented
  images read every batch.

    .venv/bin/python benchmarks/end_to_end.py --data data/emojiedit-ff --extra-splits test-twemoji \\
        --methods sum --image-head colour --seeds 3 \\
        --arms "frozen224=224;frozen112=112;e2e112=112/all/scale=0.15,blur=1,noise=0.02"

Stage 1 runs paper 004's composed objective (``Stage1Config``: sum fusion, logit scale 100,
best epoch by validation recall) for ``--stage1-epochs``, tuning the image encoder only. Writes
``benchmarks/results/end_to_end/<name>.md`` and ``.json`` with, per arm and method: test R@1 / R@10 (mean ± std
over seeds), R@1 by edit type, R@1 on the extra splits, and the wall time per epoch of stage 1 and
stage 2 on this machine. Stage-1 folders go under ``--work`` (``--reuse-stage1`` keeps them).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from cirlab import settings
from cirlab.config import DEFAULT_TEXT_ENCODER
from cirlab.encoders.cache import FeatureCache
from cirlab.experiment import run_bench
from cirlab.experiment.measures.splits import Splits
from cirlab.training.stage1 import run_stage1
from cirlab.training.stage1_config import stage1_config


def parse_arm(text: str) -> dict:
    """``e2e112=112/all/scale=0.15`` -> name, size, blocks (None: no stage 1), augment."""
    name, _, rest = text.partition("=")
    parts = rest.split("/", 2)
    if not name or not parts[0].isdigit():
        raise SystemExit(f"arm {text!r}: write NAME=SIZE[/BLOCKS[/AUGMENT]]")
    blocks = parts[1] if len(parts) > 1 else None
    return {"name": name, "size": int(parts[0]), "augment": parts[2] if len(parts) > 2 else "",
            "blocks": None if blocks is None else (blocks if blocks == "all" else int(blocks))}


def stage1(a, cache: FeatureCache, arm: dict) -> tuple[str, dict]:
    """The arm's image encoder spec, after stage 1 where it has one; and stage 1's record."""
    spec = "efficientnet_lite0" if arm["size"] == 224 else f"efficientnet_lite0:size={arm['size']}"
    if arm["blocks"] is None:
        return spec, {}
    options = {"tune": "image", "image_blocks": arm["blocks"], "augment": arm["augment"],
               "train": {"epochs": a.stage1_epochs}}
    folder = a.work / f"{a.data.name}-{arm['name']}"
    saved = folder / "stage1.json"
    if a.reuse_stage1 and saved.is_file() and json.loads(saved.read_text())["config"] == stage1_config(options).to_dict():
        record = json.loads(saved.read_text())
    else:
        res = run_stage1(a.data, folder, cache, spec, a.text_encoder, options, progress=False)
        record = {"config": stage1_config(options).to_dict(), **res.to_dict()}
    epochs = len(record["train"]["history"])
    info = {"epochs": epochs, "best_epoch": record["train"]["best_epoch"], "s_per_epoch": record["seconds"]["train"] / epochs,
            "features_s": record["seconds"]["features"], "val_recall": record["val_recall"]}
    print(f"stage 1 {arm['name']}: {info}", file=sys.stderr, flush=True)
    return record["image_spec"], info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--arms", required=True, help="';'-separated NAME=SIZE[/BLOCKS[/AUGMENT]]")
    ap.add_argument("--methods", default="sum")
    ap.add_argument("--image-head", default="colour")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--extra-splits", default="")
    ap.add_argument("--stage1-epochs", type=int, default=3)
    ap.add_argument("--text-encoder", default=DEFAULT_TEXT_ENCODER)
    ap.add_argument("--work", type=Path, default=Path("data/end_to_end"))
    ap.add_argument("--reuse-stage1", action="store_true")
    ap.add_argument("--name", default=None)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "end_to_end")
    a = ap.parse_args()
    cache = FeatureCache(settings.cache_dir())
    extra = [s for s in a.extra_splits.split(",") if s]
    rows = []
    for arm in map(parse_arm, a.arms.split(";")):
        t0 = time.perf_counter()
        spec, s1 = stage1(a, cache, arm)
        bench = run_bench(a.data, a.methods.split(","), a.seeds, cache, spec, a.text_encoder, progress=False,
                          log=lambda line: print(line, file=sys.stderr, flush=True), image_head=a.image_head,
                          measures=[Splits(extra)] if extra else ())
        for method in bench.names():
            runs = [r for r in bench.runs if r.name == method]
            rows.append({"arm": arm, "image_spec": spec, "method": method, "stage1": s1,
                         "recall": {k: [r.recall[k] for r in runs] for k in (1, 10)},
                         "by_edit_r1": {e: statistics.fmean(r.measured["by_edit_r1"].get(e, 0.0) for r in runs)
                                        for e in sorted({e for r in runs for e in r.measured["by_edit_r1"]})},
                         "by_split": {k: [r.measured["by_split"][k] for r in runs] for k in runs[0].measured.get("by_split", {})},
                         "stage2_s": statistics.fmean(r.train_seconds for r in runs)})
        print(f"arm {arm['name']}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    name = a.name or f"end-to-end-{a.data.name}"
    command = "python " + " ".join(shlex.quote(x) for x in sys.argv)
    text = report(a, rows, command, extra)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / f"{name}.md").write_text(text)
    (a.out / f"{name}.json").write_text(json.dumps({"command": command, "rows": rows}, indent=1))
    print(text)


def _ms(values: list[float]) -> str:
    return f"{statistics.fmean(values):.1f}" + (f" ± {statistics.stdev(values):.1f}" if len(values) > 1 else "")


def report(a, rows: list[dict], command: str, extra: list[str]) -> str:
    edits = sorted({e for r in rows for e in r["by_edit_r1"]})
    head = (["arm", "input px", "stage 1", "method", "R@1", "R@10"] + [f"{s} R@1" for s in extra]
            + [f"R@1 / {s} R@1" for s in extra] + [f"R@1 {e}" for e in edits] + ["stage 1 s/epoch", "stage 2 s"])
    lines = ["| " + " | ".join(head) + " |", "|---|---:|---|---|" + "---:|" * (len(head) - 4)]
    for r in rows:
        arm, s1 = r["arm"], r["stage1"]
        tuned = "frozen" if arm["blocks"] is None else f"{arm['blocks']} blocks"
        tuned += f", {arm['augment']}" if arm["augment"] else ""
        r1 = statistics.fmean(r["recall"][1])
        cells = [arm["name"], str(arm["size"]), tuned, r["method"], _ms(r["recall"][1]), _ms(r["recall"][10])]
        cells += [_ms(r["by_split"][f"{s} R@1"]) for s in extra]
        cells += [f"{r1 / max(statistics.fmean(r['by_split'][f'{s} R@1']), 1e-9):.2f}" for s in extra]
        cells += [f"{r['by_edit_r1'].get(e, 0.0):.1f}" for e in edits]
        cells += [f"{s1['s_per_epoch']:.0f}" if s1 else "", f"{r['stage2_s']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return (f"# Image side: resolution, end-to-end fine-tuning, held-out art style ({a.data.name})\n\n"
            f"Command: `{command}`\n\nStage 1 (where an arm has one): paper 004's composed objective, image encoder "
            f"only, {a.stage1_epochs} epochs, best epoch by validation recall. Stage 2: {a.methods} with image head "
            f"`{a.image_head}`, {a.seeds} seed(s), test Recall@K (%) mean ± std; R@1 by edit type is the mean over "
            f"seeds; stage 2 s is the mean training time of one seed. Wall times on this machine (2 CPU cores).\n\n"
            + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
