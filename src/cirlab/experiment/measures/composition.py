"""``composition`` (default): Recall@1 and @10 on the queries whose target holds only attribute pairs seen in training,
and on those with a pair never seen (CSS-like test splits mark them: ``attributes.composition``)."""

from __future__ import annotations

from cirlab.experiment.measure import Measurement, Trial, group_table, measurements
from cirlab.experiment.measures.edits import recall_by


@measurements.register("composition")
class Composition(Measurement):
    name = "composition"
    default = True

    def run(self, ws, trial: Trial) -> dict[str, dict]:
        return {"by_composition": {f"{c} R@{k}": v for k in (1, 10)
                                   for c, v in recall_by(trial.first, "composition", k).items()}}

    def sections(self, result) -> list[tuple[str, str]]:
        return [("Recall (%) on queries whose target holds only attribute pairs seen in training, and on those with "
                 "a pair never seen in training (novel compositions)", group_table(result, "by_composition"))]
