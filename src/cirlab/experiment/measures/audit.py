"""``audit`` (default): the modality audit (``eval.audit``): R@1/R@10 of the composed query, the reference image alone
and the text alone, the composition subset's share and R@K, and the composition gap."""

from __future__ import annotations

from cirlab.eval.audit import AUDIT_COLUMNS, SOLVED_AT
from cirlab.experiment.measure import Measurement, Trial, group_table, measurements


@measurements.register("audit")
class Audit(Measurement):
    name = "audit"
    default = True
    needs_audit = True

    def run(self, ws, trial: Trial) -> dict[str, dict]:
        return {"audit": trial.first.audit.summary()}

    def sections(self, result) -> list[tuple[str, str]]:
        return [(f"Modality audit (docs/evaluation.md#the-modality-audit): R@K (%) of the composed query, the reference "
                 f"image alone and the text alone (the same model); the composition subset is the queries neither "
                 f"single modality solves at rank {SOLVED_AT}: its share of the queries (%) and the composed R@K on it; "
                 f"the composition gap is composed R@1 - the better single modality's R@1",
                 group_table(result, "audit", order=AUDIT_COLUMNS))]
