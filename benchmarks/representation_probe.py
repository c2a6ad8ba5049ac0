"""Does the frozen, globally pooled image vector lose what the edits change? (issue 13's hypothesis)

On EmojiEdit's frozen EfficientNet-Lite0 features, compares the pooled 1280-d vector with the
spatial 7x7 map it is pooled from:

1. **Mirror pairs.** Cosine between an emoji and its mirror image (the facing edits' pairs): in
   the pooled vector and in the flattened map. Near 1 means the facing is gone.
2. **Linear probes.** Logistic regression from each representation of a gallery image to the
   attribute an edit changes (facing, skin tone, gender, hair, colour), trained on the train
   split's images and tested on the test split's (base emoji never seen in training). Chance is
   the majority class.
3. **Near duplicates.** The share of edit targets that have another gallery image of their split
   at cosine above 0.98 (the issue measured 35% for tone in the pooled space).

    .venv/bin/python benchmarks/representation_probe.py --data data/emojiedit

Writes ``benchmarks/results/probes/representation-probe.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from cirlab import settings
from cirlab.encoders.cache import FeatureCache
from cirlab.experiment.workspace import Workspace

RESULTS = Path(__file__).parent / "results" / "probes"


def representations(ws: Workspace) -> dict[str, np.ndarray]:
    """Row-aligned (N, D) arrays: the pooled vector, the map averaged over a 3x3 grid, the whole map, and
    the ``colour`` view (8 x 8 mean RGB, no network at all) as a reference point."""
    pooled = ws.images.views["pooled"].astype(np.float32)
    tokens = ws.images.views["tokens"].astype(np.float32)  # (N, 49, 1280)
    side = int(round(tokens.shape[1] ** 0.5))
    grid = tokens.reshape(len(tokens), side, side, -1)
    cuts = np.array_split(np.arange(side), 3)
    cells = [grid[:, r][:, :, c].mean(axis=(1, 2)) for r in cuts for c in cuts]
    return {"pooled (1280)": pooled, "3x3 grid of the map (11520)": np.concatenate(cells, axis=1),
            "whole 7x7 map (62720)": tokens.reshape(len(tokens), -1),
            "colour layout (192)": ws.images.views["colour"].astype(np.float32)}


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-8)


def mirror_pairs(ws: Workspace, reps: dict[str, np.ndarray]) -> dict:
    pairs = sorted({tuple(sorted((t.reference, t.targets[0]))) for ts in ws.triplets.values() for t in ts
                    if t.attributes.get("edit") == "facing"})
    other = sorted({tuple(sorted((t.reference, t.targets[0]))) for ts in ws.triplets.values() for t in ts
                    if t.attributes.get("edit") == "tone"})
    out = {"pairs": len(pairs)}
    for name, x in reps.items():
        u = unit(x)
        cos = [float(u[ws.images.row[a]] @ u[ws.images.row[b]]) for a, b in pairs]
        tone = [float(u[ws.images.row[a]] @ u[ws.images.row[b]]) for a, b in other]
        out[name] = {"mirror cos mean": float(np.mean(cos)), "mirror cos min": float(np.min(cos)),
                     "tone-pair cos mean": float(np.mean(tone))}
    return out


def probes(ws: Workspace, reps: dict[str, np.ndarray]) -> dict:
    attrs = {r["id"]: r.get("attributes", {}) for r in ws.dataset.images}
    split = {r["id"]: r.get("split") for r in ws.dataset.images}
    out = {}
    for factor in ("facing", "tone", "gender", "hair", "colour"):
        # only images whose base has several values of the factor: the probe must read the factor, not the base
        by_base = defaultdict(set)
        for i, a in attrs.items():
            if a.get("base"):
                by_base[a["base"]].add(a.get(factor) or "none")
        keep = [i for i, a in attrs.items() if i in ws.images.row and len(by_base[a.get("base")]) > 1]
        y = {i: attrs[i].get(factor) or "none" for i in keep}
        train = [i for i in keep if split[i] == "train"]
        test = [i for i in keep if split[i] == "test" and y[i] in {y[j] for j in train}]
        if len(test) < 10:
            continue
        majority = Counter(y[i] for i in test).most_common(1)[0][1] / len(test)
        res = {"train images": len(train), "test images": len(test), "chance (majority)": 100 * majority}
        for name, x in reps.items():
            xs = unit(x)
            tr, te = xs[ws.images.rows(train)], xs[ws.images.rows(test)]
            scale = StandardScaler().fit(tr)
            clf = LogisticRegression(max_iter=2000, C=0.5).fit(scale.transform(tr), [y[i] for i in train])
            res[name] = 100 * float(clf.score(scale.transform(te), [y[i] for i in test]))
        out[factor] = res
    return out


def near_duplicates(ws: Workspace, reps: dict[str, np.ndarray], threshold: float = 0.98) -> dict:
    out = {}
    for split in ("test",):
        ids = ws.gallery_ids(split)
        targets = defaultdict(set)
        for t in ws.triplets[split]:
            targets[t.attributes.get("edit", "?")].update(x for x in t.targets if x in ws.images.row)
        for name, x in reps.items():
            u = unit(x[ws.images.rows(ids)])
            sim = u @ u.T
            np.fill_diagonal(sim, -1)
            close = {i for i, row in zip(ids, sim) if row.max() > threshold}
            out[name] = {edit: 100 * len(close & ts) / len(ts) for edit, ts in sorted(targets.items())}
    return out


def table(rows: list[list[str]]) -> str:
    head, *body = rows
    return "\n".join(["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
                     + ["| " + " | ".join(r) + " |" for r in body])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=Path("data/emojiedit"))
    a = p.parse_args()
    settings.offline()
    ws = Workspace.open(a.data, FeatureCache(settings.cache_dir()), image_views=("colour", "pooled", "tokens"))
    reps = representations(ws)
    names = list(reps)
    result = {"mirror": mirror_pairs(ws, reps), "probes": probes(ws, reps), "near_duplicates": near_duplicates(ws, reps)}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "representation-probe.json").write_text(json.dumps(result, indent=1))
    m = result["mirror"]
    md = [f"# Does global pooling lose what the edits change? (EmojiEdit, frozen {ws.image_encoder.id})",
          "", "Command: `.venv/bin/python benchmarks/representation_probe.py --data data/emojiedit`", "",
          f"## 1. An emoji and its mirror image ({m['pairs']} facing pairs)", "",
          table([["representation", "mirror cosine (mean)", "mirror cosine (min)", "tone-edit pair cosine (mean)"]]
                + [[n, f"{m[n]['mirror cos mean']:.4f}", f"{m[n]['mirror cos min']:.4f}",
                    f"{m[n]['tone-pair cos mean']:.4f}"] for n in names]),
          "", "## 2. Linear probes: accuracy (%) on the test split's images (unseen base emoji)", "",
          table([["attribute", "test images", "chance"] + names]
                + [[f, str(r["test images"]), f"{r['chance (majority)']:.1f}"] + [f"{r[n]:.1f}" for n in names]
                   for f, r in result["probes"].items()]),
          "", "## 3. Edit targets with another test image at cosine > 0.98 (%)", "",
          table([["representation"] + list(next(iter(result["near_duplicates"].values())))]
                + [[n] + [f"{v:.1f}" for v in result["near_duplicates"][n].values()] for n in names]), ""]
    (RESULTS / "representation-probe.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
