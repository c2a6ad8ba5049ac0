"""How much of a CSS-like scene a frozen view keeps, cell by cell: a linear probe per grid cell.

Each image of the training split gives nine examples, one per cell of the 3 x 3 scene grid, whose
label is what the cell holds: empty, or one of 48 objects (3 shapes x 8 colours x 2 sizes). A probe
(one linear layer per cell, full batch Adam) reads a view and is scored on the validation split:
the share of cells it labels right, of whole scenes it labels right, and of cells whose occupancy
(empty or not) it gets right. Test data are not used.

    .venv/bin/python benchmarks/css_probe.py --data data/css

needs ``cirlab encode data/css/images --views pooled tokens local colour``; writes
``benchmarks/results/probes/css-probe.md``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "probes"


def labels(data: Path, ids: list[str]):
    import torch

    from cirlab.data.css import COLOURS, SHAPES, SIZES

    records = {r["id"]: r for r in map(json.loads, (data / "images.jsonl").read_text().splitlines())}
    y = torch.zeros(len(ids), 9, dtype=torch.long)
    for i, key in enumerate(ids):
        for o in records[key]["attributes"]["objects"]:
            kind = (SHAPES.index(o["shape"]) * len(COLOURS) + list(COLOURS).index(o["colour"])) * len(SIZES)
            y[i, o["cell"]] = 1 + kind + list(SIZES).index(o["size"])
    return y


def views(ws, split: str) -> dict:
    """Per-cell inputs (B, 9, D) of each probed view."""
    import torch
    import torch.nn.functional as F

    from cirlab.encoders.base import COLOUR_LAYOUT

    ids = ws.gallery_ids(split)
    t = ws.images.tensors(ws.images.rows(ids), ["pooled", "tokens", "local", "colour"])
    tokens = t["tokens"].float() / t["pooled"].float().norm(dim=-1)[:, None, None]

    def grid(rows):  # (B, N, D) raster rows of a square map -> (B, 9, D) averages over the 3 x 3 cells
        side = int(rows.shape[1] ** 0.5)
        fmap = rows.transpose(1, 2).reshape(len(ids), -1, side, side)
        return F.adaptive_avg_pool2d(fmap, 3).permute(0, 2, 3, 1).reshape(len(ids), 9, -1)

    layout = t["colour"].float()[:, :COLOUR_LAYOUT][:, None].expand(-1, 9, -1)
    pooled = F.normalize(t["pooled"].float(), dim=-1)[:, None].expand(-1, 9, -1)
    final, local = grid(tokens), grid(t["local"].float())
    return ids, {"pooled vector (the same for each cell)": pooled,
                 "3 x 3 grid of the region map (the cell's own average)": final,
                 "8 x 8 colour layout (all of it, for each cell)": layout,
                 "grid + colour layout": torch.cat([final, layout], dim=-1),
                 "3 x 3 grid of the local map (stride 16 + 32, 304 channels)": local,
                 "local grid + colour layout": torch.cat([local, layout], dim=-1)}


def probe(x_train, y_train, x_val, y_val, epochs: int = 300) -> dict:
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    classes = int(max(y_train.max(), y_val.max())) + 1
    layer = torch.nn.Linear(x_train.shape[-1], classes * 9)
    opt = torch.optim.Adam(layer.parameters(), 1e-3, weight_decay=1e-5)
    mean, std = x_train.mean((0, 1)), x_train.std((0, 1)) + 1e-6
    cell = torch.arange(9)

    def logits(x):  # cell k's own layer on cell k's input
        return layer((x - mean) / std).reshape(len(x), 9, 9, classes)[:, cell, cell]

    for _ in range(epochs):
        opt.zero_grad()
        F.cross_entropy(logits(x_train).reshape(-1, classes), y_train.reshape(-1)).backward()
        opt.step()
    with torch.no_grad():
        p = logits(x_val).argmax(-1)
    return {"cell": (p == y_val).float().mean().item(), "scene": (p == y_val).all(1).float().mean().item(),
            "occupancy": ((p > 0) == (y_val > 0)).float().mean().item()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=Path("data/css"))
    p.add_argument("--cache", default=None)
    a = p.parse_args(argv)

    from cirlab.encoders.cache import FeatureCache
    from cirlab.experiment import Workspace
    from cirlab.settings import cache_dir

    cache = FeatureCache(a.cache or cache_dir())
    ws = Workspace.open(a.data, cache, image_views=("pooled", "tokens", "local", "colour"), progress=False)
    train_ids, train = views(ws, "train")
    val_ids, val = views(ws, "val")
    y_train, y_val = labels(a.data, train_ids), labels(a.data, val_ids)
    lines = ["# What a frozen view keeps of a CSS-like scene: a linear probe per grid cell", "",
             f"Command: `.venv/bin/python benchmarks/css_probe.py --data {a.data}`; trained on the {len(train_ids)} "
             f"training images, scored on the {len(val_ids)} validation images. A cell is empty or holds one of 48 "
             f"objects; answering 'empty' for every cell gets occupancy right {(y_val == 0).float().mean().item():.3f}.", "",
             "| view | cell right | scene right | occupancy right |", "|---|---:|---:|---:|"]
    for name in train:
        r = probe(train[name], y_train, val[name], y_val)
        lines.append(f"| {name} | {r['cell']:.3f} | {r['scene']:.3f} | {r['occupancy']:.3f} |")
        print(lines[-1], flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "css-probe.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
