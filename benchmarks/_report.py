"""What the benchmark scripts share: printing a Markdown table and saving it, with its rows as JSON beside it, and
the machine it ran on (``cirlab.hardware``) in the header of both; the best wall time of a few calls."""

from __future__ import annotations

import json
import time
from pathlib import Path


def save_report(text: str, out: Path | None, payload: dict) -> None:
    """Print ``text``; with ``out``, write it there and ``payload`` to the same name with ``.json``. The machine's line
    goes under the title (the first line), its facts into the payload."""
    from cirlab.hardware import machine

    here = machine()
    title, _, rest = text.partition("\n")
    text = f"{title}\n\nMachine: {here.line()}\n{rest}"
    payload = {"machine": here.to_dict(), **payload}
    print(text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        out.with_suffix(".json").write_text(json.dumps(payload, indent=1) + "\n")


def command(script: str, *options: str) -> str:
    """The report's line saying how to make it again: ``script`` run with ``options`` (those that are empty left
    out), paths written as given (relative to the repository; a placeholder where a path is the machine's own)."""
    return f"Command: `.venv/bin/python benchmarks/{script} {' '.join(o for o in options if o)}`"


def best_of(rounds: int, fn) -> float:
    """The best wall time of ``rounds`` calls of ``fn`` (seconds): the figure least hit by a shared machine's noise."""
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def arm_encoders(arm: str):
    """The default image and text encoders for a ``runtime[/precision]`` arm (``onnx``, ``openvino/bf16``), placed on
    the CPU in that precision (fp32 where it names none)."""
    import torch

    from cirlab.encoders.base import new_encoder, place

    runtime, _, precision = arm.partition("/")
    encoders = new_encoder("image", "efficientnet_lite0"), new_encoder("text", "minilm")
    for enc in encoders:
        enc.runtime = runtime
        place(enc, torch.device("cpu"), precision or "fp32")
    return encoders


def model_on_test(doc: str):
    """A check of one trained model on a data set's test split: its arguments (``--model``, ``--data``, ``--out``,
    ``--about``) parsed, the model loaded, and the workspace its test split is read through with the model's own
    encoders and cache. Returns (arguments, pipeline, workspace)."""
    import argparse

    from cirlab.api import Pipeline
    from cirlab.experiment.workspace import Workspace

    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--about", default="", help="what the model is and how it was made, for the report")
    a = p.parse_args()
    pipe = Pipeline.load(a.model)
    ws = Workspace.for_model(a.data, pipe.model, pipe.image_encoder, pipe.text_encoder, pipe.cache, "test",
                             progress=False)
    return a, pipe, ws


def model_header(script: str, a, pipe) -> list[str]:
    """The lines under a model check's title (:func:`model_on_test`): how to make it again, what the model is."""
    return [command(script, "--model MODEL", f"--data {a.data}", f"--out {a.out}" if a.out else ""), "",
            *([f"The model: {a.about}", ""] if a.about else []),
            f"Model: {pipe.meta['method']} on {pipe.meta['image_encoder']['id']} + {pipe.meta['text_encoder']['id']}."]
