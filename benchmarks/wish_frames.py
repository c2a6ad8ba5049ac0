"""Does a trained model hold when a person phrases the edit as a wish? R@1 on a data set's test split with every text
wrapped in one wish frame at a time ("i wish you could ...", "it would be nice if you could ..."). These frames were
written for this check: none of them is one of the request frames text augmentation trains on
(``cirlab.data.perturb``: VERB_FRAMES, OTHER_FRAMES, FILLERS), and none is a shape of the paraphrase bank.

    .venv/bin/python benchmarks/wish_frames.py --model ~/.cirlab/models/default.pt --data data/emojiedit-demo
        [--out benchmarks/results/robustness/wish-frames-emojiedit.md]
"""

from __future__ import annotations

from _report import model_header, model_on_test, save_report

from cirlab.data.perturb import FILLERS, OTHER_FRAMES, VERB_FRAMES
from cirlab.data.triplets import Triplet

WISHES = {"i wish you could": "i wish you could {}", "it would be nice": "it would be nice if you could {}",
          "i'd love it if": "i'd love it if you could {}", "if only": "if only you could {}",
          "hoping": "hoping you can {}", "ideally": "ideally, {}", "i'd prefer": "i'd prefer it if you could {}"}


def main() -> None:
    trained = {f.split("{}")[0].strip(" ,") for f in (*VERB_FRAMES, *OTHER_FRAMES, *FILLERS)}
    assert not {w.split("{}")[0].strip(" ,") for w in WISHES.values()} & trained, "a wish frame is a training frame"
    a, pipe, ws = model_on_test(__doc__)
    rows, results = [], {}
    for name, frame in {"training phrasing": "{}", **WISHES}.items():
        asked = [Triplet(t.reference, frame.format(t.text), t.targets, t.attributes) for t in ws.triplets["test"]]
        r1 = ws.evaluate(pipe.model, ws.add_split(f"test~{name}", asked), gallery_split="test").recall[1]
        results[name] = r1
        rows.append(f"| {name} | `{frame}` | {r1:.1f} |")
    text = "\n".join([
        f"# Wishes: R@1 on {ws.dataset.name}'s test split with each text wrapped in a wish frame",
        "",
        *model_header("wish_frames.py", a, pipe),
        f"{len(ws.triplets['test'])} test queries, reference excluded. The frames were written for this check; none is "
        "a frame text augmentation trains on. Texts as asked, no spelling correction.",
        "",
        "| frame | text | R@1 |",
        "|---|---|---:|",
        *rows,
    ]) + "\n"
    save_report(text, a.out, {"data": str(a.data), "model": pipe.meta["method"], "r1": results})


if __name__ == "__main__":
    main()
