"""Issue 14's device benchmark: for each device here, the speed of the four things a user waits for, at the default
encoders and at a CLIP ViT-B/32-sized model (random weights: no CLIP weights exist offline; the speed is the same).

    .venv/bin/python benchmarks/device_bench.py [--devices cpu,cuda] [--data data/emojiedit] [--images 256]
        [--triplets 256] [--queries 50] [--models default,clip-b32] [--out benchmarks/results/device/device_bench.md]

Per device and model, everything through cirlab's own code paths, PyTorch runtime, that device's auto precision
(fp32 on the CPU, bf16 or fp16 autocast on CUDA):

- **images/s**: ``--images`` EmojiEdit images encoded (decode, preprocess, network; pooled view; no cache), batch 32;
- **stage-1 steps/s**: ``run_stage1`` on the first ``--triplets`` training triplets, one epoch, batch 64; default
  encoders: ``Stage1Config``'s defaults (last 2 image blocks from cached trunk outputs + last text layer); CLIP:
  the ``clip_ft`` preset (both towers whole, paper 004). The time is the epoch's training steps, not validation;
- **stage-2 triplets/s**: ``combiner`` (the default method), one epoch on those triplets' cached features;
- **query ms**: a search with an uploaded image and a text the pipeline has not seen (image encode, text encode,
  fusion, exact search over the ``--images`` gallery), median and p90 over ``--queries``.

The CLIP-B/32-sized model is ``transformers``' ``CLIPConfig()`` defaults (ViT-B/32 at 224 px, 12-layer 512-wide
text tower, 49,408-token vocabulary) with random weights, saved once under ``--work``; its tokenizer is a small
word-piece vocabulary (a modification text is about as many tokens as with CLIP's BPE).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from cirlab.api import Pipeline
from cirlab.config import method_config
from cirlab.devices import Placement, available, precision_name, resolve_device, resolve_precision
from cirlab.encoders import build_image_encoder
from cirlab.encoders.cache import FeatureCache
from cirlab.experiment.workspace import Workspace, train_method
from cirlab.hardware import cpu_model
from cirlab.images import load_image
from cirlab.training.stage1 import run_stage1
from cirlab.training.stage1_config import read_stage1_config

from _report import save_report

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + (
    "make it the skin tone light medium dark a man woman person face facing left right other way red blue green "
    "yellow purple brown with without hair curly white bald instead of same but".split())


def clip_b32(folder: Path) -> Path:
    """A randomly initialised CLIP with ViT-B/32's shapes, saved once in ``folder``."""
    if (folder / "config.json").is_file():
        return folder
    from transformers import BertTokenizer, CLIPConfig, CLIPModel

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(WORDS) + "\n")
    BertTokenizer(str(folder / "vocab.txt")).save_pretrained(folder)
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(text_config={"eos_token_id": 3, "pad_token_id": 0, "bos_token_id": 2})).save_pretrained(folder)
    return folder


