"""Measurements: what ``cirlab bench`` measures of each trained model beside its Recall@K.

A measurement is a class registered in :data:`measurements` under a name (``audit``, ``paraphrases``,
``multi-turn``...), after sentence-transformers' evaluators. The bench builds one per name with its options
(:func:`make_measures`), lets each refuse what it cannot measure before any training (:meth:`Measurement.prepare`),
runs each on every trained model (:meth:`Measurement.run`: the fields it adds to the run, saved in the bench's JSON) and
asks each for its tables (:meth:`Measurement.sections`). A new study is one module of ``cirlab.experiment.measures``
plus its registration; see ``docs/evaluation.md`` for what each measures.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, ClassVar, Sequence

from cirlab import __version__
from cirlab.config import method_config
from cirlab.eval.metrics import DEFAULT_KS
from cirlab.fusion import Fusion, fusion_methods
from cirlab.registry import Registry

if TYPE_CHECKING:
    from cirlab.eval.evaluate import Rankings
    from cirlab.experiment.workspace import Workspace


@dataclass
class Trial:
    """One trained model of a bench: its method (or variant) name and seed, the model, the split it is reported on,
    and that split's evaluation (with the modality audit where a measurement needs it)."""

    name: str
    seed: int
    model: Fusion
    split: str
    first: Rankings


class Measurement:
    """One study of each trained model. Subclasses set :attr:`name` (their registry name), take their options as
    keyword arguments, and implement :meth:`run` and :meth:`sections`."""

    name: ClassVar[str] = ""
    default: ClassVar[bool] = False  # measured by every bench, asked for or not
    needs_audit: ClassVar[bool] = False  # the trial's first evaluation carries the modality audit

    def configs(self) -> list[dict]:
        """Method configs whose encoded views the bench's workspace must also read (a second model's)."""
        return []

    def prepare(self, ws: Workspace, split: str) -> None:
        """Refuse, before any training, what cannot be measured on this data set and split."""

    def run(self, ws: Workspace, trial: Trial) -> dict[str, dict]:
        """The fields this measurement adds to the trial's run: field name -> a dict of numbers."""
        raise NotImplementedError

    def sections(self, result: BenchResult) -> list[tuple[str, str]]:
        """(heading, Markdown table) of each table over the bench's runs; an empty table is left out."""
        raise NotImplementedError

    def setting(self) -> dict:
        """What the bench's JSON records of this measurement's options."""
        return {}

    def figures(self, result: BenchResult, out_dir: Path, name: str) -> str:
        """Markdown lines that link the figures it saves beside the bench's table (``name``: the table's stem)."""
        return ""


measurements: Registry[type[Measurement]] = Registry("measurement")


@dataclass
class BenchRun:
    """One trained model of a bench: its Recall@K, size and training, and each measurement's fields
    (``measured``: field name -> numbers, e.g. ``audit``, ``by_edit``; ``experiment.measures``)."""

    name: str
    seed: int
    recall: dict[int, float]
    parameters: int
    train_seconds: float
    best_epoch: int
    queries: int
    map: dict[int, float] = field(default_factory=dict)  # mAP@K where queries have several targets (CSS-like adds)
    measured: dict[str, dict] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"name": self.name, "seed": self.seed, "recall": self.recall, "parameters": self.parameters,
                "train_seconds": self.train_seconds, "best_epoch": self.best_epoch, "queries": self.queries,
                "map": self.map, **self.measured}


@dataclass
class BenchResult:
    dataset: str
    split: str
    seeds: list[int]
    runs: list[BenchRun] = field(default_factory=list)
    encoders: dict = field(default_factory=dict)
    exclude_reference: bool = True
    image_head: str | None = None  # the image head every method used, where the bench set one
    measures: list[Measurement] = field(default_factory=list)  # what was measured beside Recall@K, in table order
    train: dict = field(default_factory=dict)  # training options every method ran with (text_augment...)

    def names(self) -> list[str]:
        return list(dict.fromkeys(r.name for r in self.runs))

    def table(self, ks: Sequence[int] = DEFAULT_KS) -> str:
        with_map = all(r.map for r in self.runs) and bool(self.runs)
        head = ["method", "params", *(f"R@{k}" for k in ks), *(["mAP@10"] if with_map else []), "train s"]
        lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
        for name in self.names():
            runs = [r for r in self.runs if r.name == name]
            cells = [name, f"{runs[0].parameters / 1e6:.2f}M"]
            cells += [mean_std([r.recall[k] for r in runs]) for k in ks]
            if with_map:
                cells.append(mean_std([r.map[10] for r in runs]))
            cells.append(f"{statistics.fmean(r.train_seconds for r in runs):.0f}")
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def sections(self) -> list[tuple[str, str]]:
        """The tables after the overall one, each with its heading; only those the runs have data for."""
        return [(heading, table) for m in self.measures for heading, table in m.sections(self) if table]

    @property
    def zero_shot(self) -> bool:
        """Whether every method of the bench is zero-shot (trained on no triplet; ``fusion.zero_shot``)."""
        return bool(self.runs) and all(fusion_methods.get(method_config(r.name)["method"]).zero_shot
                                       for r in self.runs)

    def to_dict(self) -> dict:
        return {"dataset": self.dataset, "split": self.split, "seeds": self.seeds, "encoders": self.encoders,
                "image_head": self.image_head, "zero_shot": self.zero_shot, "train": self.train,
                "measures": {m.name: m.setting() for m in self.measures}, "cirlab_version": __version__,
                "runs": [r.to_dict() for r in self.runs]}


def mean_std(values: list[float]) -> str:
    """Mean ± sample std of the finite values ("-" where none is: a mean of turns no session had)."""
    values = [v for v in values if math.isfinite(v)]
    if not values:
        return "-"
    if len(values) < 2:
        return f"{values[0]:.1f}"
    return f"{statistics.fmean(values):.1f} ± {statistics.stdev(values):.1f}"


def mean(values: list[float]) -> str:
    return f"{statistics.fmean(values):.1f}"


def group_table(result: BenchResult, field: str, cell: Callable[[list[float]], str] = mean_std,
                order: Sequence[str] = ()) -> str:
    """One column per group key of the runs' ``field`` dicts (those in ``order`` first, in its order), one row per
    method, ``cell`` of the seeds' values (0 where a run lacks the group); empty when no run has groups."""
    found = {key for r in result.runs for key in r.measured.get(field, {})}
    keys = [k for k in order if k in found] + sorted(found - set(order))
    if not keys:
        return ""
    lines = ["| method | " + " | ".join(keys) + " |", "|---|" + "---:|" * len(keys)]
    for name in result.names():
        runs = [r.measured.get(field, {}) for r in result.runs if r.name == name]
        lines.append(f"| {name} | " + " | ".join(cell([r.get(key, 0.0) for r in runs]) for key in keys) + " |")
    return "\n".join(lines)
