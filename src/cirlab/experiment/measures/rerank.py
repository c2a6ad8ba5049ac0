"""``rerank``: each model's ranking with its top candidates reordered by a second model (``cirlab.rerank``), R@1 and
R@10 next to the first stage's, on every query and on the first stage's composition subset (its audit)."""

from __future__ import annotations

import numpy as np

from cirlab.checkpoint import read_checkpoint
from cirlab.eval.metrics import first_hits
from cirlab.experiment.measure import Measurement, Trial, group_table, mean_std, measurements
from cirlab.rerank import Reranker, RerankSpec

RERANK_COLUMNS = tuple(f"{stage}{what} R@{k}" for what in ("", " subset") for k in (1, 10)
                       for stage in ("first", "re-ranked"))


def reranked_recall(first, second) -> dict[str, float]:
    """R@1 and R@10 of the first stage's rankings and of the re-ranked ones, on every query and on the first stage's
    composition subset (its audit)."""
    subset = first.audit.subset
    out = {}
    for stage, ev in (("first", first), ("re-ranked", second)):
        hit = first_hits(ev.ids, [t.targets for t in ev.triplets])
        for k in (1, 10):
            out[f"{stage} R@{k}"] = 100.0 * float(np.mean(hit < k))
            out[f"{stage} subset R@{k}"] = 100.0 * float(np.mean(hit[subset] < k)) if subset.any() else 0.0
    return out


@measurements.register("rerank")
class Rerank(Measurement):
    """Options: ``spec``, the second model (a :class:`RerankSpec` or its text ``MODEL[,candidates=N]``), which must
    share the bench's encoders."""

    name = "rerank"
    needs_audit = True

    def __init__(self, spec: RerankSpec | str) -> None:
        self.spec = RerankSpec.parse(spec) if isinstance(spec, str) else spec
        self.meta = read_checkpoint(self.spec.model)["meta"]  # a foreign file is refused before any training
        self.reranker: Reranker | None = None

    def configs(self) -> list[dict]:
        return [{"method": self.meta["method"], "model": self.meta["model_config"]}]  # its views are read too

    def prepare(self, ws, split: str) -> None:
        self.reranker = Reranker.load(self.spec, ws.image_encoder, ws.text_encoder)

    def run(self, ws, trial: Trial) -> dict[str, dict]:
        second = ws.evaluate(trial.model, trial.split, rerank=self.reranker)
        return {"reranked": reranked_recall(trial.first, second)}

    def setting(self) -> dict:
        return {"method": self.reranker.name if self.reranker else self.meta["method"],
                "checkpoint": str(self.spec.model),
                "candidates": self.reranker.candidates if self.reranker else self.spec.candidates}

    def sections(self, result) -> list[tuple[str, str]]:
        s = self.setting()
        return [(f"Re-ranking (docs/evaluation.md#re-ranking): R@K (%) of each model alone and with its top "
                 f"{s['candidates']} reordered by {s['method']} ({s['checkpoint']}); the composition subset is the "
                 f"first stage's", group_table(result, "reranked", mean_std, RERANK_COLUMNS))]
