"""Does int8 help the text encoder? MiniLM's exported graph, dynamically quantised by ONNX Runtime in four ways,
against the fp32 graph: speed on 128 short texts and the smallest cosine of the pooled vectors.

    .venv/bin/python benchmarks/int8_text.py [--out benchmarks/results/encoders/int8_text.md]

The variants: s8 weights per tensor (ONNX Runtime's default), s8 per channel with reduced range (its advice for
AVX2 CPUs without VNNI, where u8 x s8 products can saturate), u8 weights per tensor and per channel. Speed is
the best of 5 calls of ``encode_texts`` (tokenising included) in one process.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
from onnxruntime.quantization import QuantType, quantize_dynamic

from cirlab.encoders.base import new_encoder
from cirlab.encoders.runtime import export_onnx, use_session
from cirlab.encoders.sessions import OrtSession

from _report import best_of

VARIANTS = {
    "s8, per tensor": dict(weight_type=QuantType.QInt8),
    "s8, per channel, reduced range": dict(weight_type=QuantType.QInt8, per_channel=True, reduce_range=True),
    "u8, per tensor": dict(weight_type=QuantType.QUInt8),
    "u8, per channel": dict(weight_type=QuantType.QUInt8, per_channel=True),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    fp32 = new_encoder("text", "minilm")
    fp32.runtime = "onnx"
    src = export_onnx(fp32)
    texts = [f"change it to {c} and make it {s}" for c in ("red", "blue", "dark skin", "a woman")
             for s in ("smaller", "larger")] * 16
    probe = texts[:8] + ["make it red", "a woman instead", "change the skin tone to dark and make it face left",
                         "same but blue and smaller", "the man version"]
    ref = fp32.encode_texts(probe)["pooled"]
    base = best_of(5, lambda: fp32.encode_texts(texts))
    rows = [("fp32", 1.0, 1.0)]
    for name, options in VARIANTS.items():
        dst = src.with_name("model.int8-" + name.replace(", ", "-").replace(" ", "_") + ".onnx")
        if not dst.is_file():
            quantize_dynamic(str(src), str(dst), **options)
        q = new_encoder("text", "minilm")
        q.runtime = "onnx"
        use_session(q, OrtSession(dst))  # the runtime's own session, on the int8 graph
        got = q.encode_texts(probe)["pooled"]
        cos = (ref * got).sum(1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(got, axis=1)
        rows.append((name, base / best_of(5, lambda: q.encode_texts(texts)), float(cos.min())))
    lines = [f"Command: `python benchmarks/int8_text.py {' '.join(sys.argv[1:])}`", "",
             f"MiniLM, {len(texts)} texts a call, ONNX Runtime, fp32: {len(texts) / base:.0f} texts/s.", "",
             "| graph | speed x fp32 | min cosine to fp32 |", "|---|---:|---:|"]
    lines += [f"| {n} | {s:.2f} | {c:.4f} |" for n, s, c in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(text)


if __name__ == "__main__":
    main()
