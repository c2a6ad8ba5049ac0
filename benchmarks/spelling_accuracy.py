"""How often does query-time spelling correction give back the word that was meant? Label-free of any model: each test
text of a data set gets seeded typos (``cirlab.data.perturb``, as ``--perturb typos=R`` asks them), the speller a
model trained on the data set's training texts would use corrects it, and each slipped word is counted as given back,
left as typed (it slipped into a word English or the model knows, or one too short to judge), or corrected into
another word. Arms: the speller with the words around a word (the word pairs a checkpoint records) and without them.

    .venv/bin/python benchmarks/spelling_accuracy.py --data data/emojiedit-demo [--rates 0.02,0.05,0.1]
        [--out benchmarks/results/robustness/spelling-accuracy-emojiedit.md]
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from _report import command, save_report

from cirlab.data.perturb import TextAugment
from cirlab.data.spelling import WORD, Speller, vocabulary, word_pairs
from cirlab.data.triplets import Dataset


def score(speller: Speller, texts: list[str], rate: float, seed: int = 0) -> dict:
    """Counts of slipped words given back / left / corrected wrong, and the most common wrong outcomes."""
    augment = TextAugment.parse(f"typos={rate}")
    counts, wrong = Counter(), Counter()
    for n, text in enumerate(texts):
        typed = augment.perturb(text, seed=seed, draw=n)
        meant, slipped, fixed = (WORD.findall(t) for t in (text, typed, speller.correct(typed)[0]))
        if not len(meant) == len(slipped) == len(fixed):  # a slip that joined or split words: not word-aligned
            counts["not aligned"] += 1
            continue
        for a, b, c in zip(meant, slipped, fixed):
            if a == b:
                continue
            outcome = "given back" if c.lower() == a.lower() else "left as typed" if c == b else "corrected wrong"
            counts[outcome] += 1
            if outcome != "given back":
                wrong[f"{a} -> {b} -> {c}"] += 1
    return {"counts": dict(counts), "worst": wrong.most_common(8)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--rates", default="0.02,0.05,0.1")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args()
    ds = Dataset.open(a.data)
    train = [t.text for t in ds.triplets("train")]
    test = [t.text for t in ds.triplets("test")]
    arms = {"words only": Speller(vocabulary(train)), "words and word pairs": Speller(vocabulary(train), word_pairs(train))}
    rows, payload = [], {"data": str(a.data), "seed": a.seed, "test_texts": len(test), "arms": {}}
    for rate in (float(r) for r in a.rates.split(",")):
        for name, speller in arms.items():
            res = score(speller, test, rate, a.seed)
            payload["arms"][f"{name} @ {rate}"] = res
            c = res["counts"]
            slipped = sum(c.get(k, 0) for k in ("given back", "left as typed", "corrected wrong"))
            share = {k: 100 * c.get(k, 0) / max(slipped, 1) for k in ("given back", "left as typed", "corrected wrong")}
            rows.append(f"| {rate:.0%} | {name} | {slipped} | {share['given back']:.1f} | {share['left as typed']:.1f} | "
                        f"{share['corrected wrong']:.1f} | {'; '.join(f'{w} ({n})' for w, n in res['worst'][:4])} |")
    text = "\n".join([
        f"# Query-time spelling correction on {ds.name}'s test texts",
        "",
        command("spelling_accuracy.py", f"--data {a.data}", f"--rates {a.rates}", f"--out {a.out}" if a.out else ""),
        "",
        f"{len(test)} test texts, each with seeded typos (seed {a.seed}) at the rate given; the speller knows the "
        "training texts' words (and, in one arm, their word pairs) and English. Shares of the slipped words (%):",
        "",
        "| typos | speller | slipped words | given back | left as typed | corrected wrong | most common misses |",
        "|---|---|---:|---:|---:|---:|---|",
        *rows,
    ]) + "\n"
    save_report(text, a.out, payload)


if __name__ == "__main__":
    main()
