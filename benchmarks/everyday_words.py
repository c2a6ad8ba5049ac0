"""Does a trained model understand the everyday words a person uses for a data set's values ("pale skin" for "light
skin", "a lady" for "a woman")? R@1 on the test queries that name a value, as written and with the value's word
replaced by each everyday word for it, one at a time.

    .venv/bin/python benchmarks/everyday_words.py --model ~/.cache/cirlab/models/default.pt --data data/emojiedit-demo
        [--out benchmarks/results/robustness/everyday-words-emojiedit.md]

The everyday words were written for this check, before any model was changed because of it; they are not drawn
from WordNet (whose synonyms text augmentation trains on) and none is a value word of the data set. Only words a
person would type to mean that same value are listed: not "girl" for "woman" (a girl is another emoji), not a
relative "darker". Texts as asked, no spelling correction.
"""

from __future__ import annotations

import re

from _report import model_header, model_on_test, save_report

from cirlab.data.triplets import Triplet

EVERYDAY = {"emojiedit": {
    "woman": ["lady", "female"], "man": ["guy", "male", "gentleman"],
    "gender-neutral person": ["non-binary person", "person of any gender"],
    "light": ["pale", "fair"], "medium-light": ["light-medium", "medium light"], "medium": ["olive", "mid"],
    "medium-dark": ["brown", "medium dark"], "dark": ["deep", "very dark"],
    "left": ["the left side"], "right": ["the right side"]}}


def main() -> None:
    a, pipe, ws = model_on_test(__doc__)
    words = EVERYDAY[ws.dataset.name.split("-")[0].lower()]
    rows, results = [], []
    for word, everyday in words.items():
        found = re.compile(rf"(?<![\w-]){re.escape(word)}(?![\w-])")
        named = [t for t in ws.triplets["test"] if found.search(t.text)]
        if not named:
            continue
        as_trained = ws.evaluate(pipe.model, ws.add_split(f"test~{word}", named), gallery_split="test").recall[1]
        for other in everyday:
            asked = [Triplet(t.reference, re.sub(r"\bthe the\b", "the", found.sub(other, t.text)), t.targets,
                             t.attributes) for t in named]
            r1 = ws.evaluate(pipe.model, ws.add_split(f"test~{word}~{other}", asked), gallery_split="test").recall[1]
            results.append({"word": word, "everyday": other, "queries": len(named), "r1_as_trained": as_trained,
                            "r1": r1, "example": asked[0].text})
            rows.append(f"| {word} | {other} | {len(named)} | {as_trained:.1f} | {r1:.1f} | {r1 / as_trained:.2f} | "
                        f"`{asked[0].text}` |")
    worst = min(results, key=lambda r: r["r1"] / r["r1_as_trained"])
    text = "\n".join([
        f"# Everyday words for {ws.dataset.name}'s values: R@1 with each value's word replaced",
        "",
        *model_header("everyday_words.py", a, pipe),
        "Each row: the test queries whose text names the value, reference excluded, searched in the test gallery.",
        "",
        "| value word | everyday word | queries | R@1 as trained | R@1 | ratio | e.g. |",
        "|---|---|---:|---:|---:|---:|---|",
        *rows,
        "",
        f"Worst: {worst['everyday']!r} for {worst['word']!r}, {worst['r1']:.1f} against {worst['r1_as_trained']:.1f}.",
    ]) + "\n"
    save_report(text, a.out, {"data": str(a.data), "model": pipe.meta["method"], "rows": results})


if __name__ == "__main__":
    main()
