"""``splits``: Recall@1 and @10 of the same model on other splits (EmojiEdit's in-style ``test-<style>`` next to a
held-out style's ``test``)."""

from __future__ import annotations

from typing import Sequence

from cirlab.errors import CirlabError
from cirlab.experiment.measure import Measurement, Trial, group_table, measurements


@measurements.register("splits")
class Splits(Measurement):
    name = "splits"

    def __init__(self, names: Sequence[str] = ()) -> None:
        self.names = list(names)  # empty: every split but train, val and the reported one

    def prepare(self, ws, split: str) -> None:
        if not self.names:
            self.names = [s for s in ws.triplets if s not in ("train", "val", split)]
            if not self.names:
                raise CirlabError(f"data set {ws.dataset.name} has no split besides train, val and {split}: "
                                  "nothing for --measure splits to measure")
        for name in self.names:
            if name not in ws.triplets:
                raise CirlabError(f"data set {ws.dataset.name} has no split {name!r}; it has {', '.join(ws.triplets)}")

    def run(self, ws, trial: Trial) -> dict[str, dict]:
        out = {}
        for name in self.names:
            ev = ws.evaluate(trial.model, name)
            out.update({f"{name} R@{k}": ev.recall[k] for k in (1, 10)})
        return {"by_split": out}

    def sections(self, result) -> list[tuple[str, str]]:
        return [("Recall (%) of the same models on other splits", group_table(result, "by_split"))]

    def setting(self) -> dict:
        return {"splits": self.names}
