"""``cirlab eval``: a checkpoint on a data set's split (``experiment.Workspace.for_model``), or on a public
benchmark under its own protocol (``eval.protocols``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cirlab.cli import common
from cirlab.errors import CirlabError
from cirlab.files import atomic_write_text


def add_parser(sub) -> None:
    v = sub.add_parser("eval", parents=[common.quiet(), common.model(), common.zero_shot(), common.cache(),
                                        common.runtime(), common.rerank()],
                       help="Recall@K of a trained model on a data set split or a public benchmark")
    v.add_argument("--data", type=Path, default=None, help="dataset folder (with dataset.json)")
    v.add_argument("--split", default=None, help="split to evaluate (default: test; benchmarks: val)")
    v.add_argument("--benchmark", choices=["fashioniq", "cirr", "circo", "shoes", "fashion200k"], default=None,
                   help="evaluate under a public benchmark's protocol (with --annotations and --images)")
    v.add_argument("--annotations", type=Path, default=None, help="the benchmark's annotation folder, as published")
    v.add_argument("--images", type=Path, default=None, help="the folder holding the benchmark's images")
    v.add_argument("--category", choices=["dress", "shirt", "toptee"], default=None,
                   help="FashionIQ: one category (default: all three and their average)")
    v.add_argument("--fiq-gallery", choices=["original", "val_union"], default="original",
                   help="FashionIQ gallery: every image of the split (default) or the val queries' images")
    v.add_argument("--join", choices=["and", "separate"], default="and",
                   help="FashionIQ: join the two captions with 'and' (default) or make each its own query")
    v.add_argument("--spelling", type=Path, default=None,
                   help="FashionIQ / Shoes: a spelling-correction dictionary (file or DQU-CIR's folder)")
    v.add_argument("--out", type=Path, default=Path("eval_out"),
                   help="where the JSON, the Recall@K curve (PNG), the example page (HTML) and the CIRR test1 and CIRCO "
                        "test submissions go "
                        "(default: %(default)s)")
    v.add_argument("--examples", type=int, default=20,
                   help="queries drawn (seeded) for the example page; 0: no page (default: %(default)s)")
    v.add_argument("--gallery", choices=["split", "all"], default="split",
                   help="gallery: the split's images (default) or every image of the data set")
    v.add_argument("--perturb", default=None, metavar="SPEC",
                   help="also ask the split's queries perturbed as a person might word them, e.g. typos=0.05 or "
                        "frames=1,synonyms=0.5 (cirlab.data.perturb; seed --perturb-seed): R@K next to the training "
                        "phrasing's, and how stable each query's top 10 stays (AO@10, Jaccard@10)")
    v.add_argument("--perturb-seed", type=int, default=0, help="seed of the perturbed wordings (default: %(default)s)")
    v.add_argument("--keep-reference", action="store_true",
                   help="leave the reference image in its own ranking (default: as the data set's protocol says; "
                        "excluded unless it says otherwise)")
    v.set_defaults(func=run)


def run(a: argparse.Namespace) -> int:
    if a.benchmark:
        if a.rerank is not None:
            raise CirlabError("--rerank is for a cirlab data set (--data) for now; the benchmark protocols rank "
                              "without it")
        return _benchmark(a)
    if a.data is None:
        raise CirlabError("give --data DIR (a cirlab data set) or --benchmark NAME with --annotations and --images")
    from cirlab.eval.audit import audit_line, audit_report
    from cirlab.eval.metrics import recall_curve
    from cirlab.eval.report import recall_table, write_reports
    from cirlab.experiment import Workspace

    from cirlab.rerank import Reranker

    pipe = common.pipeline(a)
    split = a.split or "test"
    rerank = Reranker.load(a.rerank, pipe.image_encoder, pipe.text_encoder) if a.rerank is not None else None
    ws = Workspace.for_model(a.data, pipe.model, pipe.image_encoder, pipe.text_encoder, pipe.cache, split,
                             also=[rerank.model] if rerank else [])
    ds = ws.dataset
    gallery_split = None if a.gallery == "all" else split
    ev = ws.evaluate(pipe.model, split, exclude_reference=False if a.keep_reference else None,
                     gallery_split=gallery_split, audit=True, rerank=rerank)
    label = pipe.meta["method"] + (f" re-ranked by {rerank.name} (top {rerank.candidates})" if rerank else "")
    print(recall_table({label: ev.recall}))
    print(audit_line(ev.audit))
    if ev.map:
        print("  ".join(f"mAP@{k} {v:.1f}" for k, v in ev.map.items()) + "  (queries with several targets: CIRCO-style)")
    print(f"{len(ev.triplets)} queries over {len(ws.gallery_ids(gallery_split))} gallery images; "
          f"{ev.skipped} skipped (missing images); reference {'excluded' if ev.exclude_reference else 'kept'}")
    perturb = _perturbed(a, ws, pipe, split, gallery_split, ev, label) if a.perturb else None
    a.out.mkdir(parents=True, exist_ok=True)
    name = f"{ds.name}-{split}"
    report = {"data": ds.name, "split": split, "model": pipe.identity, "recall": ev.recall, "map": ev.map,
              "queries": len(ev.triplets), "skipped": ev.skipped, "exclude_reference": ev.exclude_reference,
              "protocol": ds.meta.get("protocol", {}), "audit": audit_report(ev.audit, ev.triplets),
              "rerank": {"method": rerank.name, "checkpoint": str(a.rerank), "candidates": rerank.candidates}
              if rerank else None, "perturb": perturb}
    atomic_write_text(a.out / f"{name}.json", json.dumps(report, indent=1))
    print(f"wrote {a.out / (name + '.json')}")
    every = ds.gallery()
    for path in write_reports(a.out, name, f"{ds.name} {split} ({pipe.meta['method']})",
                              {split: recall_curve(ev.ids, [t.targets for t in ev.triplets], 50)},
                              [(ev.triplets, ev.ids, ev.scores, dict(zip(every.ids, every.paths)))], a.examples):
        print(f"wrote {path}")
    return 0


def _perturbed(a: argparse.Namespace, ws, pipe, split: str, gallery_split, ev, label: str) -> dict:
    """The split's queries perturbed as ``--perturb`` says, evaluated over the same gallery: printed next to the
    training phrasing's R@K, with the rank stability of the two top-10 lists; the report's ``perturb`` entry."""
    from cirlab.data.perturb import TextAugment, perturbed
    from cirlab.eval.metrics import rank_stability
    from cirlab.eval.report import recall_table

    augment = TextAugment.parse(a.perturb)
    if not augment:
        raise CirlabError(f"--perturb {a.perturb!r} perturbs nothing: give a rate, e.g. typos=0.05 or frames=1")
    queries = perturbed(ws.triplets[split], augment, a.perturb_seed)
    other = ws.evaluate(pipe.model, ws.add_split(f"{split}~perturbed", queries),
                        exclude_reference=False if a.keep_reference else None, gallery_split=gallery_split)
    stability = rank_stability(ev.ids, other.ids)
    said, was = next(((q.text, t.text) for q, t in zip(queries, ws.triplets[split]) if q.text != t.text),
                     (queries[0].text, queries[0].text))
    print(f"\nperturbed as {augment.spec} (seed {a.perturb_seed}), e.g. {said!r} for {was!r}:")
    print(recall_table({label: ev.recall, f"{label}, perturbed": other.recall}))
    print("top-10 stability: " + ", ".join(f"{k} {v:.1f}" for k, v in stability.items()))
    return {"spec": augment.spec, "seed": a.perturb_seed, "recall": other.recall, "stability": stability}


def _benchmark(a: argparse.Namespace) -> int:
    from cirlab.eval.audit import audit_line
    from cirlab.eval.protocols import (benchmark_table, circo_submission, cirr_submission, evaluate_benchmark,
                                       load_benchmark)
    from cirlab.eval.report import write_reports

    if a.annotations is None or a.images is None:
        raise CirlabError("--benchmark needs --annotations DIR (the published annotation folder) and --images DIR")
    pipe = common.pipeline(a)
    splits = load_benchmark(a.benchmark, a.annotations, a.images, a.split, a.category, a.fiq_gallery, a.join,
                            a.spelling)
    a.out.mkdir(parents=True, exist_ok=True)
    results = []
    for sp in splits:
        print(sp.summary())
        if sp.missing:
            print(f"  missing image ids: {sp.write_missing(a.out / f'{sp.name}-missing.txt')}")
        results.append(evaluate_benchmark(pipe, sp, progress=not a.quiet))
    table = benchmark_table(results)
    if table:
        print(table)
    for r in results:
        if r.audit is not None:
            print(f"{r.name}: {audit_line(r.audit)}")
    report = {"benchmark": a.benchmark, "model": pipe.identity, "protocol": [sp.protocol for sp in splits],
              "results": [r.to_dict() for r in results]}
    atomic_write_text(a.out / f"{a.benchmark}.json", json.dumps(report, indent=1))
    print(f"wrote {a.out / (a.benchmark + '.json')}")
    for path in write_reports(a.out, a.benchmark, f"{a.benchmark} ({pipe.meta['method']})",
                              {r.name: r.curve for r in results if r.curve},
                              [(r.evaluated, r.ranked, r.scores, sp.paths) for r, sp in zip(results, splits)],
                              a.examples):
        print(f"wrote {path}")
    if a.benchmark == "cirr" and (a.split or "val") == "test1":
        for p in cirr_submission(results[0], a.out):
            print(f"wrote {p}")
    if a.benchmark == "circo" and a.split == "test":
        print(f"wrote {circo_submission(results[0], a.out)}")
    return 0
