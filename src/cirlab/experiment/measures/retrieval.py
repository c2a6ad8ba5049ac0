"""``retrieval``: Recall@1 and @10 of each model ranked through other index backends (paper 003's ``knn`` and
``kmeans_svm``), next to exact search."""

from __future__ import annotations

from typing import Sequence

from cirlab.experiment.measure import Measurement, Trial, group_table, measurements
from cirlab.index import build_index

DEFAULT_BACKENDS = ("exact", "knn", "kmeans_svm")


@measurements.register("retrieval")
class Retrieval(Measurement):
    name = "retrieval"

    def __init__(self, backends: Sequence[str] = DEFAULT_BACKENDS) -> None:
        self.backends = list(backends) or list(DEFAULT_BACKENDS)
        for backend in self.backends:
            build_index(backend, 8)  # an unknown backend or option fails now, not after the first training

    def run(self, ws, trial: Trial) -> dict[str, dict]:
        out = {}
        for backend in self.backends:
            ev = trial.first if backend == "exact" else ws.evaluate(trial.model, trial.split, backend=backend)
            out.update({f"{backend} R@{k}": ev.recall[k] for k in (1, 10)})
        return {"by_retrieval": out}

    def sections(self, result) -> list[tuple[str, str]]:
        return [("Recall (%) when the same models rank through other index backends",
                 group_table(result, "by_retrieval"))]

    def setting(self) -> dict:
        return {"backends": self.backends}
