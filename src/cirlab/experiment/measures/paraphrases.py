"""``paraphrases``: R@1 of the split's queries asked in every phrasing of the paraphrase bank (``data.paraphrase``,
none used in training), per shape of phrasing and per edit's phrasing, next to the data set's own phrasings."""

from __future__ import annotations

import statistics

from cirlab.data.paraphrase import PARAPHRASE_SHAPES, paraphrased, phrasing_text, phrasings
from cirlab.errors import CirlabError
from cirlab.experiment.measure import Measurement, Trial, group_table, measurements
from cirlab.experiment.measures.edits import recall_by

PARAPHRASE_COLUMNS = ("original", *PARAPHRASE_SHAPES, "mean", "std", "worst", "worst % of mean")


def paraphrase_recall(ws, model, split: str, original: float) -> tuple[dict[str, float], dict[str, float]]:
    """R@1 (%) of ``split``'s queries asked in each phrasing of the bank, over ``split``'s gallery: ``original`` (the
    R@1 in the data set's own phrasings, given), each shape's, their ``mean``, ``std``, ``worst`` and ``worst % of
    mean``; and each edit's phrasing's (``<edit>#<j>``)."""
    sets = paraphrased(ws.dataset.name, ws.triplets[split])
    summary, per = {"original": original}, {}
    for j, triplets in enumerate(sets):
        ev = ws.evaluate(model, ws.add_split(f"{split}~phrasing{j}", triplets), gallery_split=split)
        summary[PARAPHRASE_SHAPES[j]] = ev.recall[1]
        per.update(recall_by(ev, "phrasing", 1))
    values = [summary[PARAPHRASE_SHAPES[j]] for j in range(len(sets))]
    summary.update({"mean": statistics.fmean(values), "std": statistics.stdev(values), "worst": min(values)})
    summary["worst % of mean"] = 100.0 * summary["worst"] / summary["mean"] if summary["mean"] else 0.0
    return summary, per


@measurements.register("paraphrases")
class Paraphrases(Measurement):
    name = "paraphrases"

    def prepare(self, ws, split: str) -> None:
        if not phrasings(ws.dataset.name):
            raise CirlabError(f"the paraphrase bank has no phrasings for data set {ws.dataset.name!r}: --paraphrases "
                              "runs on EmojiEdit and CSS-like data sets")

    def run(self, ws, trial: Trial) -> dict[str, dict]:
        summary, per = paraphrase_recall(ws, trial.model, trial.split, trial.first.recall[1])
        return {"paraphrase": summary, "by_phrasing": per}

    def sections(self, result) -> list[tuple[str, str]]:
        return [("Paraphrase robustness (docs/evaluation.md#paraphrase-robustness): R@1 (%) of the same queries in "
                 "the training phrasings and in each shape of phrasing of the bank (none used in training); mean "
                 "and sample std over the five shapes, the worst shape, and the worst as a percentage of the mean",
                 group_table(result, "paraphrase", order=PARAPHRASE_COLUMNS)),
                ("Paraphrase R@1 (%) of each edit in each phrasing (mean over seeds; the bank's text in "
                 "src/cirlab/data/paraphrases.json)", phrasing_table(result))]


def phrasing_table(result) -> str:
    """One row per edit's phrasing (``<edit>#<j>``, with its text), one column per method: R@1, mean over seeds;
    empty without paraphrases."""
    per = [(r.name, r.measured.get("by_phrasing", {})) for r in result.runs]
    keys = sorted({k for _, p in per for k in p})
    if not keys:
        return ""
    names = [n for n in result.names() if any(p for m, p in per if m == n)]
    lines = ["| phrasing | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for key in keys:
        cells = [f"{statistics.fmean(p.get(key, 0.0) for m, p in per if m == n):.1f}" for n in names]
        lines.append(f"| {key} `{phrasing_text(result.dataset, key)}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)
