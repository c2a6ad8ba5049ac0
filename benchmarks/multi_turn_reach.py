"""How many edits the simulated user's sessions start from their targets.

``user.steps`` of each session ``cirlab bench --multi-turn`` draws (the same seeds, sessions and start).

    .venv/bin/python benchmarks/multi_turn_reach.py --data data/css-large --data data/emojiedit [--seeds 3]
        [--sessions 200] [--start random] [--out benchmarks/results/multi_turn/multi-turn-reach.md]

The user says one edit a turn, so a session whose start is N edits from its target needs N turns if every search
returned exactly the edited image: the share of sessions within T edits is what a perfect one-edit-a-turn search
would reach at rank 1 by turn T. It is a reference, not a ceiling: a search may land closer than the edit asked, and a
turn may fail to move. No model is read; the distances are the data set's own attributes.
"""

from __future__ import annotations

import argparse
import random
import shlex
import sys
from pathlib import Path

import numpy as np
from _report import save_report

from cirlab.data.triplets import Dataset
from cirlab.data.user import simulated_user
from cirlab.eval.multiturn import STARTS, draw_sessions

AT = (1, 2, 3, 5, 10)


def reach(data: Path, split: str, seeds: int, sessions: int, start: str) -> dict:
    """The start-to-target edits of every session of ``seeds`` seeds over ``data``'s ``split`` gallery."""
    dataset = Dataset(data)
    user = simulated_user(dataset)
    gallery_ids = dataset.gallery(split).ids
    edits = []
    for seed in range(seeds):
        targets, _, starts = draw_sessions(user, gallery_ids, sessions, random.Random(seed), start)
        edits += [user.steps(s, t) for s, t in zip(starts, targets)]
    e = np.array(edits)
    return {"data": dataset.name, "gallery": len(gallery_ids), "sessions": len(e), "median": float(np.median(e)),
            "mean": round(float(e.mean()), 2), "max": int(e.max()),
            "within": {t: round(float((e <= t).mean() * 100), 1) for t in AT}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, action="append", required=True, help="a data set folder (repeatable)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--sessions", type=int, default=200)
    ap.add_argument("--start", choices=STARTS, default="random")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    rows = [reach(d, a.split, a.seeds, a.sessions, a.start) for d in a.data]
    command = "python benchmarks/multi_turn_reach.py " + shlex.join(sys.argv[1:])
    text = "\n".join([
        "# Multi-turn search: how many edits the sessions start from their targets", "",
        f"Command: `{command}`", "",
        f"The sessions of `cirlab bench --multi-turn` ({a.sessions} a seed, seeds 0-{a.seeds - 1}, start "
        f"`{a.start}`, the {a.split} gallery): the edits between each start and its target, as the simulated user "
        "says them if every search returned what it asked (EmojiEdit: one for another emoji, said by words alone, "
        "and one per differing factor; CSS-like: one per object added or removed, one per attribute changed). "
        "The user says one edit a turn, so `within T` (% of sessions) is "
        "what a perfect one-edit-a-turn search would reach at rank 1 by turn T: a reference, not a ceiling.", "",
        "| data | gallery | sessions | median edits | mean | max | " + " | ".join(f"within {t}" for t in AT) + " |",
        "|---|---:|---:|---:|---:|---:|" + "---:|" * len(AT),
        *[f"| {r['data']} | {r['gallery']:,} | {r['sessions']} | {r['median']:g} | {r['mean']} | {r['max']} | "
          + " | ".join(str(r["within"][t]) for t in AT) + " |" for r in rows], ""])
    save_report(text, a.out, {"command": command, "rows": rows})


if __name__ == "__main__":
    main()
