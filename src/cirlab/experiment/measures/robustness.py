"""``robustness``: how a model holds when people word the same edit their own way. The reported split's queries are
perturbed (``data.perturb``, seed 0: every model and seed meets the same wordings): typos at 2, 5 and 10% of the
characters, and one kind of rewording at a time (request frames, WordNet synonyms, word order, dropped function
words, case and punctuation). Per perturbation: R@1 against the training phrasing's, and the label-free rank stability
of the two top-10 lists (AO@10, Jaccard@10). Where the paraphrase bank has the data set, its shapes' R@1 too, each
against the training phrasing, and the PinPoint-style relative range of R@1 over all the phrasings ((max - min) /
mean). With ``spelling`` (and pyspellchecker installed), the training phrasing and each typo level again with the
query-time spelling correction a served model applies (``data.spelling``, against the training texts' words)."""

from __future__ import annotations

import importlib.util
import statistics

from cirlab.data.paraphrase import PARAPHRASE_SHAPES, phrasings
from cirlab.data.perturb import TextAugment, perturbed
from cirlab.data.spelling import Speller, vocabulary, word_pairs
from cirlab.data.triplets import Triplet
from cirlab.eval.metrics import rank_stability
from cirlab.experiment.measure import Measurement, Trial, group_table, measurements
from cirlab.experiment.measures.paraphrases import paraphrase_recall

PERTURBATIONS = {"typos 2%": "typos=0.02", "typos 5%": "typos=0.05", "typos 10%": "typos=0.1", "frames": "frames=1",
                 "synonyms": "synonyms=1", "order": "order=1", "drop": "drop=1", "case": "case=1"}
SEED = 0


@measurements.register("robustness")
class Robustness(Measurement):
    """Options: ``perturbations``, name -> a ``TextAugment`` spec (default: :data:`PERTURBATIONS`); ``spelling``: also
    measure the typo levels with spelling correction (default: where pyspellchecker is installed)."""

    name = "robustness"

    def __init__(self, perturbations: dict[str, str] | None = None, spelling: bool | None = None) -> None:
        self.perturbations = {k: TextAugment.parse(v) for k, v in (perturbations or PERTURBATIONS).items()}
        self.spelling = importlib.util.find_spec("spellchecker") is not None if spelling is None else spelling
        self._speller: Speller | None = None

    def prepare(self, ws, split: str) -> None:
        if self.spelling and "train" in ws.triplets:
            texts = [t.text for t in ws.triplets["train"]]
            self._speller = Speller(vocabulary(texts), word_pairs(texts))

    def spelled(self, ws, trial: Trial, label: str, triplets: list[Triplet]) -> float:
        """R@1 of ``triplets`` with their texts' spelling corrected, as a served model corrects them."""
        fixed = [Triplet(t.reference, self._speller.correct(t.text)[0], t.targets, t.attributes) for t in triplets]
        ev = ws.evaluate(trial.model, ws.add_split(f"{trial.split}~{label}+spelling", fixed), gallery_split=trial.split)
        return ev.recall[1]

    def run(self, ws, trial: Trial) -> dict[str, dict]:
        original = trial.first.recall[1]
        r1, relative, stable = {"training phrasing": original}, {}, {}
        if self._speller is not None:
            r1["training phrasing + spelling"] = self.spelled(ws, trial, "clean", ws.triplets[trial.split])
        for label, augment in self.perturbations.items():
            queries = perturbed(ws.triplets[trial.split], augment, SEED)
            ev = ws.evaluate(trial.model, ws.add_split(f"{trial.split}~{label}", queries), gallery_split=trial.split)
            r1[label] = ev.recall[1]
            if self._speller is not None and augment.typos:
                r1[f"{label} + spelling"] = self.spelled(ws, trial, label, queries)
            relative[label] = _ratio(ev.recall[1], original)
            for key, value in rank_stability(trial.first.ids, ev.ids).items():
                stable[f"{label} {key}"] = value
        bank = {}
        if phrasings(ws.dataset.name):
            shapes, _ = paraphrase_recall(ws, trial.model, trial.split, original)
            bank = {shape: _ratio(shapes[shape], original) for shape in PARAPHRASE_SHAPES if shape in shapes}
            every = [original, *(original * v / 100.0 for v in bank.values())]
            bank["worst"] = min(bank.values())
            bank["relative range"] = 100.0 * (max(every) - min(every)) / statistics.fmean(every) if any(every) else 0.0
        relative["worst"] = min(relative.values())
        return {"robustness": r1, "robustness_relative": relative, "stability": stable, "bank_relative": bank}

    def sections(self, result) -> list[tuple[str, str]]:
        spelled = [f"{k} + spelling" for k, a in self.perturbations.items() if a.typos] if self._speller else []
        order = ("training phrasing", *self.perturbations, *(["training phrasing + spelling"] if spelled else []),
                 *spelled)
        return [("Robustness (docs/evaluation.md#robustness): R@1 (%) of the same queries in the training phrasing "
                 "and perturbed (seed 0): typos at a share of the characters, and one kind of rewording at a time; "
                 "`+ spelling`: the same queries with the query-time spelling correction a served model applies",
                 group_table(result, "robustness", order=order)),
                ("Robustness: each perturbation's R@1 as a percentage of the training phrasing's, and the worst",
                 group_table(result, "robustness_relative", order=(*self.perturbations, "worst"))),
                ("Robustness: the paraphrase bank's shapes' R@1 as a percentage of the training phrasing's, the worst, "
                 "and the relative range of R@1 over the training phrasing and the shapes ((max - min) / mean, %)",
                 group_table(result, "bank_relative", order=(*PARAPHRASE_SHAPES, "worst", "relative range"))),
                ("Robustness: rank stability, label-free: the average overlap (AO@10) and Jaccard@10 (%) of each "
                 "query's top 10 in the training phrasing and perturbed",
                 group_table(result, "stability", order=[f"{p} {m}" for p in self.perturbations
                                                         for m in ("AO@10", "Jaccard@10")]))]

    def setting(self) -> dict:
        return {**{name: augment.spec for name, augment in self.perturbations.items()}, "spelling": self.spelling}


def _ratio(value: float, original: float) -> float:
    return 100.0 * value / original if original else 0.0
