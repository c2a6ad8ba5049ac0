"""Throughput of the default encoders on this machine (no cache): images/s and texts/s.

    .venv/bin/python benchmarks/encode_throughput.py [--images 256] [--batch 32]

Images are EmojiEdit-sized PNGs drawn from Twemoji (decoding and preprocessing included);
texts are modification texts of EmojiEdit's phrasings. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from cirlab.data.emojiedit import collect_emoji  # noqa: E402
from cirlab.encoders import build_image_encoder, build_text_encoder  # noqa: E402
from cirlab.images import load_image  # noqa: E402


def timed(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--texts", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--text-batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args()
    ie, te = build_image_encoder(), build_text_encoder()
    paths = [r["src"] for r in collect_emoji()[: a.images]]
    texts = [f"change it to {c} and make it {s}" for c in ("red", "blue", "dark skin", "a woman") for s in ("smaller", "larger")]
    texts = (texts * (a.texts // len(texts) + 1))[: a.texts]

    def images() -> None:
        for s in range(0, len(paths), a.batch):
            ie.encode_images([load_image(p) for p in paths[s:s + a.batch]])

    def texts_fn() -> None:
        for s in range(0, len(texts), a.text_batch):
            te.encode_texts(texts[s:s + a.text_batch])

    images()  # warm-up
    ti = timed(images, a.repeats)
    tt = timed(texts_fn, a.repeats)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print("| encoder | batch | items | seconds | items/s |")
    print("|---|---:|---:|---:|---:|")
    print(f"| {ie.spec} (224 px, pooled) | {a.batch} | {len(paths)} | {ti:.2f} | {len(paths) / ti:.1f} |")
    print(f"| {te.spec} (pooled) | {a.text_batch} | {len(texts)} | {tt:.2f} | {len(texts) / tt:.1f} |")


if __name__ == "__main__":
    main()
