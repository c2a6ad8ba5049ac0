"""Stage-1 ablations on cirlab's data: stage 1 adapts the encoders, stage 2 trains a fusion on them.

``--ablate tune`` (paper 004's ablation, the default): stage-1 fine-tuning of none / text / image /
both encoders with 004's composed objective, then stage 2 with and without pseudo triplets.

    .venv/bin/python benchmarks/stage1_ablation.py --data data/emojiedit [--method clip_cd]
        [--stage1-epochs 3] [--seeds 1] [--image-blocks 2] [--text-layers 1] [--name NAME]

``--ablate tasks`` (paper 001's ablation): stage 1 learns CAFF's domain tasks (image-caption
retrieval, attribute prediction, category adapters) each alone, all three together, or not at all
("none": no stage 1, stage 2 on the base encoders), then ``caff`` stage 2.

    .venv/bin/python benchmarks/stage1_ablation.py --ablate tasks --data data/emojiedit --seeds 2

Every arm starts from the same base encoders; in the tune ablation "none" trains only stage 1's
projections (its model still scores the pseudo triplets). A task the data cannot feed (CSS-like
scenes have no category) is reported as skipped. Reports test Recall@K (mean over stage-2 seeds),
the pseudo triplets made and kept, and the wall time of each stage on this machine: stage 1's
frozen-trunk pass and training, the re-encoding of the data set under the tuned encoders, and
stage 2. Writes benchmarks/results/stage1/<name>.md and .json. ``--reuse-stage1`` keeps stage-1 folders of
an earlier run with the same options (under --work) and reports their recorded wall times.
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
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from cirlab import settings
from cirlab.config import method_config
from cirlab.encoders import DEFAULT_IMAGE_ENCODER, DEFAULT_TEXT_ENCODER, build_image_encoder, build_text_encoder
from cirlab.encoders.cache import FeatureCache
from cirlab.errors import CirlabError
from cirlab.fusion import FeatureDims
from cirlab.experiment.workspace import Workspace, train_method, views_needed
from cirlab.training.stage1 import run_stage1
from cirlab.training.stage1_config import read_stage1_config, stage1_config

TASKS = ("retrieval", "attributes", "category")
DEFAULT_ARMS = {"tune": "none,text,image,both", "tasks": "none," + ",".join(TASKS) + ",all"}


def arm_options(a: argparse.Namespace, arm: str) -> dict | None:
    """Stage-1 options of an arm; None where the arm has no stage 1 (the tasks ablation's "none")."""
    common = {"image_blocks": a.image_blocks, "text_layers": a.text_layers, "train": {"epochs": a.stage1_epochs}}
    if a.ablate == "tune":
        return {"tune": arm, **common}
    if arm == "none":
        return None
    if arm != "all" and arm not in TASKS:
        raise SystemExit(f"unknown task arm {arm!r}; use none, {', '.join(TASKS)} or all")
    alone = {"composed": 0.0, **{t: float(t == arm) for t in TASKS}}
    tasks = read_stage1_config("caff")["tasks"] if arm == "all" else alone
    return {"tune": "both", "tasks": tasks, **common}


def stage1_arm(a: argparse.Namespace, cache: FeatureCache, arm: str, options: dict):
    """Run (or, with --reuse-stage1, read back) an arm's stage 1."""
    folder = a.work / f"{a.data.name}-{a.ablate}-{arm}" if a.ablate == "tasks" else a.work / f"{a.data.name}-{arm}"
    saved = json.loads((folder / "stage1.json").read_text()) if (folder / "stage1.json").is_file() else None
    if a.reuse_stage1 and saved and saved["config"] == stage1_config(options).to_dict():
        return SimpleNamespace(out=folder, image_spec=saved["image_spec"], text_spec=saved["text_spec"],
                               seconds=saved["seconds"], val_recall={int(k): v for k, v in saved["val_recall"].items()},
                               tasks=saved["tasks"], skipped=saved["skipped_tasks"])
    return run_stage1(a.data, folder, cache, DEFAULT_IMAGE_ENCODER, DEFAULT_TEXT_ENCODER, options, progress=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--ablate", choices=("tune", "tasks"), default="tune",
                    help="tune: paper 004's encoders x pseudo triplets; tasks: paper 001's (CAFF's) domain tasks")
    ap.add_argument("--method", default=None, help="stage-2 method (default: clip_cd for tune, caff for tasks)")
    ap.add_argument("--stage1-epochs", type=int, default=3)
    ap.add_argument("--stage2-epochs", type=int, default=None, help="override the method's epochs")
    ap.add_argument("--image-blocks", type=int, default=2)
    ap.add_argument("--text-layers", type=int, default=1)
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--arms", default=None, help="comma list (default: every arm of the ablation)")
    ap.add_argument("--work", type=Path, default=Path("data/stage1_ablation"))
    ap.add_argument("--name", default=None)
    ap.add_argument("--reuse-stage1", action="store_true",
                    help="reuse a stage-1 folder of an earlier run with the same options (its wall times are reported)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/stage1"))
    a = ap.parse_args()
    a.method = a.method or ("clip_cd" if a.ablate == "tune" else "caff")
    cache = FeatureCache(settings.cache_dir())
    stage2 = {"train": {"epochs": a.stage2_epochs}} if a.stage2_epochs else {}
    cfg = method_config(a.method, stage2)
    rows = []
    for arm in (a.arms or DEFAULT_ARMS[a.ablate]).split(","):
        t0 = time.perf_counter()
        options = arm_options(a, arm)
        try:
            s1 = stage1_arm(a, cache, arm, options) if options else None
        except CirlabError as e:  # a task the data cannot feed
            rows.append({"arm": arm, "skipped": str(e)})
            print(f"arm {arm}: skipped ({e})", file=sys.stderr, flush=True)
            continue
        if s1:
            print(f"stage 1 {arm}: {s1.seconds} val {s1.val_recall}", file=sys.stderr, flush=True)
        specs = (s1.image_spec, s1.text_spec) if s1 else (DEFAULT_IMAGE_ENCODER, DEFAULT_TEXT_ENCODER)
        t1 = time.perf_counter()
        dims = FeatureDims.of(build_image_encoder(specs[0]), build_text_encoder(specs[1]))
        iv, tv = views_needed([cfg], dims)
        ws = Workspace.open(a.data, cache, *specs, iv, tv, progress=False)
        encode_s = time.perf_counter() - t1
        for pseudo in ((False, True) if a.ablate == "tune" else (False,)):
            runs = []
            for seed in range(a.seeds):
                model, res, meta = train_method(ws, a.method, {"train": {**stage2.get("train", {}), "seed": seed}},
                                                progress=False, text_head=False, pseudo=s1.out if pseudo else None)
                runs.append((ws.evaluate(model, "test").recall, res.seconds, meta.get("pseudo", {}), res.best_epoch))
            recall = {k: statistics.fmean(r[0][k] for r in runs) for k in runs[0][0]}
            row = {"arm": arm, "tune": options["tune"] if options else "none", "pseudo": pseudo, "recall": recall,
                   "tasks": dict(s1.tasks) if s1 else {}, "skipped_tasks": dict(s1.skipped) if s1 else {},
                   "stage1_val": s1.val_recall if s1 else {},
                   "stage1_s": s1.seconds if s1 else {"features": 0.0, "train": 0.0}, "encode_s": encode_s,
                   "stage2_s": statistics.fmean(r[1] for r in runs), "made": runs[0][2].get("made"),
                   "kept": runs[0][2].get("kept"), "seeds": a.seeds, "best_epochs": [r[3] for r in runs]}
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
        del ws
        print(f"arm {arm}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    name = a.name or (f"stage1-ablation-{a.data.name}" if a.ablate == "tune" else f"caff-task-ablation-{a.data.name}")
    command = "python " + " ".join(shlex.quote(x) for x in sys.argv)
    text = (tune_report if a.ablate == "tune" else tasks_report)(a, cfg, rows, command)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / f"{name}.md").write_text(text)
    (a.out / f"{name}.json").write_text(json.dumps({"command": command, "rows": rows}, indent=1))
    print(text)


