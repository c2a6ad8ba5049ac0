"""Paper 004's ablation on cirlab's data: stage-1 fine-tuning of none / text / image / both encoders,
then stage 2 (a fusion on the frozen, possibly tuned encoders) with and without pseudo triplets.

    .venv/bin/python benchmarks/stage1_ablation.py --data data/emojiedit [--method clip_cd]
        [--stage1-epochs 3] [--seeds 1] [--image-blocks 2] [--text-layers 1] [--name NAME]

Every arm starts from the same base encoders. "none" trains only stage 1's projections (its model
still scores the pseudo triplets). Reports test Recall@K (mean over stage-2 seeds), the pseudo
triplets made and kept, and the wall time of each stage on this machine: stage 1's frozen-trunk
pass and training, the re-encoding of the data set under the tuned encoders, and stage 2.
Writes benchmarks/results/<name>.md and .json. ``--reuse-stage1`` keeps stage-1 folders of an earlier run
with the same options (under --work) and reports their recorded wall times.
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

from cirlab import settings  # noqa: E402
from cirlab.config import method_config  # noqa: E402
from cirlab.encoders import DEFAULT_IMAGE_ENCODER, DEFAULT_TEXT_ENCODER, build_image_encoder, build_text_encoder  # noqa: E402
from cirlab.encoders.cache import FeatureCache  # noqa: E402
from cirlab.fusion import FeatureDims  # noqa: E402
from cirlab.training.run import Workspace, train_method, views_needed  # noqa: E402
from cirlab.training.stage1 import run_stage1, stage1_config  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--method", default="clip_cd")
    ap.add_argument("--stage1-epochs", type=int, default=3)
    ap.add_argument("--image-blocks", type=int, default=2)
    ap.add_argument("--text-layers", type=int, default=1)
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--arms", default="none,text,image,both")
    ap.add_argument("--work", type=Path, default=Path("data/stage1_ablation"))
    ap.add_argument("--name", default=None)
    ap.add_argument("--reuse-stage1", action="store_true",
                    help="reuse a stage-1 folder of an earlier run with the same options (its wall times are reported)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    a = ap.parse_args()
    cache = FeatureCache(settings.cache_dir())
    cfg = method_config(a.method)
    rows = []
    for tune in a.arms.split(","):
        t0 = time.perf_counter()
        folder = a.work / f"{a.data.name}-{tune}"
        options = {"tune": tune, "image_blocks": a.image_blocks, "text_layers": a.text_layers,
                   "train": {"epochs": a.stage1_epochs}}
        saved = json.loads((folder / "stage1.json").read_text()) if (folder / "stage1.json").is_file() else None
        if a.reuse_stage1 and saved and saved["config"] == stage1_config(options):
            s1 = SimpleNamespace(out=folder, image_spec=saved["image_spec"], text_spec=saved["text_spec"],
                                 seconds=saved["seconds"], val_recall={int(k): v for k, v in saved["val_recall"].items()})
        else:
            s1 = run_stage1(a.data, folder, cache, DEFAULT_IMAGE_ENCODER, DEFAULT_TEXT_ENCODER, options, progress=False)
        print(f"stage 1 {tune}: {s1.seconds} val {s1.val_recall}", file=sys.stderr, flush=True)
        t1 = time.perf_counter()
        dims = FeatureDims.of(build_image_encoder(s1.image_spec), build_text_encoder(s1.text_spec))
        iv, tv = views_needed([cfg], dims)
        ws = Workspace.open(a.data, cache, s1.image_spec, s1.text_spec, iv, tv, progress=False)
        encode_s = time.perf_counter() - t1
        for pseudo in (False, True):
            runs = []
            for seed in range(a.seeds):
                model, res, meta = train_method(ws, a.method, {"train": {"seed": seed}}, progress=False,
                                                text_head=False, pseudo=s1.out if pseudo else None)
                runs.append((ws.evaluate(model, "test").recall, res.seconds, meta.get("pseudo", {}), res.best_epoch))
            recall = {k: statistics.fmean(r[0][k] for r in runs) for k in runs[0][0]}
            row = {"tune": tune, "pseudo": pseudo, "recall": recall,
                   "stage1_val": s1.val_recall, "stage1_s": s1.seconds, "encode_s": encode_s,
                   "stage2_s": statistics.fmean(r[1] for r in runs), "made": runs[0][2].get("made"),
                   "kept": runs[0][2].get("kept"), "seeds": a.seeds, "best_epochs": [r[3] for r in runs]}
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
        del ws
        print(f"arm {tune}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    name = a.name or f"stage1-ablation-{a.data.name}"
    a.out.mkdir(parents=True, exist_ok=True)
    head = ("| fine-tuned | pseudo data | R@1 | R@5 | R@10 | R@50 | pseudo made / kept | stage 1 s (trunk + train) "
            "| re-encode s | stage 2 s | best epochs |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    lines = [head]
    for r in rows:
        rc = r["recall"]
        pseudo = f"{r['made']} / {r['kept']}" if r["pseudo"] else ""
        lines.append(f"| {r['tune']} | {'yes' if r['pseudo'] else 'no'} | {rc[1]:.1f} | {rc[5]:.1f} | {rc[10]:.1f} | "
                     f"{rc[50]:.1f} | {pseudo} | {r['stage1_s']['features']:.0f} + {r['stage1_s']['train']:.0f} | "
                     f"{r['encode_s']:.0f} | {r['stage2_s']:.0f} | {', '.join(map(str, r['best_epochs']))} |")
    command = "python " + " ".join(shlex.quote(x) for x in sys.argv)
    text = (f"# Paper 004's ablation on {a.data.name}\n\nCommand: `{command}`\n\n"
            f"Stage 1: sum fusion, batch classification loss at logit scale 100, {a.stage1_epochs} epochs "
            f"(configs/stage1.json otherwise), last {a.image_blocks} EfficientNet-Lite0 blocks + head / last "
            f"{a.text_layers} MiniLM layer(s). Stage 2: `{a.method}`, {cfg['train']['epochs']} epochs, best epoch by "
            f"validation, test Recall@K (%) mean over {a.seeds} seed(s). Pseudo triplets: s_max 4, cosine in "
            f"[0.90, 0.995], stage-1 score > 0.6, one pseudo epoch after every 3 real ones (epochs 4, 8, 12...; a run whose "
            f"best validation epoch comes before the first pseudo epoch ends as the run without them). Wall times on this "
            f"machine (2 CPU cores).\n\n" + "\n".join(lines) + "\n")
    (a.out / f"{name}.md").write_text(text)
    (a.out / f"{name}.json").write_text(json.dumps({"command": command, "rows": rows}, indent=1))
    print(text)


if __name__ == "__main__":
    main()
