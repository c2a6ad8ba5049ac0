"""``cirlab bench``: train and evaluate several methods over several seeds on one data set,
and report mean ± std of Recall@K, parameters and training time as a Markdown table."""

from __future__ import annotations

import datetime as dt
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from cirlab import __version__
from cirlab.config import method_config, variant_names
from cirlab.devices import Placement
from cirlab.encoders.cache import FeatureCache
from cirlab.errors import CirlabError
from cirlab.data.paraphrase import PARAPHRASE_SHAPES, paraphrased, phrasing_text, phrasings
from cirlab.eval.audit import AUDIT_COLUMNS, SOLVED_AT
from cirlab.eval.metrics import DEFAULT_KS, first_hits
from cirlab.eval.multiturn import TOP, MultiTurn, run_sessions, simulated_user
from cirlab.experiment.workspace import Workspace, train_method
from cirlab.files import atomic_write_text
from cirlab.fusion import fusion_methods, learned_methods, zero_shot_methods
from cirlab.index import build_index
from cirlab.rerank import Reranker, RerankSpec
from cirlab.checkpoint import read_checkpoint


def expand_methods(spec: str) -> list[str]:
    """``all`` (every method that learns from triplets), ``zero-shot`` (every zero-shot method, on an aligned pair),
    ``ablations`` (every variant after its base method) or a comma list."""
    if spec == "all":
        return learned_methods()
    if spec == "zero-shot":
        return zero_shot_methods()
    if spec == "ablations":
        out: list[str] = []
        for v in variant_names():
            base = method_config(v)["method"]
            out += [n for n in (base, v) if n not in out]
        return out
    names = [n.strip() for n in spec.split(",") if n.strip()]
    known = set(fusion_methods.names()) | set(variant_names())
    bad = [n for n in names if n not in known]
    if bad:
        raise CirlabError(f"unknown method or variant {bad[0]!r}; see 'cirlab methods' and 'cirlab methods --configs'")
    return names


@dataclass
class BenchRun:
    name: str
    seed: int
    recall: dict[int, float]
    parameters: int
    train_seconds: float
    best_epoch: int
    queries: int
    by_edit: dict[str, float] = field(default_factory=dict)  # R@10 per triplet attribute "edit"
    by_edit_r1: dict[str, float] = field(default_factory=dict)  # R@1 per edit type
    # per edit type: the share (%) of queries whose top-1 carries the requested value of the edited attribute
    carries: dict[str, float] = field(default_factory=dict)
    # R@1 and R@10 of the "seen" / "novel" compositions (CSS-like test splits mark them)
    by_composition: dict[str, float] = field(default_factory=dict)
    map: dict[int, float] = field(default_factory=dict)  # mAP@K where queries have several targets (CSS-like adds)
    # R@1 and R@10 when ranking through other index backends (paper 003's knn, kmeans_svm)
    by_retrieval: dict[str, float] = field(default_factory=dict)
    # R@1 and R@10 of the same model on other splits (EmojiEdit's in-style test-<style> next to a held-out style)
    by_split: dict[str, float] = field(default_factory=dict)
    # the modality audit (eval.audit): R@1/R@10 of the composed, image-only and text-only queries, the composition
    # subset's share and R@K, and the composition gap
    audit: dict[str, float] = field(default_factory=dict)
    # paraphrase robustness (data.paraphrase): R@1 under each phrasing shape, their mean, spread and worst; and the
    # R@1 of each edit's phrasing (``<edit>#<j>``)
    paraphrase: dict[str, float] = field(default_factory=dict)
    by_phrasing: dict[str, float] = field(default_factory=dict)
    # multi-turn search with a simulated user (eval.multiturn), per history mode: ``<mode>`` -> its summary (R@1 and
    # R@10 by each turn, mean turns, never), and ``<mode>`` -> per edit kind, the share of its turns left outside the
    # top 10
    multi_turn: dict[str, dict[str, float]] = field(default_factory=dict)
    stuck: dict[str, dict[str, float]] = field(default_factory=dict)
    # the same model's ranking re-ranked by a second model (cirlab.rerank): R@1, R@10, and on the composition subset
    # (the first stage's audit), next to the first stage's
    reranked: dict[str, float] = field(default_factory=dict)


