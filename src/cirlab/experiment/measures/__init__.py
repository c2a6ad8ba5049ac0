"""The registered measurements of ``cirlab bench`` (:mod:`cirlab.experiment.measure`), one module each. A new study is
one module here that registers its class, and its import below (where its tables go among the others')."""

from typing import Iterable

from cirlab.experiment.measure import Measurement, measurements
# registered in this order, the order of a bench's tables
from cirlab.experiment.measures import edits  # noqa: F401
from cirlab.experiment.measures import composition  # noqa: F401
from cirlab.experiment.measures import retrieval  # noqa: F401
from cirlab.experiment.measures import splits  # noqa: F401
from cirlab.experiment.measures import audit  # noqa: F401
from cirlab.experiment.measures import paraphrases  # noqa: F401
from cirlab.experiment.measures import rerank  # noqa: F401
from cirlab.experiment.measures import robustness  # noqa: F401
from cirlab.experiment.measures import multi_turn  # noqa: F401

__all__ = ["make_measures", "measure_names"]


def make_measures(names: Iterable[str] = (), options: dict[str, dict] | None = None) -> list[Measurement]:
    """The default measurements and those named, each built with its ``options`` (by name), in the order they were
    registered (the order of a bench's tables)."""
    wanted = {n.strip() for n in names if n.strip()}
    for n in sorted(wanted):
        measurements.get(n)  # an unknown name is refused with the known ones
    options = options or {}
    return [measurements.get(n)(**options.get(n, {})) for n in measurements.in_order()
            if n in wanted or measurements.get(n).default]


def measure_names() -> list[str]:
    return measurements.in_order()
