"""Throughput of the default encoders on this machine under each inference runtime and precision (no cache):
images/s and texts/s, PyTorch against ONNX Runtime and OpenVINO, with ONNX Runtime int8 (dynamic quantisation) as
an extra.

    .venv/bin/python benchmarks/encode_throughput.py [--images 256] [--batch 32] [--rounds 3]
        [--runtimes torch,onnx,openvino,openvino/bf16] [--int8] [--out benchmarks/results/encoders/encode_throughput.md]

A runtime may name a precision after a slash (``openvino/bf16``, ``torch/bf16``: ``--encoder-precision``); the
ratios are to the first runtime listed, the cosines to the first runtime's vectors.

Images are EmojiEdit-sized PNGs drawn from Twemoji (decoding and preprocessing included); texts are
modification texts of EmojiEdit's phrasings. The runtimes run in one process, interleaved round by round,
so the noise of a shared machine hits them alike; each figure is the best round. Parity is the smallest
cosine between a runtime's pooled vectors and PyTorch's over all the images and texts.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

from cirlab.data.emojiedit import collect_emoji
from cirlab.encoders.base import new_encoder
from cirlab.encoders.runtime import export_onnx, use_session
from cirlab.encoders.sessions import OrtSession
from cirlab.images import load_image

from _report import arm_encoders, save_report


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min())


def int8_encoders(image, text):
    """Copies of the ONNX Runtime encoders whose graphs are dynamically quantised to int8 (weights int8,
    activations quantised on the fly): MatMul/Gemm in MiniLM, Conv/MatMul in EfficientNet-Lite."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = []
    for enc in (image, text):
        src = export_onnx(enc)
        dst = src.with_name("model.int8.onnx")
        if not dst.is_file():
            quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
        use_session(enc, OrtSession(dst))  # what the runtime would build, on int8
        out.append(enc)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--texts", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--text-batch", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--runtimes", default="torch,onnx,openvino", help="runtime[/precision], comma-separated; the "
                    "first is the baseline (default: %(default)s)")
    ap.add_argument("--int8", action="store_true", help="also ONNX Runtime on int8 dynamically quantised graphs")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    arms = {}
    for arm in a.runtimes.split(","):
        arms[arm] = arm_encoders(arm)
    if a.int8:
        image, text = new_encoder("image", "efficientnet_lite0"), new_encoder("text", "minilm")
        image.runtime = text.runtime = "onnx"
        arms["onnx-int8"] = tuple(int8_encoders(image, text))
    paths = [r["src"] for r in collect_emoji()[: a.images]]
    texts = [f"change it to {c} and make it {s}" for c in ("red", "blue", "dark skin", "a woman") for s in ("smaller", "larger")]
    texts = (texts * (a.texts // len(texts) + 1))[: a.texts]

    def images(enc) -> np.ndarray:
        return np.concatenate([enc.encode_images([load_image(p) for p in paths[s:s + a.batch]])["pooled"]
                               for s in range(0, len(paths), a.batch)])

    def texts_fn(enc) -> np.ndarray:
        return np.concatenate([enc.encode_texts(texts[s:s + a.text_batch])["pooled"]
                               for s in range(0, len(texts), a.text_batch)])

    vectors = {name: (images(i), texts_fn(t)) for name, (i, t) in arms.items()}  # warm-up (and exports)
    best = {name: [float("inf"), float("inf")] for name in arms}
    for _ in range(a.rounds):
        for name, (i, t) in arms.items():
            for side, (fn, enc) in enumerate(((images, i), (texts_fn, t))):
                start = time.perf_counter()
                fn(enc)
                best[name][side] = min(best[name][side], time.perf_counter() - start)
    first = next(iter(arms))
    base = best[first]
    rows = []
    for name in arms:
        ti, tt = best[name]
        ref = vectors[first]
        rows.append({"runtime": name, "images_per_s": round(len(paths) / ti, 1), "texts_per_s": round(len(texts) / tt, 1),
                     "image_speedup": round(base[0] / ti, 2), "text_speedup": round(base[1] / tt, 2),
                     "image_min_cosine": round(min_cosine(ref[0], vectors[name][0]), 6),
                     "text_min_cosine": round(min_cosine(ref[1], vectors[name][1]), 6)})
    command = "python benchmarks/encode_throughput.py " + " ".join(sys.argv[1:])
    lines = ["# Encoder throughput by runtime and precision", "", f"Command: `{command}`", "",
             f"torch {torch.__version__}, {torch.get_num_threads()} threads; {len(paths)} Twemoji images (decode + "
             f"preprocess + network, batch {a.batch}) and {len(texts)} texts (batch {a.text_batch}); best of "
             f"{a.rounds} interleaved rounds.", "",
             f"| runtime | images/s | x {first} | min cosine | texts/s | x {first} | min cosine |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['runtime']} | {r['images_per_s']} | {r['image_speedup']} | {r['image_min_cosine']} | "
                     f"{r['texts_per_s']} | {r['text_speedup']} | {r['text_min_cosine']} |")
    text = "\n".join(lines) + "\n"
    save_report(text, a.out, {"command": command, "rows": rows})


if __name__ == "__main__":
    main()
