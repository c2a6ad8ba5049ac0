"""What ``--encoder-precision auto`` would measure on this machine: the bf16 probe of each default encoder under each
runtime that can run bf16 (``cirlab.encoders.precision.probe``), whether or not this CPU has bf16 instructions.

    .venv/bin/python benchmarks/precision_probe.py [--rounds 3] [--out benchmarks/results/encoders/precision_probe.md]

The probe encodes 64 Twemoji images (or 16 modification texts) in fp32 and in bf16, best of ``rounds`` each, and
reports the speed-up and the smallest cosine of the pooled vectors; ``auto`` chooses bf16 only where the CPU has
bf16 instructions, the cosine is at least ``PARITY`` and the speed-up at least ``GAIN``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from cirlab.encoders import precision
from cirlab.encoders.base import new_encoder, place
from cirlab.hardware import machine

from _report import save_report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    here = machine()
    rows = []
    for side, spec in (("image", "efficientnet_lite0"), ("text", "minilm")):
        for runtime in ("torch", "openvino"):
            encoder = new_encoder(side, spec)
            encoder.runtime = runtime
            place(encoder, torch.device("cpu"), "fp32")
            speedup, cosine = precision.probe(encoder, a.rounds)
            auto = "bf16" if here.has("bf16") and cosine >= precision.PARITY and speedup >= precision.GAIN else "fp32"
            rows.append({"encoder": spec, "runtime": runtime, "bf16_speedup": round(speedup, 3),
                         "min_cosine": round(cosine, 6), "auto": auto})
    command = " ".join(["python benchmarks/precision_probe.py", *sys.argv[1:]])
    has = "this one has them" if here.has("bf16") else "this one has none: PyTorch emulates bf16 and OpenVINO runs fp32"
    lines = ["# The bf16 probe of the default encoders", "", f"Command: `{command}`", "",
             f"bf16 against fp32 on {precision.PROBE_IMAGES} Twemoji images or 16 texts, best of {a.rounds} rounds "
             f"each; auto's bar: cosine >= {precision.PARITY} and speed-up >= {precision.GAIN}, on a CPU with bf16 instructions "
             f"({has}).",
             "", "| encoder | runtime | bf16 speed-up | min cosine to fp32 | auto here |", "|---|---|---:|---:|---|"]
    lines += [f"| {r['encoder']} | {r['runtime']} | {r['bf16_speedup']:.2f}x | {r['min_cosine']:.6f} | {r['auto']} |"
              for r in rows]
    save_report("\n".join(lines) + "\n", a.out, {"command": command, "rows": rows})


if __name__ == "__main__":
    main()
