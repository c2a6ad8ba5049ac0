"""What a model's wrong top-1 results on a CSS-like split get wrong, cell by cell.

For every query whose top-1 is not a target, the top-1 scene is compared with the nearest target
scene: the cells where they differ, and in each such cell what differs (an object missing or extra,
or its colour, shape or size). A cell is "edited" when the text's edit touched it (it differs
between the reference and the target), else "kept". This separates a representation that cannot
tell two scenes apart from a composition that edits the wrong cell or leaves the named one alone.

    .venv/bin/python benchmarks/css_errors.py --model runs/m/model.pt --data data/css --split val

prints a table and writes ``benchmarks/results/css_errors/css-errors-<name>.md`` with ``--name``.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "css_errors"


def cells(record: dict) -> dict[int, tuple]:
    return {o["cell"]: (o["shape"], o["colour"], o["size"]) for o in record["attributes"]["objects"]}


def differences(a: dict[int, tuple], b: dict[int, tuple]) -> dict[int, str]:
    """Cell -> what differs between two scenes there: missing, extra, or the attributes that differ."""
    out = {}
    for c in set(a) | set(b):
        if c not in a:
            out[c] = "extra object"
        elif c not in b:
            out[c] = "missing object"
        elif a[c] != b[c]:
            out[c] = "+".join(k for k, x, y in zip(("shape", "colour", "size"), a[c], b[c]) if x != y)
    return out


def classify(ref: dict[int, tuple], target: dict[int, tuple], top: dict[int, tuple]) -> list[str]:
    """The kinds of a wrong top-1's differences from the target, each as '<edited|kept> cell: <what>'."""
    edited = set(differences(ref, target))
    return [f"{'edited' if c in edited else 'kept'} cell: {what}" for c, what in sorted(differences(target, top).items())]


def named_by(text: str) -> str:
    """Which attributes a CSS text names its object by: 'cell+colour', 'shape', ... ('none' for 'add object')."""
    from cirlab.data.css import CELLS, COLOURS, SHAPES, SIZES

    words = text.split()
    if words[0] == "make":  # "make <description> <new value>": the last word (or 'a <shape>') is the new value
        words = words[1:-2] if words[-2] == "a" else words[1:-1]
    found = [k for k, vocab in (("cell", CELLS), ("size", SIZES), ("colour", COLOURS), ("shape", SHAPES))
             if any(w in vocab for w in words)]
    return "+".join(found) or "none"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="val")
    p.add_argument("--cache", default=None)
    p.add_argument("--name", default=None, help="write benchmarks/results/css_errors/css-errors-NAME.md")
    a = p.parse_args(argv)

    from cirlab.api import Pipeline
    from cirlab.experiment import Workspace

    pipe = Pipeline.load(a.model, a.cache)
    ws = Workspace.for_model(a.data, pipe.model, pipe.image_encoder, pipe.text_encoder, pipe.cache, a.split)
    ev = ws.evaluate(pipe.model, a.split, gallery_split=a.split)
    scenes = {r["id"]: cells(r) for r in map(json.loads, Path(a.data, "images.jsonl").read_text().splitlines())}
    kinds, per_op, wrong_op, per_name, wrong_name = Counter(), Counter(), Counter(), Counter(), Counter()
    wrong = 0
    for t, ids in zip(ev.triplets, ev.ids):
        op = t.attributes.get("operation", "?")
        name = f"{op.split('-')[0]} by {named_by(t.text)}"
        per_op[op] += 1
        per_op[f"composition: {t.attributes.get('composition', 'seen')}"] += 1
        per_name[name] += 1
        if ids and ids[0] in t.targets:
            continue
        wrong += 1
        wrong_op[op] += 1
        wrong_op[f"composition: {t.attributes.get('composition', 'seen')}"] += 1
        wrong_name[name] += 1
        ref, top = scenes[t.reference], scenes[ids[0]]
        target = min((scenes[x] for x in t.targets), key=lambda s: len(differences(s, top)))
        found = classify(ref, target, top)
        kinds.update(set(found))
        kinds[f"cells wrong: {len(found)}"] += 1
    cfg = pipe.meta.get("config", {})
    train = cfg.get("train", {})
    lines = [f"# CSS errors: {pipe.meta['method']} ({cfg.get('model', {}).get('image_head', 'pooled')}), "
             f"{a.data} {a.split}", "",
             f"Command: `.venv/bin/python benchmarks/css_errors.py --model {a.model} --data {a.data} --split {a.split}`", "",
             f"The model's options: {json.dumps(cfg.get('model', {}), sort_keys=True)}; trained {train.get('epochs')} "
             f"epochs, seed {train.get('seed')}, hard negatives {train.get('hard_negatives', 0)}.", "",
             f"{len(ev.triplets)} queries, {wrong} with a wrong top-1 "
             f"(R@1 {100 * (1 - wrong / max(1, len(ev.triplets))):.1f}).", "",
             "| operation (and whether the target holds a shape-colour pair never seen in training) | queries "
             "| wrong top-1 | share wrong |", "|---|---:|---:|---:|"]
    lines += [f"| {op} | {n} | {wrong_op[op]} | {100 * wrong_op[op] / n:.1f} |" for op, n in sorted(per_op.items())]
    lines += ["", "By what the text names the object by (the cell, size, colour, shape words it uses):", "",
              "| edit, named by | queries | wrong top-1 | share wrong |", "|---|---:|---:|---:|"]
    lines += [f"| {k} | {n} | {wrong_name[k]} | {100 * wrong_name[k] / n:.1f} |" for k, n in sorted(per_name.items())]
    lines += ["", "What differs between a wrong top-1 and the target (share of wrong queries; a query may count "
              "in several rows):", "", "| difference | share of wrong |", "|---|---:|"]
    lines += [f"| {k} | {100 * v / max(1, wrong):.1f} |" for k, v in kinds.most_common()]
    text = "\n".join(lines) + "\n"
    print(text)
    if a.name:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / f"css-errors-{a.name}.md").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