def _recalls(r: dict) -> str:
    return " | ".join(f"{r['recall'][k]:.1f}" for k in (1, 5, 10, 50))


def _times(r: dict) -> str:
    return (f"{r['stage1_s']['features']:.0f} + {r['stage1_s']['train']:.0f} | {r['encode_s']:.0f} | "
            f"{r['stage2_s']:.0f} | {', '.join(map(str, r['best_epochs']))} |")


def tune_report(a, cfg: dict, rows: list[dict], command: str) -> str:
    lines = ["| fine-tuned | pseudo data | R@1 | R@5 | R@10 | R@50 | pseudo made / kept | stage 1 s (trunk + train) "
             "| re-encode s | stage 2 s | best epochs |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        pseudo = f"{r['made']} / {r['kept']}" if r["pseudo"] else ""
        lines.append(f"| {r['tune']} | {'yes' if r['pseudo'] else 'no'} | {_recalls(r)} | {pseudo} | {_times(r)}")
    return (f"# Paper 004's ablation on {a.data.name}\n\nCommand: `{command}`\n\n"
            f"Stage 1: sum fusion, batch classification loss at logit scale 100, {a.stage1_epochs} epochs "
            f"(Stage1Config's defaults otherwise), last {a.image_blocks} EfficientNet-Lite0 blocks + head / last "
            f"{a.text_layers} MiniLM layer(s). Stage 2: `{a.method}`, {cfg['train']['epochs']} epochs, best epoch by "
            f"validation, test Recall@K (%) mean over {a.seeds} seed(s). Pseudo triplets: s_max 4, cosine in "
            f"[0.90, 0.995], stage-1 score > 0.6, one pseudo epoch after every 3 real ones (epochs 4, 8, 12...; a run "
            f"whose best validation epoch comes before the first pseudo epoch ends as the run without them). Wall "
            f"times on this machine (2 CPU cores).\n\n" + "\n".join(lines) + "\n")


def tasks_report(a, cfg: dict, rows: list[dict], command: str) -> str:
    lines = ["| stage-1 tasks | ran | R@1 | R@5 | R@10 | R@50 | stage 1 s (trunk + train) | re-encode s | stage 2 s "
             "| best epochs |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['arm']} | skipped: {r['skipped']} |" + " |" * 8)
            continue
        ran = "no stage 1" if r["arm"] == "none" else ", ".join(r["tasks"]) + \
            "".join(f"; {k} skipped ({why})" for k, why in r["skipped_tasks"].items())
        lines.append(f"| {r['arm']} | {ran} | {_recalls(r)} | {_times(r)}")
    return (f"# Paper 001's (CAFF's) domain-task ablation on {a.data.name}\n\nCommand: `{command}`\n\n"
            f"Stage 1 learns the named domain tasks only (no composed objective; configs/stage1/caff.json weighs all "
            f"three 1.0): `retrieval` is image-caption symmetric InfoNCE, `attributes` a multi-label head on the image "
            f"vector, `category` residual adapters pulling an image and its category's name together. {a.stage1_epochs} "
            f"epochs, last {a.image_blocks} EfficientNet-Lite0 blocks + head and last {a.text_layers} MiniLM layer(s) "
            f"tuned; the kept epoch is the one where the stage-1 sum model's composed validation recall is best "
            f"(a measure of how well the two encoders' spaces line up, since no task here trains composition). "
            f"\"none\": no stage 1, stage 2 on the base encoders. Stage 2: `{a.method}`, {cfg['train']['epochs']} epochs, "
            f"best epoch by validation, test Recall@K (%) mean over {a.seeds} seed(s). Wall times on this machine "
            f"(2 CPU cores).\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
