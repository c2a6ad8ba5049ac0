"""Where the encoders' time goes and how close they come to this machine's limit: a roofline of the default encoders.

    .venv/bin/python benchmarks/roofline.py [--images 128] [--texts 512] [--rounds 3] [--runtimes torch,onnx,openvino]
        [--out benchmarks/results/encoders/roofline.md]

A runtime may name a precision after a slash (``openvino/bf16``); where the CPU has bf16 instructions the bf16
matrix product is measured too, and a bf16 runtime's share is of that rate.

For the image encoder (EfficientNet-Lite0) it times each stage of encoding a gallery apart, on the same Twemoji PNGs
as ``encode_throughput.py``: decoding the file (``images.load_image``), preprocessing (pad, bicubic resize, normalise:
``to_pixels``) and the network under each runtime, on pixels made beforehand. For the text encoder (MiniLM):
tokenising and the network. FLOPs are counted, not assumed: torch's ``FlopCounterMode`` over one forward pass
(2 FLOPs a multiply-add; convolutions and matrix products only, which is nearly all of it). The machine's limit is
measured too: the best fp32 matrix product torch, numpy or ONNX Runtime reaches on this machine's threads (a
2048 x 2048 GEMM), next to the peak the CPU's vector units allow in theory (cores x GHz x FLOPs a cycle from the
vector width and two FMA units per core; the clock is ``/proc/cpuinfo``'s, which is not the turbo clock). Each
runtime's achieved GFLOP/s is the network's FLOPs over its time alone; its share of the measured GEMM rate is how far
from the limit it runs. Runtimes run interleaved, round by round; each time is the best round.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from torch.utils.flop_counter import FlopCounterMode

from cirlab.data.emojiedit import collect_emoji
from cirlab.encoders.base import to_pixels
from cirlab.encoders.efficientnet import LITE_MEAN, LITE_STD
from cirlab.encoders.runtime import run_network
from cirlab.hardware import _cpuinfo, machine
from cirlab.images import load_image

from _report import arm_encoders, best_of, save_report


def gemm_gflops(n: int = 2048, rounds: int = 5, dtype: torch.dtype = torch.float32) -> float:
    """The best GFLOP/s of an n x n matrix product in ``dtype`` on torch's threads: what this machine reaches in
    practice."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.mm(a, b)
    return 2 * n ** 3 / best_of(rounds, lambda: torch.mm(a, b)) / 1e9


def gemm_gflops_libraries(n: int = 2048, rounds: int = 5) -> dict[str, float]:
    """The best fp32 GFLOP/s of an n x n matrix product in each library at hand: torch (MKL), numpy (its BLAS) and
    ONNX Runtime (MLAS). They differ by up to 2x on one CPU (MKL takes a slower path on AMD), so the machine's
    measured limit is the best of them."""
    import numpy as np

    rates = {"torch": gemm_gflops(n, rounds)}
    a, b = np.random.randn(n, n).astype(np.float32), np.random.randn(n, n).astype(np.float32)
    rates["numpy"] = 2 * n ** 3 / best_of(rounds, lambda: a @ b) / 1e9
    try:
        import onnxruntime as ort
        from onnx import TensorProto, helper
    except ImportError:
        return rates
    io = [helper.make_tensor_value_info(x, TensorProto.FLOAT, [n, n]) for x in "abc"]
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "gemm", io[:2], io[2:])
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
                                   .SerializeToString(), options, providers=["CPUExecutionProvider"])
    session.run(None, {"a": a, "b": b})
    rates["onnxruntime"] = 2 * n ** 3 / best_of(rounds, lambda: session.run(None, {"a": a, "b": b})) / 1e9
    return rates


