"""Issue 14's promise that ``--device cpu`` (and the default) computes what cirlab computed before devices existed:
the same training run under an earlier revision and under this tree, compared by the hashes of what they write.

    .venv/bin/python benchmarks/device_parity.py --base 7d39fc5 [--out benchmarks/results/device/device_parity.md]

A worktree of ``--base`` is checked out under ``--work``; a small CSS-like data set is built once. Each side then
runs in its own process (``PYTHONPATH`` at its ``src``), with an empty home and feature cache of its own:
stage 2 (``combiner``, 3 epochs) and the query vector of one composed search through ``Pipeline``, and stage 1
(image and text encoders tuned, augmented images, 2 epochs). This tree runs with ``CIRLAB_DEVICE=cpu``.
Equal hashes mean bit-identical weights and vectors.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from _parity import base_and_data, save_parity

RUN = r'''
import hashlib, json, sys, torch
from pathlib import Path
from cirlab.api import Pipeline
from cirlab.encoders.cache import FeatureCache
from cirlab.experiment.workspace import Workspace, train_method
from cirlab.training.stage1 import run_stage1

data, out = Path(sys.argv[1]), Path(sys.argv[2])
digest = lambda tensors: hashlib.sha1(b"".join(t.numpy().tobytes() for t in tensors)).hexdigest()[:16]
cache = FeatureCache(out / "cache")
ws = Workspace.open(data, cache, progress=False)
train_method(ws, "combiner", {"train": {"epochs": 3}}, out=out / "combiner.pt", progress=False)
state = torch.load(out / "combiner.pt", map_location="cpu", weights_only=False)["state_dict"]
image = sorted((data / "images").glob("*.png"))[0]
query = Pipeline.load(out / "combiner.pt", out / "cache").compose(image, "make it red")
row = {"stage 2 weights": digest(state.values()), "query vector": digest([torch.from_numpy(query)])}
run_stage1(data, out / "s1", cache, "efficientnet_lite0:size=64", "minilm",
           {"tune": "both", "image_blocks": 1, "text_layers": 1, "augment": "scale=0.2,noise=0.02",
            "train": {"epochs": 2, "batch_size": 32, "lr": 1e-3}}, progress=False)
for name in ("image.pt", "text.pt", "stage1.pt"):
    saved = torch.load(out / "s1" / name, map_location="cpu", weights_only=False)
    row["stage 1 " + name] = digest((saved.get("state") or saved["state_dict"]).values())
print(json.dumps(row))
'''


def side(src: Path, data: Path, out: Path, env: dict) -> dict:
    env = {**{k: v for k, v in os.environ.items() if k != "CIRLAB_DEVICE"}, "PYTHONPATH": str(src),
           "CIRLAB_HOME": str(out / "home"), "HF_HUB_OFFLINE": "1", **env}
    res = subprocess.run([sys.executable, "-c", RUN, str(data), str(out)], capture_output=True, text=True, env=env)
    if res.returncode:
        sys.exit(f"the run under {src} failed:\n{res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", default="7d39fc5", help="the revision before devices existed")
    ap.add_argument("--work", type=Path, default=Path("data/device_parity"))
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "device" / "device_parity.md")
    a = ap.parse_args()
    work = a.work.resolve()
    old, data = base_and_data(a.base, work)
    before = side(old / "src", data, work / "before", {})
    after = side(Path(__file__).resolve().parent.parent / "src", data, work / "after", {"CIRLAB_DEVICE": "cpu"})
    save_parity("--device cpu against the code before devices", f"python benchmarks/device_parity.py --base {a.base}",
                f"The same runs under {a.base} (no device code) and under this tree with `CIRLAB_DEVICE=cpu`, each in "
                "its own process with its own empty cache; sha1 of the raw bytes (first 16 hex digits).",
                a.base, "this tree, --device cpu", before, after, a.out)


if __name__ == "__main__":
    main()
