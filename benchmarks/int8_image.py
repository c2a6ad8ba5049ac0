"""Static int8 for the image encoder (issue 45, item 2): EfficientNet-Lite0's ONNX graph quantised by ONNX Runtime's
static post-training quantisation, several ways, against the fp32 graph on the same pixels.

    .venv/bin/python benchmarks/int8_image.py [--calibration 256] [--images 256] [--rounds 3]
        [--out benchmarks/results/encoders/int8_image.md]

Every arm is QDQ (QuantizeLinear/DequantizeLinear pairs that ONNX Runtime fuses into int8 kernels), weights per
output channel, u8 activations calibrated on ``--calibration`` Twemoji images that the parity images do not include.
The arms differ in what the issue names and what parity turned out to need: s8 (symmetric) or u8 (asymmetric)
weights, where x86 without VNNI multiplies u8 x s8 pairs into int16 with VPMADDUBSW, which can saturate (a 7-bit
weight range avoids it); the calibration method (min/max, a percentile, entropy); the first (stem) and last (head)
convolutions left in fp32. Parity: the cosine of each image's pooled vector to fp32's (min and mean over the parity
images). Speed: the network alone on ready pixels, every arm interleaved round by round in one process, best round,
as images/s and as a ratio to fp32 ONNX Runtime.
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
from cirlab.encoders.efficientnet import EfficientNetLiteEncoder
from cirlab.encoders.quantize import nodes_named, quantize_qdq
from cirlab.encoders.runtime import export_onnx
from cirlab.encoders.sessions import OrtSession
from cirlab.images import load_image

from _report import save_report

ARMS = {  # id: (what it is, weight type, calibration method, its options, reduce_range, what stays fp32)
    "s8": ("s8 weights, min/max (ONNX Runtime's default)", "QInt8", "MinMax", {}, False, ""),
    "s8-ends": ("s8 weights, min/max, stem and head fp32", "QInt8", "MinMax", {}, False, "ends"),
    "s8-7bit-ends": ("s8 weights in 7 bits, min/max, stem and head fp32", "QInt8", "MinMax", {}, True, "ends"),
    "s8-cirlab": ("s8 weights, min/max, stem, first three blocks and head fp32 (cirlab's fp32 set)",
                  "QInt8", "MinMax", {}, False, "cirlab"),
    "s8-cirlab-b11": ("s8 weights, min/max, cirlab's fp32 set and block 11 (the worst alone on AVX2) fp32",
                      "QInt8", "MinMax", {}, False, "cirlab,block11"),
    "s8-7bit-cirlab": ("s8 weights in 7 bits, min/max, stem, first three blocks and head fp32 (cirlab's fp32 set)",
                       "QInt8", "MinMax", {}, True, "cirlab"),
    "s8-early-ends": ("s8 weights, min/max, stem, first two blocks and head fp32", "QInt8", "MinMax", {}, False,
                      "ends,early"),
    "s8-pointwise-ends": ("s8 weights, min/max, only the 1x1 convolutions int8 (depthwise, stem and head fp32)",
                          "QInt8", "MinMax", {}, False, "ends,depthwise"),
    "u8": ("u8 weights, min/max", "QUInt8", "MinMax", {}, False, ""),
    "u8-ends": ("u8 weights, min/max, stem and head fp32", "QUInt8", "MinMax", {}, False, "ends"),
    "u8-pct-ends": ("u8 weights, percentile 99.999, stem and head fp32", "QUInt8", "Percentile",
                    {"CalibPercentile": 99.999}, False, "ends"),
    "u8-entropy-ends": ("u8 weights, entropy, stem and head fp32", "QUInt8", "Entropy", {}, False, "ends"),
}
EARLY = 6  # the stem and the first two blocks: 1 + 2 + 3 convolutions (where bf16 loses most, roofline notes)
SHIPPED = {"cirlab": ("what --encoder-precision int8 runs (cirlab.encoders.quantize): s8, min/max on fixed Twemoji, "
                      "stem, first three blocks and head fp32",)}
NNCF_ARMS = {  # id: (what it is, NNCF's overflow fix); OpenVINO runs them (pip install nncf)
    "nncf": ("OpenVINO, NNCF post-training quantisation (performance preset, fast bias correction)", "FIRST_LAYER"),
    "nncf-overflow-fix": ("OpenVINO, NNCF as above, 7-bit weights in every layer (its overflow fix)", "ENABLE"),
}


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def kept_fp32(what: str):
    """Which Conv nodes stay fp32 (given the graph's Conv nodes in order, their names): ``ends`` (the stem and the
    1x1 head convolution), ``early`` (the stem and the first two blocks), ``depthwise`` (every grouped convolution),
    ``cirlab`` (the nodes the encoder's ``int8_fp32`` names, what ``--encoder-precision int8`` keeps), ``block11``
    (the 12th block: alone in int8 it costs the most on a CPU without VNNI, cosine 0.961)."""
    def pick(convs) -> list[str]:
        kept = set()
        for part in filter(None, what.split(",")):
            kept |= {"ends": {convs[0].name, convs[-1].name}, "early": {n.name for n in convs[:EARLY]},
                     "depthwise": {n.name for n in convs
                                   if any(x.name == "group" and x.i > 1 for x in n.attribute)},
                     "cirlab": set(nodes_named(EfficientNetLiteEncoder.int8_fp32)(convs)),
                     "block11": set(nodes_named(("/_blocks.11/",))(convs))}[part]
        return sorted(kept)

    return pick


def quantise(src: Path, dst: Path, pixels: np.ndarray, weights: str, method: str, options: dict, reduce_range: bool,
             keep: str) -> None:
    """Write ONNX Runtime's statically quantised QDQ graph (cirlab's own recipe, with this arm's options)."""
    quantize_qdq(src, dst, pixels, "pixels", kept_fp32(keep), weights, method, reduce_range, options,
                 pre=dst.with_name("pre.onnx"))


def emulated(path: Path):
    """The QDQ graph with ONNX Runtime's graph optimisations off: each QuantizeLinear/DequantizeLinear pair runs as
    such and the convolutions in fp32, so the int8 rounding is there without the int8 kernels' int16 saturation
    (what a CPU that accumulates in int32, with VNNI or AMX, would give)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"pixels": x})[0]


def nncf_model(src: Path, pixels: np.ndarray, overflow_fix: str):
    """OpenVINO's int8 model of the graph by NNCF's post-training quantisation, calibrated on ``pixels``; compiled."""
    try:
        import nncf
    except ImportError:
        raise SystemExit("the nncf arms need NNCF, which cirlab does not install: pip install nncf") from None
    import openvino as ov
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

    core = ov.Core()
    model = nncf.quantize(core.read_model(str(src)), nncf.Dataset([pixels[i:i + 1] for i in range(len(pixels))]),
                          preset=nncf.QuantizationPreset.PERFORMANCE, subset_size=len(pixels),
                          advanced_parameters=AdvancedQuantizationParameters(
                              overflow_fix=getattr(OverflowFix, overflow_fix)))
    compiled = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": torch.get_num_threads()})
    return lambda x: compiled({"pixels": x})[compiled.outputs[0]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calibration", type=int, default=256, help="calibration images (default: %(default)s)")
    ap.add_argument("--images", type=int, default=256, help="parity and speed images (default: %(default)s)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--arms", default=",".join(ARMS), help="comma-separated arm names, of "
                    + ", ".join([*ARMS, *SHIPPED, *NNCF_ARMS]) + " (default: the ONNX Runtime ones)")
    ap.add_argument("--work", type=Path, default=Path("runs/int8_image"), help="where the quantised graphs go")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    enc = new_encoder("image", "efficientnet_lite0")
    src = export_onnx(enc)
    records = collect_emoji()
    rng = np.random.default_rng(0)
    order = rng.permutation(len(records))  # parity images first, calibration images after: disjoint
    parity_paths = [records[i]["src"] for i in order[:a.images]]
    calib_paths = [records[i]["src"] for i in order[a.images:a.images + a.calibration]]

    def pixels_of(paths) -> np.ndarray:
        return np.concatenate([enc.pixels([load_image(p) for p in paths[s:s + 64]]).numpy()
                               for s in range(0, len(paths), 64)])

    parity, calib = pixels_of(parity_paths), pixels_of(calib_paths)
    fp32 = OrtSession(src)
    sessions = {"fp32": lambda x: fp32.run({"pixels": x})[0]}  # name: pixels -> final map
    unfused = {}  # name: the same graph with its QDQ pairs run in fp32
    for name in a.arms.split(","):
        if name in NNCF_ARMS:
            sessions[name] = nncf_model(src, calib, NNCF_ARMS[name][1])
            continue
        if name in SHIPPED:  # its own calibration images (fixed Twemoji across the whole set), its own file
            from cirlab.encoders.quantize import int8_graph

            path = int8_graph(enc, src)
            sessions[name] = lambda x, s=OrtSession(path): s.run({"pixels": x})[0]
            unfused[name] = emulated(path)
            continue
        _, weights, method, options, reduce_range, keep = ARMS[name]
        dst = a.work / f"{name}-{len(calib)}.onnx"
        dst.parent.mkdir(parents=True, exist_ok=True)
        if not dst.is_file():
            quantise(src, dst, calib, weights, method, options, reduce_range, keep)
        sessions[name] = lambda x, s=OrtSession(dst): s.run({"pixels": x})[0]
        unfused[name] = emulated(dst)

    def pooled(run) -> np.ndarray:
        return np.concatenate([run(parity[s:s + a.batch]).mean(axis=(2, 3)) for s in range(0, len(parity), a.batch)])

    vectors = {name: pooled(s) for name, s in sessions.items()}  # warm-up
    best = {name: float("inf") for name in sessions}
    for _ in range(a.rounds):
        for name, s in sessions.items():
            start = time.perf_counter()
            pooled(s)
            best[name] = min(best[name], time.perf_counter() - start)
    rows = []
    for name in sessions:
        c = cosines(vectors["fp32"], vectors[name])
        what = {**ARMS, **SHIPPED, **NNCF_ARMS}.get(name, ("ONNX Runtime, fp32 graph",))[0]
        e = cosines(vectors["fp32"], pooled(unfused[name])) if name in unfused else None
        rows.append({"arm": name, "what": what, "images_per_s": round(len(parity) / best[name], 1),
                     "speedup": round(best["fp32"] / best[name], 2), "min_cosine": round(float(c.min()), 4),
                     "mean_cosine": round(float(c.mean()), 4),
                     "emulated_min_cosine": None if e is None else round(float(e.min()), 4),
                     "emulated_mean_cosine": None if e is None else round(float(e.mean()), 4)})
    command = "python benchmarks/int8_image.py " + " ".join(sys.argv[1:])
    lines = ["# Static int8 for EfficientNet-Lite0", "",
             f"Command: `{command}`", "",
             f"Weights int8 per channel, u8 activations calibrated on {len(calib)} Twemoji images; "
             f"parity and speed on {len(parity)} other Twemoji images (the network alone on ready 224 px pixels, batch "
             f"{a.batch}, {torch.get_num_threads()} threads, best of {a.rounds} interleaved rounds). Cosine: each "
             "image's pooled vector to fp32's; the issue's bar is a minimum of 0.995. Emulated: the same QDQ graph "
             "with ONNX Runtime's graph optimisations off, so the int8 rounding is there and the int8 kernels' int16 "
             "saturation is not (what a CPU with VNNI or AMX would approach).", "",
             "| arm | what | images/s | x fp32 | min cosine | mean cosine | emulated min | emulated mean |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['arm']} | {r['what']} | {r['images_per_s']} | {r['speedup']} | {r['min_cosine']} | {r['mean_cosine']} "
              f"| {r['emulated_min_cosine'] or ''} | {r['emulated_mean_cosine'] or ''} |" for r in rows]
    save_report("\n".join(lines) + "\n", a.out, {"command": command, "rows": rows})


if __name__ == "__main__":
    main()
