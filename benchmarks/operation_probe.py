"""Does the frozen text encoder know which edit a wording asks for? For each CSS-like edit (add, remove, change) and
each shape of the paraphrase bank, the share of bank texts whose pooled MiniLM vectors lie nearest the training
phrasings of the right edit (the mean of the 3 nearest training texts of each edit), for the generator's own
grammar (version 1) and with the wider grammar (version 2) added.

    .venv/bin/python benchmarks/operation_probe.py [--objects 40]
        [--out benchmarks/results/robustness/operation-probe-css.md]

Every CSS-like method reads the edit from these token states and this pooled vector; where the frozen encoder puts a
bank wording nearer another edit's training texts, a fusion trained on those texts has nothing to carry it across.
Label-free of images: only the texts are encoded. The objects are drawn with a fixed seed from the generator's own
vocabulary (size, colour, shape, cell).
"""

from __future__ import annotations

import argparse
import os
import random
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np

from cirlab.data.css import CELLS, COLOURS, SHAPES, SIZES, describe
from cirlab.data.paraphrase import bank
from cirlab.data.phrasing import extra_phrasings
from cirlab.encoders.base import new_encoder

from _report import command, save_report

EDITS = ("add", "remove", "change")
OWN = {"add": ["add {object}"], "remove": ["remove {object}"], "change": ["make {object} {value}"]}


def objects(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """``n`` object descriptions and a new colour for each, as the generator writes them."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        attrs = {"size": rng.choice(list(SIZES)), "colour": rng.choice(list(COLOURS)),
                 "shape": rng.choice(SHAPES), "cell": rng.randrange(len(CELLS))}
        kept = {k: v for k, v in attrs.items() if rng.random() < 0.5} or {"colour": attrs["colour"]}
        out.append((describe(kept), rng.choice(list(COLOURS))))
    return out


def fill(forms: dict, objs) -> list[tuple[str, int, str]]:
    """(edit, form index, text) for every form of every edit over the objects."""
    return [(edit, i, form.format(object=o, place="", value=v)) for edit in EDITS
            for i, form in enumerate(forms[edit]) for o, v in objs]


def nearest_edit(encoder, train: list, probe: list, k: int = 3) -> list[str]:
    """For each probe text, the edit whose k nearest training texts are nearest on average (cosine)."""
    def vectors(texts):
        v = np.concatenate([encoder.encode_texts(texts[s:s + 128])["pooled"] for s in range(0, len(texts), 128)])
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    sims = vectors([t for *_, t in probe]) @ vectors([t for *_, t in train]).T
    labels = np.array([e for e, *_ in train])
    scores = np.stack([np.sort(sims[:, labels == e], axis=1)[:, -k:].mean(1) for e in EDITS], 1)
    return [EDITS[i] for i in scores.argmax(1)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--objects", type=int, default=40)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    encoder = new_encoder("text", "minilm")
    shapes = bank()["shapes"]
    banked = bank()["css"]
    train_objs, probe_objs = objects(a.objects, seed=0), objects(a.objects, seed=1)
    wide = extra_phrasings("css", 2)
    grammars = {"own grammar (v1)": OWN, "with the wider grammar (v2)": {e: OWN[e] + wide[e] for e in EDITS}}
    probe = fill(banked, probe_objs)
    rows = []
    for grammar, forms in grammars.items():
        got = nearest_edit(encoder, fill(forms, train_objs), probe)
        for edit in EDITS:
            for i, form in enumerate(banked[edit]):
                hits = [g == e for (e, j, _), g in zip(probe, got) if e == edit and j == i]
                wrong = [g for (e, j, _), g in zip(probe, got) if e == edit and j == i and g != e]
                rows.append({"grammar": grammar, "edit": edit, "shape": shapes[i], "form": form,
                             "right": round(100 * sum(hits) / len(hits), 1),
                             "read_as": max(set(wrong), key=wrong.count) if wrong else ""})
    lines = ["# Which edit the frozen text encoder reads in the bank's CSS-like wordings", "",
             command("operation_probe.py", f"--objects {a.objects}", f"--out {a.out}" if a.out else ""), "",
             f"MiniLM (frozen) pooled vectors; {a.objects} object descriptions for the training texts and "
             f"{a.objects} others for the bank's; an edit is read as the one whose 3 nearest training texts are "
             "nearest on average. %: bank texts read as their own edit.", "",
             "| training grammar | edit | bank shape | bank wording | % read right | mostly read as |",
             "|---|---|---|---|---:|---|"]
    lines += [f"| {r['grammar']} | {r['edit']} | {r['shape']} | `{r['form']}` | {r['right']} | {r['read_as']} |"
              for r in rows]
    save_report("\n".join(lines) + "\n", a.out, {"command": lines[2], "rows": rows})


if __name__ == "__main__":
    main()
