"""``cirlab bench``: train and evaluate several methods over several seeds on one data set, run each measurement
(``experiment.measures``) on every trained model, and report mean ± std of Recall@K, parameters and training time
and each measurement's tables in Markdown."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Sequence

from cirlab import __version__
from cirlab.config import method_config, variant_names
from cirlab.devices import Placement
from cirlab.encoders.cache import FeatureCache
from cirlab.errors import CirlabError
from cirlab.experiment.measure import BenchResult, BenchRun, Measurement, Trial
from cirlab.experiment.measures import make_measures, measure_names
from cirlab.experiment.workspace import Workspace, train_method
from cirlab.files import atomic_write_text
from cirlab.fusion import fusion_methods, learned_methods, zero_shot_methods
from cirlab.hardware import machine


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


def run_bench(data: str | Path, methods: list[str], seeds: int, cache: FeatureCache, image_spec: str, text_spec: str,
              split: str = "test", epochs: int | None = None, progress: bool = True, log=print,
              image_head: str | None = None, placement: Placement | None = None,
              aligned: str | Path | None = None, measures: Sequence[Measurement | str] = (),
              train: dict | None = None) -> BenchResult:
    """Every (method, seed): train on ``train`` (best epoch by ``val``), evaluate on ``split`` and run each
    measurement on it (``measures``: built ones, or names built with their default options; the default measurements
    are added: :func:`cirlab.experiment.measures.make_measures`). A zero-shot method with nothing to learn (no
    parameter) runs once: its seeds would repeat it. ``image_head``: the image head every method uses
    (``fusion.heads``), instead of its config's. ``placement``: where the encoders run and the methods train (None:
    the defaults'). ``aligned``: the aligned stage-1 model the zero-shot methods compose in. ``train``: training
    options every method runs with (``TrainConfig`` fields, e.g. ``text_augment``)."""
    if seeds < 1:
        raise CirlabError(f"seeds must be at least 1, got {seeds}")
    measures = _measures(measures)
    model_override = {"image_head": image_head} if image_head else {}

    def model_of(name: str) -> dict:
        """The model options every seed of ``name`` runs with: a zero-shot method composes in ``aligned``'s space."""
        if aligned is not None and fusion_methods.get(method_config(name)["method"]).zero_shot:
            return {**model_override, "aligned": str(aligned)}
        return model_override

    ws = Workspace.for_configs(data, cache, image_spec, text_spec,
                               [method_config(m, {"model": model_of(m)}) for m in methods]
                               + [c for m in measures for c in m.configs()], progress, placement=placement)
    if split not in ws.triplets:
        raise CirlabError(f"data set {ws.dataset.name} has no split {split!r}; it has {', '.join(ws.triplets)}")
    for m in measures:
        m.prepare(ws, split)
    result = BenchResult(ws.dataset.name, split, list(range(seeds)),
                         encoders={"image": ws.image_encoder.id, "text": ws.text_encoder.id},
                         exclude_reference=ws.dataset.exclude_reference, image_head=image_head, measures=measures,
                         train=dict(train or {}))
    audit = any(m.needs_audit for m in measures)
    for name in methods:
        for seed in range(seeds):
            cfg = method_config(name, {"train": {**(train or {}), "seed": seed, **({"epochs": epochs} if epochs else {})},
                                       "model": model_of(name)})
            model, res, _ = train_method(ws, name, cfg, progress=progress, text_head=False)
            trial = Trial(name, seed, model, split, ws.evaluate(model, split, audit=audit))
            ev = trial.first
            run = BenchRun(name, seed, ev.recall, model.num_parameters(), res.seconds, res.best_epoch,
                           len(ev.triplets), ev.map)
            for m in measures:
                run.measured.update(m.run(ws, trial))
            result.runs.append(run)
            log(f"{name} seed {seed}: " + " ".join(f"R@{k} {v:.1f}" for k, v in ev.recall.items())
                + f" ({res.seconds:.0f} s, best epoch {res.best_epoch})")
            if model.zero_shot and not model.num_parameters():
                break
    return result


def _measures(given: Sequence[Measurement | str]) -> list[Measurement]:
    """The built measurements given, and those named (with the defaults), in table order."""
    built = [m for m in given if isinstance(m, Measurement)]
    names = [m for m in given if isinstance(m, str)]
    order = measure_names()
    made = {m.name: m for m in make_measures(n for n in names if n not in {b.name for b in built})}
    made.update({m.name: m for m in built})
    return sorted(made.values(), key=lambda m: order.index(m.name))


def save_bench(result: BenchResult, out_dir: str | Path, name: str, command: str) -> Path:
    """``<name>.json`` (every run, written first: a table that fails loses no run) and ``<name>.md`` (the command,
    the setting, the tables) in ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    here = machine()
    atomic_write_text(out_dir / f"{name}.json", json.dumps({**result.to_dict(), "machine": here.to_dict()}, indent=1))
    md = out_dir / f"{name}.md"
    text = (f"# cirlab bench: {result.dataset} ({result.split} split)\n\n"
            f"Machine: {here.line()}\n\n"
            f"Command: `{command}`\n\n"
            f"cirlab {__version__}, {dt.date.today().isoformat()}; seeds {result.seeds}; "
            f"encoders {result.encoders['image']} + {result.encoders['text']} (frozen)"
            f"{'; image head ' + result.image_head if result.image_head else ''}"
            f"{''.join(f'; {k} {v}' for k, v in result.train.items())}. "
            f"Mean ± sample std over seeds of Recall@K (%), reference "
            f"{'excluded from' if result.exclude_reference else 'kept in'} its ranking; "
            f"{'mAP@10 (%) counts every target of a query (CIRCO-style); ' if 'mAP@10' in result.table() else ''}"
            f"params = trainable parameters of the fusion; train s = mean wall time of training "
            f"(with per-epoch validation) on this machine.\n\n{result.table()}\n")
    text += "".join(f"\n{heading}:\n\n{table}\n" for heading, table in result.sections())
    text += "".join(m.figures(result, out_dir, name) for m in result.measures)
    atomic_write_text(md, text)
    return md