@dataclass
class BenchResult:
    dataset: str
    split: str
    seeds: list[int]
    runs: list[BenchRun] = field(default_factory=list)
    encoders: dict = field(default_factory=dict)
    exclude_reference: bool = True
    image_head: str | None = None  # the image head every method used, where the bench set one
    rerank: dict = field(default_factory=dict)  # the second model's method, checkpoint and candidates, where re-ranked

    def names(self) -> list[str]:
        return list(dict.fromkeys(r.name for r in self.runs))

    def table(self, ks: Sequence[int] = DEFAULT_KS) -> str:
        with_map = all(r.map for r in self.runs) and bool(self.runs)
        head = ["method", "params", *(f"R@{k}" for k in ks), *(["mAP@10"] if with_map else []), "train s"]
        lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
        for name in self.names():
            runs = [r for r in self.runs if r.name == name]
            cells = [name, f"{runs[0].parameters / 1e6:.2f}M"]
            cells += [_mean_std([r.recall[k] for r in runs]) for k in ks]
            if with_map:
                cells.append(_mean_std([r.map[10] for r in runs]))
            cells.append(f"{statistics.fmean(r.train_seconds for r in runs):.0f}")
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def edit_table(self, k: int = 10) -> str:
        """R@k (1 or 10) per edit type (the triplets' ``attributes.edit``), mean over seeds; empty without edit types."""
        return self._group_table({1: "by_edit_r1", 10: "by_edit"}[k], lambda v: f"{statistics.fmean(v):.1f}")

    def carries_table(self) -> str:
        """Per edit type, the share of top-1 results that carry the requested attribute value."""
        return self._group_table("carries", lambda v: f"{statistics.fmean(v):.1f}")

    def composition_table(self) -> str:
        """R@1 and R@10 on queries whose target holds attribute pairs seen in training or never seen."""
        return self._group_table("by_composition", _mean_std)

    def sections(self) -> list[tuple[str, str]]:
        """The tables after the overall one, each with its heading; only those the runs have data for."""
        parts = [("Recall@1 (%) by edit type (mean over seeds)", self.edit_table(1) if self.edit_table() else ""),
                 ("Recall@10 (%) by edit type (mean over seeds)", self.edit_table()),
                 ("Top-1 results that carry the requested attribute value (%), exact target or not (mean over seeds)",
                  self.carries_table()),
                 ("Recall (%) on queries whose target holds only attribute pairs seen in training, and on those with "
                  "a pair never seen in training (novel compositions)", self.composition_table()),
                 ("Recall (%) when the same models rank through other index backends", self.retrieval_table()),
                 ("Recall (%) of the same models on other splits", self._group_table("by_split", _mean_std)),
                 (f"Modality audit (docs/evaluation.md#the-modality-audit): R@K (%) of the composed query, the reference "
                  f"image alone and the text alone (the same model); the composition subset is the queries neither "
                  f"single modality solves at rank {SOLVED_AT}: its share of the queries (%) and the composed R@K on it; "
                  f"the composition gap is composed R@1 - the better single modality's R@1",
                  self._group_table("audit", _mean_std, AUDIT_COLUMNS)),
                 ("Paraphrase robustness (docs/evaluation.md#paraphrase-robustness): R@1 (%) of the same queries in "
                  "the training phrasings and in each shape of phrasing of the bank (none used in training); mean "
                  "and sample std over the five shapes, the worst shape, and the worst as a percentage of the mean",
                  self._group_table("paraphrase", _mean_std, PARAPHRASE_COLUMNS)),
                 ("Paraphrase R@1 (%) of each edit in each phrasing (mean over seeds; the bank's text in "
                  "src/cirlab/data/paraphrases.json)", self.phrasing_table()),
                 (f"Re-ranking (docs/evaluation.md#re-ranking): R@K (%) of each model alone and with its top "
                  f"{self.rerank.get('candidates', '')} reordered by {self.rerank.get('method', '')} "
                  f"({self.rerank.get('checkpoint', '')}); the composition subset is the first stage's",
                  self._group_table("reranked", _mean_std, RERANK_COLUMNS)),
                 (f"Multi-turn search with a simulated user (docs/evaluation.md#multi-turn-search): the share (%) of "
                  f"sessions whose target was at rank 1, or within the top {TOP}, by turn T; the mean turns to rank 1 "
                  f"(of the sessions that got there) and the share that never did", self.multi_turn_table()),
                 (f"Multi-turn search: per edit the user said, the share (%) of its turns after which the target was "
                  f"still outside the top {TOP} (mean over seeds)", self.stuck_table())]
        return [(heading, table) for heading, table in parts if table]

    def phrasing_table(self) -> str:
        """One row per edit's phrasing (``<edit>#<j>``, with its text), one column per method: R@1, mean over seeds;
        empty without paraphrases."""
        keys = sorted({k for r in self.runs for k in r.by_phrasing})
        if not keys:
            return ""
        names = [n for n in self.names() if any(r.by_phrasing for r in self.runs if r.name == n)]
        lines = ["| phrasing | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
        for key in keys:
            cells = [f"{statistics.fmean(r.by_phrasing.get(key, 0.0) for r in self.runs if r.name == n):.1f}"
                     for n in names]
            lines.append(f"| {key} `{phrasing_text(self.dataset, key)}` | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def multi_turn_table(self, at: Sequence[int] = (1, 2, 3, 5, 10)) -> str:
        """One row per method and history mode: R@1 and R@10 by turn T (``at``), mean turns, never (mean ± std over
        seeds); empty without multi-turn runs."""
        rows = [(n, mode) for n in self.names() for mode in dict.fromkeys(m for r in self.runs if r.name == n
                                                                          for m in r.multi_turn)]
        if not rows:
            return ""
        turns = max(int(k.rsplit(" ", 1)[1]) for r in self.runs for m in r.multi_turn.values() for k in m
                    if k.startswith("R@1 by"))
        cols = [*(f"R@1 by {t}" for t in at if t <= turns), *(f"R@{TOP} by {t}" for t in at if t <= turns),
                "mean turns", "never"]
        lines = ["| method | history | " + " | ".join(cols) + " |", "|---|---|" + "---:|" * len(cols)]
        for name, mode in rows:
            runs = [r.multi_turn[mode] for r in self.runs if r.name == name and mode in r.multi_turn]
            lines.append(f"| {name} | {mode} | " + " | ".join(_mean_std([x[c] for x in runs]) for c in cols) + " |")
        return "\n".join(lines)

    def stuck_table(self) -> str:
        rows = [(n, mode) for n in self.names() for mode in dict.fromkeys(m for r in self.runs if r.name == n
                                                                          for m in r.stuck)]
        kinds = sorted({k for r in self.runs for m in r.stuck.values() for k in m})
        if not rows or not kinds:
            return ""
        lines = ["| method | history | " + " | ".join(kinds) + " |", "|---|---|" + "---:|" * len(kinds)]
        for name, mode in rows:
            runs = [r.stuck[mode] for r in self.runs if r.name == name and mode in r.stuck]
            cells = [f"{statistics.fmean(x[k] for x in runs if k in x):.1f}" if any(k in x for x in runs) else "-"
                     for k in kinds]
            lines.append(f"| {name} | {mode} | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def retrieval_table(self) -> str:
        """R@1 and R@10 of each model ranked by exact search and by the other backends the bench was given."""
        return self._group_table("by_retrieval", _mean_std)

    def _group_table(self, attr: str, cell, order: Sequence[str] = ()) -> str:
        """One column per group key of the runs' ``attr`` dicts (those in ``order`` first, in its order), one row per
        method, ``cell`` of the seeds' values (0 where a run lacks the group); empty when no run has groups."""
        found = {key for r in self.runs for key in getattr(r, attr)}
        keys = [k for k in order if k in found] + sorted(found - set(order))
        if not keys:
            return ""
        lines = ["| method | " + " | ".join(keys) + " |", "|---|" + "---:|" * len(keys)]
        for name in self.names():
            runs = [r for r in self.runs if r.name == name]
            lines.append(f"| {name} | " + " | ".join(cell([getattr(r, attr).get(key, 0.0) for r in runs])
                                                      for key in keys) + " |")
        return "\n".join(lines)

    @property
    def zero_shot(self) -> bool:
        """Whether every method of the bench is zero-shot (trained on no triplet; ``fusion.zero_shot``)."""
        return bool(self.runs) and all(fusion_methods.get(method_config(r.name)["method"]).zero_shot
                                       for r in self.runs)

    def to_dict(self) -> dict:
        return {"dataset": self.dataset, "split": self.split, "seeds": self.seeds, "encoders": self.encoders,
                "image_head": self.image_head, "zero_shot": self.zero_shot, "rerank": self.rerank or None,
                "cirlab_version": __version__, "runs": [r.__dict__ for r in self.runs]}


RERANK_COLUMNS = tuple(f"{stage}{what} R@{k}" for what in ("", " subset") for k in (1, 10)
                       for stage in ("first", "re-ranked"))
PARAPHRASE_COLUMNS = ("original", *PARAPHRASE_SHAPES, "mean", "std", "worst", "worst % of mean")


def _mean_std(values: list[float]) -> str:
    """Mean ± sample std of the finite values ("-" where none is: a mean of turns no session had)."""
    values = [v for v in values if math.isfinite(v)]
    if not values:
        return "-"
    if len(values) < 2:
        return f"{values[0]:.1f}"
    return f"{statistics.fmean(values):.1f} ± {statistics.stdev(values):.1f}"


def run_bench(data: str | Path, methods: list[str], seeds: int, cache: FeatureCache, image_spec: str, text_spec: str,
              split: str = "test", epochs: int | None = None, progress: bool = True, log=print,
              image_head: str | None = None, retrieval: Sequence[str] = (),
              extra_splits: Sequence[str] = (), placement: Placement | None = None,
              aligned: str | Path | None = None, paraphrases: bool = False,
              multi_turn: MultiTurn | None = None, rerank: RerankSpec | None = None) -> BenchResult:
    """Every (method, seed): train on ``train`` (best epoch by ``val``), evaluate on ``split``. A zero-shot method
    with nothing to learn (no parameter) runs once: its seeds would repeat it.
    ``image_head``: the image head every method uses (``fusion.heads``), instead of its config's.
    ``retrieval``: index backends (``knn``, ``kmeans_svm:k=15``) each model is also evaluated through.
    ``extra_splits``: other splits each model is also evaluated on (R@1 and R@10). ``placement``: where the
    encoders run and the methods train (None: the defaults'). ``paraphrases``: each model is also evaluated on
    ``split``'s queries in every phrasing of the paraphrase bank (:func:`paraphrase_recall`). ``multi_turn``: each
    model is also measured in sessions with a simulated user over ``split``'s gallery (``eval.multiturn``).
    ``rerank``: each model is also evaluated with its top candidates reordered by that checkpoint (``cirlab.rerank``),
    which must share the bench's encoders."""
    if seeds < 1:
        raise CirlabError(f"seeds must be at least 1, got {seeds}")
    for backend in retrieval:
        build_index(backend, 8)  # an unknown backend or option fails now, not after the first training
    model_override = {"image_head": image_head} if image_head else {}

    def model_of(name: str) -> dict:
        """The model options every seed of ``name`` runs with: a zero-shot method composes in ``aligned``'s space."""
        if aligned is not None and fusion_methods.get(method_config(name)["method"]).zero_shot:
            return {**model_override, "aligned": str(aligned)}
        return model_override

    second = read_checkpoint(rerank.model)["meta"] if rerank else None  # its views are read too
    ws = Workspace.for_configs(data, cache, image_spec, text_spec,
                               [method_config(m, {"model": model_of(m)}) for m in methods]
                               + ([{"method": second["method"], "model": second["model_config"]}] if second else []),
                               progress, placement=placement)
    reranker = Reranker.load(rerank, ws.image_encoder, ws.text_encoder) if rerank else None
    if paraphrases and not phrasings(ws.dataset.name):
        raise CirlabError(f"the paraphrase bank has no phrasings for data set {ws.dataset.name!r}: --paraphrases "
                          "runs on EmojiEdit and CSS-like data sets")
    user = simulated_user(ws.dataset) if multi_turn else None  # a data set without one is refused before training
    for name in (split, *extra_splits):
        if name not in ws.triplets:
            raise CirlabError(f"data set {ws.dataset.name} has no split {name!r}; it has {', '.join(ws.triplets)}")
    result = BenchResult(ws.dataset.name, split, list(range(seeds)),
                         encoders={"image": ws.image_encoder.id, "text": ws.text_encoder.id},
                         exclude_reference=ws.dataset.exclude_reference, image_head=image_head,
                         rerank={"method": reranker.name, "checkpoint": str(rerank.model),
                                 "candidates": reranker.candidates} if reranker else {})
    for name in methods:
        for seed in range(seeds):
            cfg = method_config(name, {"train": {"seed": seed, **({"epochs": epochs} if epochs else {})},
                                       "model": model_of(name)})
            model, res, _ = train_method(ws, name, cfg, progress=progress, text_head=False)
            ev = ws.evaluate(model, split, audit=True)
            run = BenchRun(name, seed, ev.recall, model.num_parameters(), res.seconds, res.best_epoch, len(ev.triplets),
                           recall_by_edit(ev), recall_by_edit(ev, 1), top1_carries(ev, ws.dataset.by_id),
                           {f"{c} R@{k}": v for k in (1, 10) for c, v in recall_by(ev, "composition", k).items()},
                           ev.map, audit=ev.audit.summary())
            if paraphrases:
                run.paraphrase, run.by_phrasing = paraphrase_recall(ws, model, split, ev.recall[1])
            if multi_turn:
                run.multi_turn, run.stuck = multi_turn_runs(ws, model, split, multi_turn, seed, user.text_only)
            if reranker:
                run.reranked = reranked_recall(ev, ws.evaluate(model, split, rerank=reranker))
            for backend in retrieval:
                other = ev if backend == "exact" else ws.evaluate(model, split, backend=backend)
                run.by_retrieval.update({f"{backend} R@{k}": other.recall[k] for k in (1, 10)})
            for other_split in extra_splits:
                other = ws.evaluate(model, other_split)
                run.by_split.update({f"{other_split} R@{k}": other.recall[k] for k in (1, 10)})
            result.runs.append(run)
            log(f"{name} seed {seed}: " + " ".join(f"R@{k} {v:.1f}" for k, v in ev.recall.items())
                + f" ({res.seconds:.0f} s, best epoch {res.best_epoch})")
            if model.zero_shot and not model.num_parameters():
                break
    return result


def recall_by(ev, key: str, k: int = 10) -> dict[str, float]:
    """Recall@k (%) of the queries grouped by a triplet attribute (``edit``, ``composition``...);
    queries without the attribute are left out."""
    hits: dict[str, list[bool]] = {}
    for t, ids in zip(ev.triplets, ev.ids):
        value = t.attributes.get(key) if isinstance(t.attributes, dict) else None
        if value:
            hits.setdefault(str(value), []).append(any(x in ids[:k] for x in t.targets))
    return {e: 100.0 * sum(h) / len(h) for e, h in sorted(hits.items())}


def paraphrase_recall(ws: Workspace, model, split: str, original: float) -> tuple[dict[str, float], dict[str, float]]:
    """R@1 (%) of ``split``'s queries asked in each phrasing of the bank (``data.paraphrase``), over ``split``'s
    gallery: ``original`` (the R@1 in the data set's own phrasings, given), each shape's, their ``mean``, ``std``,
    ``worst`` and ``worst % of mean``; and each edit's phrasing's (``<edit>#<j>``)."""
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


def multi_turn_runs(ws: Workspace, model, split: str, setting: MultiTurn, seed: int,
                    needs_text_head: bool) -> tuple[dict, dict]:
    """Simulated sessions of ``model`` in each setting (history mode, results shown) of ``setting`` (the seed's own
    targets and starts): each setting's summary and its edits left outside the top 10. A user who searches by words
    alone gets the model's text-to-image head, fitted here on the training images' captions."""
    fitted = ws.fit_text_head(model) if needs_text_head else None
    summaries, stuck = {}, {}
    for label, mode, shown in setting.settings():
        got = run_sessions(ws, model, split, setting.sessions, setting.turns, mode, shown, seed,
                           fitted[0] if fitted else None, setting.start)
        summaries[label], stuck[label] = got.summary(), got.stuck_edits()
    return summaries, stuck


def recall_by_edit(ev, k: int = 10) -> dict[str, float]:
    """Recall@k (%) of the queries of each edit type, where triplets name one (``attributes.edit``)."""
    return recall_by(ev, "edit", k)


def top1_carries(ev, records: dict[str, dict]) -> dict[str, float]:
    """Per edit type (and ``all``), the share (%) of queries whose top-1 image has the value the text asks
    for in the edited attribute (triplet attributes ``edit`` and ``to``, image ``attributes``), whether
    or not it is the exact target; empty where triplets or images do not name them."""
    hits: dict[str, list[bool]] = {}
    for t, ids in zip(ev.triplets, ev.ids):
        a = t.attributes if isinstance(t.attributes, dict) else {}
        if "edit" not in a or "to" not in a or not ids:
            continue
        top = (records.get(ids[0]) or {}).get("attributes") or {}
        carried = top.get(a["edit"]) == a["to"]
        for key in (str(a["edit"]), "all"):
            hits.setdefault(key, []).append(carried)
    return {e: 100.0 * sum(h) / len(h) for e, h in sorted(hits.items())}


def save_bench(result: BenchResult, out_dir: str | Path, name: str, command: str) -> Path:
    """``<name>.json`` (every run, written first: a table that fails loses no run) and ``<name>.md`` (the command,
    the setting, the tables) in ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / f"{name}.json", json.dumps(result.to_dict(), indent=1))
    md = out_dir / f"{name}.md"
    text = (f"# cirlab bench: {result.dataset} ({result.split} split)\n\n"
            f"Command: `{command}`\n\n"
            f"cirlab {__version__}, {dt.date.today().isoformat()}; seeds {result.seeds}; "
            f"encoders {result.encoders['image']} + {result.encoders['text']} (frozen)"
            f"{'; image head ' + result.image_head if result.image_head else ''}. "
            f"Mean ± sample std over seeds of Recall@K (%), reference "
            f"{'excluded from' if result.exclude_reference else 'kept in'} its ranking; "
            f"{'mAP@10 (%) counts every target of a query (CIRCO-style); ' if 'mAP@10' in result.table() else ''}"
            f"params = trainable parameters of the fusion; train s = mean wall time of training "
            f"(with per-epoch validation) on this machine.\n\n{result.table()}\n")
    text += "".join(f"\n{heading}:\n\n{table}\n" for heading, table in result.sections())
    plot = multi_turn_png(out_dir / f"{name}-multi-turn.png", result) if result.multi_turn_table() else None
    if plot is not None:
        text += f"\nSuccess against turns: [{plot.name}]({plot.name})\n"
    atomic_write_text(md, text)
    return md


def multi_turn_png(path: Path, result: BenchResult) -> Path | None:
    """Success against turns, one panel per history mode: per method, R@1 by turn T (solid) and R@10 (dashed),
    mean over seeds (None without matplotlib)."""
    from cirlab.eval.report import save_figure
    from cirlab.optional import pyplot

    plt = pyplot()
    if plt is None:
        return None
    modes = list(dict.fromkeys(m for r in result.runs for m in r.multi_turn))
    fig, axes = plt.subplots(1, len(modes), figsize=(4.2 * len(modes), 3.6), dpi=120, sharey=True, squeeze=False)
    for ax, mode in zip(axes[0], modes):
        for n, name in enumerate(result.names()):
            runs = [r.multi_turn[mode] for r in result.runs if r.name == name and mode in r.multi_turn]
            if not runs:
                continue
            for k, style in ((1, "-"), (TOP, "--")):
                keys = sorted((int(x.rsplit(" ", 1)[1]) for x in runs[0] if x.startswith(f"R@{k} by")))
                ax.plot(keys, [statistics.fmean(r[f"R@{k} by {t}"] for r in runs) for t in keys], style,
                        color=f"C{n}", label=f"{name} R@{k}")
        ax.set_title(f"history: {mode}", fontsize=10)
        ax.set_xlabel("turn")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("sessions with the target found (%)")
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.suptitle(f"Multi-turn search, simulated user: {result.dataset}", fontsize=10)
    return save_figure(fig, path)