def theoretical_gflops(threads: int) -> tuple[float | None, str]:
    """The fp32 peak the vector units allow on ``threads`` cores at the listed clock: FMA lanes x 2 FLOPs x 2 FMA
    units a cycle (AVX-512: 16 lanes, AVX2: 8), and how it was reckoned."""
    mhz = _cpuinfo(("cpu MHz",))
    here = machine()
    lanes = 16 if here.has("avx512") else 8 if here.has("avx2") else 4
    if not mhz:
        return None, "no clock listed"
    ghz = float(mhz) / 1000
    return threads * ghz * lanes * 2 * 2, f"{threads} cores x {ghz:.2f} GHz x {lanes} lanes x 2 (FMA) x 2 units"


def flops(module: torch.nn.Module, *inputs: torch.Tensor) -> int:
    """FLOPs of one forward pass of ``module`` on ``inputs`` (matrix products and convolutions)."""
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        module(*inputs)
    return counter.get_total_flops()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=128)
    ap.add_argument("--texts", type=int, default=512)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--text-batch", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--runtimes", default="torch,onnx,openvino")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    runtimes = a.runtimes.split(",")
    images, texts = {}, {}
    for runtime in runtimes:
        images[runtime], texts[runtime] = arm_encoders(runtime)
    image0, text0 = images[runtimes[0]], texts[runtimes[0]]
    paths = [r["src"] for r in collect_emoji()[: a.images]]
    words = [f"change it to {c} and make it {s}" for c in ("red", "blue", "dark skin", "a woman") for s in ("smaller", "larger")]
    words = (words * (a.texts // len(words) + 1))[: a.texts]
    batches = [paths[s:s + a.batch] for s in range(0, len(paths), a.batch)]
    text_batches = [words[s:s + a.text_batch] for s in range(0, len(words), a.text_batch)]

    decoded = [[load_image(p) for p in b] for b in batches]
    pixels = [to_pixels(b, image0.size, LITE_MEAN, LITE_STD) for b in decoded]
    tokens = [text0.tokenize(b, pad_to_max=False) for b in text_batches]
    feeds = [{n: t[n] for n in text0.input_names} for t in tokens]
    image_flops = flops(image0.network_module, pixels[0][:1])
    one = text0.tokenize(words[:1], pad_to_max=False)
    text_flops = flops(text0.network_module, *(one[n] for n in text0.input_names))
    text_tokens = int(one["attention_mask"].sum())
    batch_tokens = sum(int(t["attention_mask"].numel()) for t in tokens)  # padded: what the network computes

    stages = {"decode": lambda: [[load_image(p) for p in b] for b in batches],
              "preprocess": lambda: [to_pixels(b, image0.size, LITE_MEAN, LITE_STD) for b in decoded],
              "tokenise": lambda: [text0.tokenize(b, pad_to_max=False) for b in text_batches]}
    for r in runtimes:
        stages[f"image network {r}"] = lambda enc=images[r]: [run_network(enc, {"pixels": p}) for p in pixels]
        stages[f"text network {r}"] = lambda enc=texts[r]: [run_network(enc, f) for f in feeds]
    for fn in stages.values():  # warm-up (and exports)
        fn()
    best = dict.fromkeys(stages, float("inf"))
    for _ in range(a.rounds):
        for name, fn in stages.items():
            best[name] = min(best[name], best_of(1, fn))
    threads = torch.get_num_threads()
    rates = gemm_gflops_libraries()
    gemm = max(rates.values())
    gemm16 = gemm_gflops(dtype=torch.bfloat16) if machine().has("bf16") else None
    limit = {r: gemm16 if r.endswith("/bf16") and gemm16 else gemm for r in runtimes}
    peak, reckoned = theoretical_gflops(threads)

    n_img, n_txt = len(paths), len(words)
    command = " ".join(["python benchmarks/roofline.py", *sys.argv[1:]])
    lines = ["# Roofline of the default encoders", "",
             f"Command: `{command}`",
             "",
             f"{n_img} Twemoji PNGs (batch {a.batch}) and {n_txt} modification texts (batch {a.text_batch}); best of "
             f"{a.rounds} interleaved rounds; torch {torch.__version__}, {threads} threads.", "",
             "## The machine's limit (fp32)", "",
             f"- measured: a 2048 x 2048 matrix product, the best of the libraries at hand, **{gemm:.0f} GFLOP/s** ("
             + ", ".join(f"{k} {v:.0f}" for k, v in rates.items()) + ")",
             f"- theoretical: {f'{peak:.0f} GFLOP/s' if peak else 'unknown'} ({reckoned}; the listed clock, not turbo)",
             f"- bf16, measured the same way: **{gemm16:.0f} GFLOP/s**" if gemm16 else "- bf16: no bf16 instructions",
             "", "## Work per item", "",
             f"- EfficientNet-Lite0 at {image0.size} px: **{image_flops / 1e9:.3f} GFLOP an image** (counted)",
             f"- MiniLM-L6: **{text_flops / text_tokens / 1e6:.1f} MFLOP a token** ({text_tokens}-token text, "
             f"{text_flops / 1e6:.0f} MFLOP); batches here are padded to their longest text: {batch_tokens / n_txt:.1f} "
             "tokens a text", "",
             "## Where the time goes, and the achieved rate", "",
             "Each stage alone (the networks on pixels and token ids made beforehand). GFLOP/s: the counted FLOPs "
             "over the stage's time; the text network's count is per token of the padded batches it ran. The share "
             "is of the measured GEMM rate in the runtime's precision.", "",
             "| stage | ms an item | items/s | GFLOP/s | % of measured GEMM |", "|---|---:|---:|---:|---:|"]
    rows = []
    work = {f"image network {r}": image_flops * n_img for r in runtimes}
    work.update({f"text network {r}": text_flops / text_tokens * batch_tokens for r in runtimes})
    for stage, t in best.items():
        count = n_txt if stage.startswith(("text", "tokenise")) else n_img
        rate = work[stage] / t / 1e9 if stage in work else None
        roof = limit[stage.rpartition(" ")[2]] if rate else None
        rows.append({"stage": stage, "ms_per_item": 1000 * t / count, "items_per_s": count / t, "gflops": rate,
                     "of_gemm": rate / roof if rate else None})
        lines.append(f"| {stage} | {1000 * t / count:.2f} | {count / t:.1f} | "
                     + (f"{rate:.1f} | {100 * rate / roof:.0f}% |" if rate else " | |"))
    lines += ["", "## End to end, and each stage's share", "",
              "| runtime | images/s (decode + preprocess + network) | decode | preprocess | network | image GFLOP/s "
              "| % of GEMM | texts/s (tokenise + network) | tokenise | network |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    ends = []
    for r in runtimes:
        parts = [best["decode"], best["preprocess"], best[f"image network {r}"]]
        tparts = [best["tokenise"], best[f"text network {r}"]]
        img, txt = sum(parts), sum(tparts)
        rate = image_flops * n_img / img / 1e9
        ends.append({"runtime": r, "images_per_s": n_img / img, "shares": [p / img for p in parts],
                     "gflops": rate, "texts_per_s": n_txt / txt, "text_shares": [p / txt for p in tparts]})
        lines.append(f"| {r} | {n_img / img:.1f} | " + " | ".join(f"{100 * p / img:.0f}%" for p in parts)
                     + f" | {rate:.1f} | {100 * rate / limit[r]:.0f}% | {n_txt / txt:.1f} | "
                     + " | ".join(f"{100 * p / txt:.0f}%" for p in tparts) + " |")
    text = "\n".join(lines) + "\n"
    save_report(text, a.out, {"command": command,
                              "gemm_gflops": gemm, "gemm_by_library": rates, "gemm_bf16_gflops": gemm16,
                              "theoretical_gflops": peak, "image_gflop": image_flops / 1e9,
                              "text_mflop_per_token": text_flops / text_tokens / 1e6, "stages": rows,
                              "end_to_end": ends})


if __name__ == "__main__":
    main()
