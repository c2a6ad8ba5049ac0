"""Does text augmentation make a model hold when people word the edit their own way? The same methods trained with
and without ``--text-augment``, over seeds, measured on the training phrasing, the paraphrase bank (none of its texts
is ever trained on) and seeded perturbations (the ``robustness`` measurement); and what augmentation costs.

    .venv/bin/python benchmarks/text_robustness.py --data data/emojiedit [--methods sum,combiner]
        [--image-head colour:bins=16] [--seeds 3] [--augment SPEC] [--out benchmarks/results/robustness]

Each arm is one ``cirlab bench`` (``--measure paraphrases,robustness``), saved beside the summary as
``<data>-plain.md``, ``-augmented.md`` and, with ``--consistency W``, ``-consistency.md``. The cost: the variants of
every training text, encoded once into the feature cache, timed here into an empty cache (MiniLM on this machine),
and the training time of each arm.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from _report import save_report

from cirlab import settings
from cirlab.data.perturb import TextAugment
from cirlab.encoders import build_text_encoder
from cirlab.encoders.cache import FeatureCache
from cirlab.experiment import Workspace, run_bench, save_bench

AUGMENT = "typos=0.05,frames=0.3,synonyms=0.3,order=0.3,drop=0.1,case=0.2"
COLUMNS = [("training phrasing", "robustness", "training phrasing"), ("bank mean", "paraphrase", "mean"),
           ("bank worst", "paraphrase", "worst"), ("bank synonyms", "paraphrase", "synonyms"),
           ("typos 2%", "robustness", "typos 2%"), ("typos 5%", "robustness", "typos 5%"),
           ("typos 10%", "robustness", "typos 10%"), ("frames", "robustness", "frames"),
           ("synonyms", "robustness", "synonyms"), ("order", "robustness", "order"), ("drop", "robustness", "drop"),
           ("bank range %", "bank_relative", "relative range"), ("typos 5% AO@10", "stability", "typos 5% AO@10")]


def encoding_cost(data: Path, augment: TextAugment, text_spec: str) -> dict:
    """How many variants the training texts make, and the seconds to encode them into an empty cache."""
    ws = Workspace.open(data, FeatureCache(settings.cache_dir()), progress=False)
    texts = sorted({t.text for t in ws.triplets["train"]})
    variants = augment.variants_of(texts, 0)
    new = sorted({v for vs in variants.values() for v in vs})
    with tempfile.TemporaryDirectory() as tmp:
        encoder = build_text_encoder(text_spec)
        start = time.perf_counter()
        FeatureCache(Path(tmp)).text_features(encoder, new, ("pooled", "tokens"), progress=False)
        seconds = time.perf_counter() - start
    return {"texts": len(texts), "variants": len(new), "seconds": seconds}


def cell(runs: list, field: str, key: str) -> str:
    values = [r.measured.get(field, {}).get(key) for r in runs]
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    return f"{statistics.fmean(values):.1f}" + (f" ± {statistics.stdev(values):.1f}" if len(values) > 1 else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path("data/emojiedit"))
    ap.add_argument("--methods", default="sum,combiner")
    ap.add_argument("--image-head", default="colour:bins=16", help="(default: the demo's, %(default)s)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--augment", default=AUGMENT, help="the --text-augment spec (default: %(default)s)")
    ap.add_argument("--consistency", type=float, default=0.0,
                    help="also a third arm, augmented with this --text-consistency weight (default: no third arm)")
    ap.add_argument("--text-encoder", default="minilm")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "robustness")
    a = ap.parse_args()
    augment = TextAugment.parse(a.augment)
    cache = FeatureCache(settings.cache_dir())
    log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    arms = {}
    stem = a.data.name
    plans = {"plain": None, "augmented": {"text_augment": augment.spec}}
    if a.consistency:
        plans["consistency"] = {"text_augment": augment.spec, "text_consistency": a.consistency}
    for arm, train in plans.items():
        arms[arm] = run_bench(a.data, a.methods.split(","), a.seeds, cache, "efficientnet_lite0", a.text_encoder,
                              progress=False, log=log, image_head=a.image_head or None, train=train,
                              measures=["paraphrases", "robustness"])
        save_bench(arms[arm], a.out, f"{stem}-{arm}", f"python benchmarks/text_robustness.py (the {arm} arm)")
    cost = encoding_cost(a.data, augment, a.text_encoder)
    command = (f"python benchmarks/text_robustness.py --data {a.data.as_posix()} --methods {a.methods} "
               f"--image-head {a.image_head} --seeds {a.seeds} --augment {augment.spec}"
               + (f" --consistency {a.consistency:g}" if a.consistency else ""))
    head = ["method", "training", *(c[0] for c in COLUMNS), "train s"]
    lines = [f"# Text augmentation against people's wordings: {a.data.name}", "", f"Command: `{command}`", "",
             f"R@1 (%) on the test split, mean ± std over {a.seeds} seeds; image head {a.image_head}. `plain`: the "
             f"data set's own phrasings; `augmented`: `--text-augment {augment.spec}`"
             f"{f'; `consistency`: the same and `--text-consistency {a.consistency:g}`' if a.consistency else ''}. "
             "The bank's shapes (never "
             "trained on: no augmented text equals one of its texts) and the perturbations (seed 0, the same for "
             "every model) as `cirlab bench --measure paraphrases,robustness` reports them; bank range: (max - min) / "
             "mean of R@1 over the training phrasing and the bank's shapes; AO@10: the average overlap of each "
             f"query's top 10 with and without typos. Each arm's full tables: "
             + ", ".join(f"`{stem}-{arm}.md`" for arm in plans) + ".", "",
             "| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
    for name in a.methods.split(","):
        for arm, bench in arms.items():
            runs = [r for r in bench.runs if r.name == name]
            cells = [cell(runs, field, key) for _, field, key in COLUMNS]
            lines.append(f"| {name} | {arm} | " + " | ".join(cells)
                         + f" | {statistics.fmean(r.train_seconds for r in runs):.0f} |")
    lines += ["", f"Cost: the {cost['texts']} training texts make {cost['variants']} variants "
                  f"({augment.variants} a text at most), encoded once into the feature cache in {cost['seconds']:.1f} s "
                  f"({cost['variants'] / max(cost['seconds'], 1e-9):.0f} texts/s, {a.text_encoder}, this machine); "
                  "training reads them from the cache as it reads the data set's own texts."]
    save_report("\n".join(lines) + "\n", a.out / f"text-augment-{stem}.md",
                {"command": command, "cost": cost, "arms": {k: v.to_dict() for k, v in arms.items()}})


if __name__ == "__main__":
    main()