def subset(data: Path, work: Path, triplets: int) -> Path:
    """A data set of ``data``'s first ``triplets`` training triplets and 64 validation ones, on the images they name
    (so that validation searches their images, not the whole split's)."""
    out = work / f"{data.name}-{triplets}"
    out.mkdir(parents=True, exist_ok=True)
    meta = json.loads((data / "dataset.json").read_text())
    if not (out / "images").exists():
        (out / "images").symlink_to((data / meta["images"]).resolve())
    used: set[str] = set()
    for split, n in (("train", triplets), ("val", 64)):
        lines = (data / meta["splits"][split]).read_text().splitlines()[:n]
        used.update(x for line in lines for t in [json.loads(line)] for x in [t["reference"], *t["targets"]])
        (out / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    records = [line for line in (data / "images.jsonl").read_text().splitlines() if json.loads(line)["id"] in used]
    (out / "images.jsonl").write_text("\n".join(records) + "\n")
    (out / "dataset.json").write_text(json.dumps({**meta, "images": "images",
                                                  "splits": {"train": "train.jsonl", "val": "val.jsonl"}}))
    return out


def torch_on(device: str) -> Placement:
    """PyTorch on ``device`` in its auto precision: the device comparison is PyTorch's (encode_throughput.py has the
    runtimes)."""
    return Placement.resolve(device, "torch", "auto")


def images_per_second(spec: str, device: str, paths: list[Path]) -> float:
    enc = build_image_encoder(spec, torch_on(device))
    enc.encode_images([load_image(p) for p in paths[:8]])  # warm-up (CUDA kernels, allocator)
    sync(device)
    start = time.perf_counter()
    for s in range(0, len(paths), 32):
        enc.encode_images([load_image(p) for p in paths[s:s + 32]])
    sync(device)
    return len(paths) / (time.perf_counter() - start)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def stage1_steps(ds: Path, work: Path, specs: tuple[str, str], preset: str | None, device: str) -> dict:
    cfg = read_stage1_config(preset) if preset else {}
    cfg["train"] = {**cfg.get("train", {}), "epochs": 1, "batch_size": 64}
    res = run_stage1(ds, work / "stage1", FeatureCache(work / "cache"), *specs, cfg, progress=False,
                     placement=torch_on(device))
    seconds = res.train.history[0]["seconds"]
    steps = -(-res.train.triplets // 64)
    return {"steps_per_s": steps / seconds, "steps": steps, "seconds": seconds}


def stage2_and_query(ds: Path, work: Path, specs: tuple[str, str], device: str, paths: list[Path],
                     queries: int) -> dict:
    cfg = method_config("combiner")
    cfg["train"]["epochs"] = 1
    ws = Workspace.for_configs(ds, FeatureCache(work / "cache"), *specs, [cfg], progress=False,
                               placement=torch_on(device))
    out = work / "combiner.pt"
    _, result, _ = train_method(ws, "combiner", cfg, out=out, progress=False)
    pipe = Pipeline.load(out, work / "cache", torch_on(device))
    gallery = pipe.encode_gallery(_gallery(paths), progress=False)
    uploads = [load_image(p) for p in paths[:queries]]
    pipe.search(gallery, uploads[0], "warm up the kernels", k=10)
    times = []
    for n, image in enumerate(uploads):
        start = time.perf_counter()
        pipe.search(gallery, image, f"make it red and facing the other way {n}", k=10)
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    return {"triplets_per_s": result.triplets / result.history[0]["seconds"],
            "query_p50_ms": statistics.median(times), "query_p90_ms": times[int(0.9 * (len(times) - 1))]}


def _gallery(paths: list[Path]):
    from cirlab.data.triplets import Gallery

    return Gallery([p.stem for p in paths], list(paths))


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"{cpu_model()}, {torch.get_num_threads()} threads"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", default=",".join(available()), help="default: every device here")
    ap.add_argument("--models", default="default,clip-b32")
    ap.add_argument("--data", type=Path, default=Path("data/emojiedit"))
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--triplets", type=int, default=256)
    ap.add_argument("--queries", type=int, default=50)
    ap.add_argument("--work", type=Path, default=Path("data/device_bench"))
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "device" / "device_bench.md")
    a = ap.parse_args()
    if not (a.data / "dataset.json").is_file():
        sys.exit(f"{a.data} is not a data set: build it with 'cirlab data make emojiedit --out {a.data}'")
    os.environ["CIRLAB_HOME"] = str((a.work / "home").resolve())  # exports and models of this run, not the user's
    ds = subset(a.data, a.work, a.triplets)
    paths = sorted((a.data / "images").glob("*.png"))[:a.images]
    specs = {"default": (("efficientnet_lite0", "minilm"), None),
             "clip-b32": ((f"clip:{clip_b32(a.work / 'clip-b32')}",) * 2, "clip_ft")}
    rows = []
    for device in a.devices.split(","):
        where = resolve_device(device)
        for model in a.models.split(","):
            (image_spec, text_spec), preset = specs[model]
            work = a.work / f"{model}-{str(where).replace(':', '')}"
            row = {"device": str(where), "hardware": device_name(str(where)), "model": model,
                   "precision": precision_name(resolve_precision("auto", where))}
            row["images_per_s"] = images_per_second(image_spec, str(where), paths)
            row.update(stage1_steps(ds, work, (image_spec, text_spec), preset, str(where)))
            row.update(stage2_and_query(ds, work, (image_spec, text_spec), str(where), paths, a.queries))
            print(json.dumps(row), flush=True)
            rows.append(row)
    lines = ["# Device benchmark", "",
             f"Command: `python benchmarks/device_bench.py --devices {a.devices} --models {a.models} --images {a.images} "
             f"--triplets {a.triplets} --queries {a.queries}`", "",
             "PyTorch runtime; each device's auto precision. Stage 1: one epoch of "
             f"{a.triplets} EmojiEdit triplets at batch 64 (default encoders: Stage1Config's defaults; CLIP-B/32: the "
             "clip_ft preset, both towers whole). Stage 2: combiner, one epoch on cached features. Query: an uploaded "
             f"image and a new text, exact search over {a.images} images.", "",
             "| device | hardware | model | precision | images/s | stage-1 steps/s | stage-2 triplets/s | query p50 ms "
             "| query p90 ms |", "|---|---|---|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['device']} | {r['hardware']} | {r['model']} | {r['precision']} | {r['images_per_s']:.1f} | "
              f"{r['steps_per_s']:.3f} | {r['triplets_per_s']:.0f} | {r['query_p50_ms']:.1f} | {r['query_p90_ms']:.1f} |"
              for r in rows]
    save_report("\n".join(lines) + "\n", a.out, {"rows": rows, "args": {k: str(v) for k, v in vars(a).items()}})


if __name__ == "__main__":
    main()
