"""The one command line: ``cirlab SUBCOMMAND``. User mistakes print one line and exit 2."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from cirlab import __version__, settings
from cirlab.errors import CirlabError

log = logging.getLogger("cirlab")


def _add_model(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=Path, default=None,
                   help=f"checkpoint to use (default: the model 'make demo' trains, {settings.default_model_path()})")


def cmd_demo(a: argparse.Namespace) -> int:
    from cirlab.demo import run_demo

    run_demo(a.data, a.out, seed=a.seed, progress=not a.quiet)
    return 0


def cmd_data(a: argparse.Namespace) -> int:
    if a.name == "emojiedit":
        from cirlab.data.emojiedit import build_emojiedit

        counts = build_emojiedit(a.out, seed=a.seed)
    elif a.name == "css":
        from cirlab.data.css import build_css

        counts = build_css(a.out, size=a.size, seed=a.seed, image_size=a.image_size, config=a.config)
    elif a.name in ("fashioniq", "shoes", "fashion200k", "cirr"):
        from cirlab.data.benchmarks import make_benchmark_dataset

        if a.annotations is None or a.images is None:
            raise CirlabError(f"'data make {a.name}' needs --annotations DIR (as published) and --images DIR")
        counts = make_benchmark_dataset(a.name, a.annotations, a.images, a.out, a.category, a.spelling, a.captions,
                                        a.seed)
        if counts["missing"]:
            (Path(a.out) / "missing.txt").write_text("\n".join(counts["missing"]) + "\n")
            counts["missing"] = f"{len(counts['missing'])} image ids, listed in {Path(a.out) / 'missing.txt'}"
    else:
        raise CirlabError(f"unknown data set {a.name!r}; this version builds: emojiedit, css, and from a benchmark's "
                          "files: fashioniq, shoes, fashion200k")
    print(json.dumps(counts, indent=2))
    return 0


def cmd_encode(a: argparse.Namespace) -> int:
    from cirlab.data.features import image_table
    from cirlab.data.triplets import Gallery
    from cirlab.encoders import build_image_encoder
    from cirlab.encoders.cache import FeatureCache

    enc = build_image_encoder(a.image_encoder)
    gallery = Gallery.from_folder(a.gallery)
    cache = FeatureCache(a.cache or settings.cache_dir())
    if a.fit_vocabulary:
        if not hasattr(enc, "fit"):
            raise CirlabError(f"{a.image_encoder} learns nothing from images; --fit-vocabulary is for sift_bovw")
        enc = enc.fit(gallery.paths, cache.root, progress=not a.quiet, refit=True)
        print(f"visual vocabulary of {enc.k} words fitted on {len(gallery)} images: {enc.vocab_path}\n"
              f"use it with --image-encoder {enc.spec}")
    elif not getattr(enc, "fitted", True):
        raise CirlabError(f"{a.image_encoder} has no visual vocabulary yet: add --fit-vocabulary to learn one "
                          "from this folder, or name one with vocab=PATH")
    table, failed = image_table(cache, enc, gallery, tuple(a.views), not a.quiet)
    print(f"{len(table)} images encoded or read from the cache by {enc.id}; {len(failed)} unreadable")
    return 0


def _run_stage1(a: argparse.Namespace, flags_apply: bool):
    """``cirlab train --stage 1`` (or the first half of ``--stage both``)."""
    from cirlab.encoders.cache import FeatureCache
    from cirlab.training.stage1 import read_stage1_config, run_stage1

    override = dict(read_stage1_config(a.stage1_config)) if a.stage1_config else {}
    for key in ("tune", "image_blocks", "text_layers"):
        if getattr(a, key) is not None:
            override[key] = getattr(a, key)
    if flags_apply:
        override["train"] = {**override.get("train", {}),
                             **{k: getattr(a, k) for k in TRAIN_FLAGS if getattr(a, k) is not None}}
    out = a.out if a.stage == "1" else a.out / "stage1"
    res = run_stage1(a.data, out, FeatureCache(a.cache or settings.cache_dir()), a.image_encoder, a.text_encoder,
                     override, progress=not a.quiet, resume=a.resume and a.stage == "1", images=a.images)
    rec = "  ".join(f"R@{k} {v:.1f}" for k, v in res.val_recall.items())
    tasks = ", ".join(f"{k} {w:g}" for k, w in res.tasks.items())
    skipped = "".join(f"; skipped {k}: {why}" for k, why in res.skipped.items())
    align = ""
    for split, r in res.alignment.items():
        align += (f"\ncaption -> image recall, {split} images ({r['images']}): "
                  + "  ".join(f"R@{k} {r['before'][k]:.1f} -> {r['after'][k]:.1f}" for k in r["after"]))
    print(f"stage 1 ({len(res.train.history)} epochs, {res.seconds['total']:.0f} s: "
          f"{res.seconds['features']:.0f} s features, {res.seconds['train']:.0f} s training; tasks {tasks}{skipped}); "
          f"val {rec or '(no val split)'}{align}\nencoders: --image-encoder {res.image_spec} --text-encoder {res.text_spec}\n"
          f"stage-1 model: {out / 'stage1.pt'}; metrics: {out / 'stage1-metrics.jsonl'} and .png")
    return res


def cmd_train(a: argparse.Namespace) -> int:
    from cirlab.config import method_config
    from cirlab.encoders import build_image_encoder, build_text_encoder
    from cirlab.encoders.cache import FeatureCache
    from cirlab.eval.report import recall_table
    from cirlab.fusion import FeatureDims
    from cirlab.training.pseudo import PseudoConfig
    from cirlab.training.run import Workspace, train_method, views_needed
    from cirlab.training.trainer import TrainConfig

    if a.stage == "1":
        _run_stage1(a, flags_apply=True)
        return 0
    cfg = method_config(a.method, a.config)
    given = {k: getattr(a, k) for k in TRAIN_FLAGS if getattr(a, k) is not None}
    cfg["train"].update(given)
    if a.image_head:
        cfg["model"]["image_head"] = a.image_head
    TrainConfig.from_dict(cfg["train"])  # a bad value is a one-line error before any encoding
    pseudo_options = {k: getattr(a, k) for k in ("s_max", "eps_l", "eps_u", "alpha") if getattr(a, k) is not None}
    if a.pseudo_every is not None:
        pseudo_options["every"] = a.pseudo_every
    PseudoConfig.from_dict(pseudo_options)
    stage1 = a.stage1
    if a.stage == "both":
        stage1 = _run_stage1(a, flags_apply=False).out
    if stage1 is not None:
        info = Path(stage1) / "stage1.json"
        if not info.is_file():
            raise CirlabError(f"{stage1} holds no stage1.json; pass the folder 'cirlab train --stage 1' wrote")
        specs = json.loads(info.read_text())
        a.image_encoder, a.text_encoder = specs["image_spec"], specs["text_spec"]
    if a.augment and stage1 is None:
        raise CirlabError("--augment draws pseudo triplets with a stage-1 model: give --stage1 DIR or use --stage both")
    dims = FeatureDims.of(build_image_encoder(a.image_encoder), build_text_encoder(a.text_encoder))
    image_views, text_views = views_needed([cfg], dims)
    ws = Workspace.open(a.data, FeatureCache(a.cache or settings.cache_dir()), a.image_encoder, a.text_encoder,
                        image_views, text_views, progress=not a.quiet, images=a.images)
    out = a.out / "model.pt" if a.out.suffix != ".pt" else a.out
    out.parent.mkdir(parents=True, exist_ok=True)
    log = a.log or out.with_name(out.stem + "-metrics.jsonl")
    state = out.with_name(out.stem + "-state.pt")
    model, result, meta = train_method(ws, a.method, cfg, out=out, progress=not a.quiet, state_path=state,
                                       resume=a.resume, log_path=log, pseudo=stage1 if a.augment else None,
                                       pseudo_config=pseudo_options)
    resumed = f" (resumed after epoch {result.resumed_from})" if result.resumed_from else ""
    print(f"trained {a.method} on {result.triplets} triplets in {result.seconds:.1f} s{resumed}; best epoch "
          f"{result.best_epoch or len(result.history)}; saved {out}\nmetrics: {log} and {log.with_suffix('.png')}; "
          f"training state (for --resume): {state}")
    if "pseudo" in meta:
        ps = meta["pseudo"]
        print(f"pseudo triplets: {ps['made']} made, {ps['kept']} kept (s_max {ps['s_max']}, cosine in "
              f"[{ps['eps_l']}, {ps['eps_u']}], score > {ps['alpha']}); trained on them in epochs {result.pseudo_epochs}")
    if "test" in ws.triplets:
        print(recall_table({a.method: ws.evaluate(model, "test").recall}))
    return 0


TRAIN_FLAGS = ("epochs", "batch_size", "lr", "weight_decay", "optimizer", "schedule", "warmup_epochs", "step_at",
               "step_gamma", "grad_clip", "patience", "monitor", "seed")


def cmd_eval_benchmark(a: argparse.Namespace) -> int:
    from cirlab.api import Pipeline
    from cirlab.data import benchmarks as B
    import numpy as np

    from cirlab.eval.protocols import cirr_submission, evaluate_benchmark

    if a.annotations is None or a.images is None:
        raise CirlabError("--benchmark needs --annotations DIR (the published annotation folder) and --images DIR")
    pipe = Pipeline.load(a.model, a.cache)
    if a.benchmark == "fashioniq":
        cats = [a.category] if a.category else list(B.FASHIONIQ_CATEGORIES)
        splits = [B.load_fashioniq(a.annotations, a.images, c, a.split or "val", a.fiq_gallery, a.join, a.spelling)
                  for c in cats]
    elif a.benchmark == "cirr":
        splits = [B.load_cirr(a.annotations, a.images, a.split or "val")]
    elif a.benchmark == "fashion200k":
        splits = [B.load_fashion200k(a.annotations, a.images, a.split or "test")]
    else:
        splits = [B.load_shoes(a.annotations, a.images, a.spelling)]
    results = []
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    for sp in splits:
        print(sp.summary())
        if sp.missing:
            print(f"  missing image ids: {sp.write_missing(out / f'{sp.name}-missing.txt')}")
        results.append(evaluate_benchmark(pipe, sp, progress=not a.quiet))
    keys = list(dict.fromkeys(k for r in results for k in r.metrics))
    rows = [[r.name] + [f"{r.metrics[k]:.2f}" for k in keys] for r in results if r.metrics]
    if len(rows) > 1:
        rows.append(["average"] + [f"{np.mean([r.metrics[k] for r in results]):.2f}" for k in keys])
    if rows:
        print("| split | " + " | ".join(keys) + " |\n|---|" + "---:|" * len(keys))
        print("\n".join("| " + " | ".join(r) + " |" for r in rows))
    report = {"benchmark": a.benchmark, "model": pipe.identity, "protocol": [sp.protocol for sp in splits],
              "results": [r.to_dict() for r in results]}
    (out / f"{a.benchmark}.json").write_text(json.dumps(report, indent=1))
    print(f"wrote {out / (a.benchmark + '.json')}")
    _write_reports(a, out, a.benchmark, f"{a.benchmark} ({pipe.meta['method']})",
                   {r.name: r.curve for r in results if r.curve},
                   [(r.evaluated, r.ranked, r.scores, sp.paths) for r, sp in zip(results, splits)])
    if a.benchmark == "cirr" and (a.split or "val") == "test1":
        for p in cirr_submission(results[0], out):
            print(f"wrote {p}")
    return 0


def _write_reports(a: argparse.Namespace, out: Path, name: str, title: str, curves: dict, parts: list) -> None:
    """The Recall@K curve (PNG) and the page of example queries (HTML) of an evaluation."""
    from cirlab.eval.report import example_queries, recall_curve_png, write_query_grid

    if curves:
        print(f"wrote {recall_curve_png(out / f'{name}-recall.png', curves, f'Recall@K: {title}')}")
    if a.examples <= 0:
        return
    examples = [q for queries, ranked, scores, paths in parts if len(queries)
                for q in example_queries(queries, ranked, scores, paths, max(1, a.examples // len(parts)))]
    if examples:
        page = write_query_grid(out / f"{name}-examples.html", f"Example queries: {title}", examples,
                                "<p>Each query's reference and text, then its top 8 with scores; the ground truth is "
                                "boxed in green (and shown after the list when it was not retrieved).</p>")
        print(f"wrote {page}")


def cmd_eval(a: argparse.Namespace) -> int:
    if a.benchmark:
        return cmd_eval_benchmark(a)
    if a.data is None:
        raise CirlabError("give --data DIR (a cirlab data set) or --benchmark NAME with --annotations and --images")
    from cirlab.api import Pipeline
    from cirlab.data.features import image_table, text_table
    from cirlab.data.triplets import Dataset
    from cirlab.eval.metrics import recall_curve
    from cirlab.eval.report import recall_table
    from cirlab.training.run import Workspace

    pipe = Pipeline.load(a.model, a.cache)
    ds = Dataset(a.data)
    views = tuple(sorted(set(pipe.model.image_views) | set(pipe.model.gallery_views)))
    images, failed = image_table(pipe.cache, pipe.image_encoder, ds.gallery(), views)
    a.split = a.split or "test"
    triplets = {a.split: ds.triplets(a.split)}
    texts = text_table(pipe.cache, pipe.text_encoder, [t.text for t in triplets[a.split]], pipe.model.text_views)
    ws = Workspace(ds, pipe.cache, pipe.image_encoder, pipe.text_encoder, images, texts, triplets, failed)
    gallery_split = None if a.gallery == "all" else a.split
    ev = ws.evaluate(pipe.model, a.split, exclude_reference=False if a.keep_reference else None,
                     gallery_split=gallery_split)
    print(recall_table({pipe.meta["method"]: ev.recall}))
    if ev.map:
        print("  ".join(f"mAP@{k} {v:.1f}" for k, v in ev.map.items()) + "  (queries with several targets: CIRCO-style)")
    print(f"{len(ev.triplets)} queries over {len(ws.gallery_ids(gallery_split))} gallery images; "
          f"{ev.skipped} skipped (missing images); reference {'excluded' if ev.exclude_reference else 'kept'}")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    name = f"{ds.name}-{a.split}"
    report = {"data": ds.name, "split": a.split, "model": pipe.identity, "recall": ev.recall, "map": ev.map,
              "queries": len(ev.triplets), "skipped": ev.skipped, "exclude_reference": ev.exclude_reference,
              "protocol": ds.meta.get("protocol", {})}
    (out / f"{name}.json").write_text(json.dumps(report, indent=1))
    print(f"wrote {out / (name + '.json')}")
    every = ds.gallery()
    paths = dict(zip(every.ids, every.paths))
    _write_reports(a, out, name, f"{ds.name} {a.split} ({pipe.meta['method']})",
                   {a.split: recall_curve(ev.ids, [t.targets for t in ev.triplets], 50)},
                   [(ev.triplets, ev.ids, ev.scores, paths)])
    return 0


def _print_hits(a: argparse.Namespace, hits, model: str, skipped: int = 0) -> None:
    if a.json:
        print(json.dumps({"query": {"image": str(a.image) if a.image else None, "text": a.text}, "model": model,
                          "results": [h.__dict__ for h in hits], "skipped": skipped}))
    else:
        for h in hits:
            print(f"{h.rank:>3}  {h.score:.4f}  {h.path or h.id}")


def cmd_search(a: argparse.Namespace) -> int:
    from cirlab.api import Pipeline, check_text
    from cirlab.index import CombinedScoring, load_index

    check_text(a.text)
    if a.image is not None and not a.image.is_file():
        raise CirlabError(f"reference image {a.image} does not exist")
    pipe = Pipeline.load(a.model, a.cache)
    if a.index is not None:
        index, _ = load_index(a.index, pipe.model.embed_dim, pipe.identity)
        scoring = CombinedScoring.parse(a.scoring) if a.scoring else None
        hits = pipe.search_index(index, a.image, a.text, a.k, exclude_reference=a.exclude_reference, scoring=scoring)
        _print_hits(a, hits, pipe.meta["method"])
        return 0
    gallery = pipe.encode_gallery(a.gallery, progress=not a.json)
    if gallery.failed:
        log.warning("skipped %d unreadable gallery image(s), e.g. %s", len(gallery.failed), gallery.failed[0][1])
    hits = pipe.search(gallery, a.image, a.text, a.k, exclude_reference=a.exclude_reference)
    _print_hits(a, hits, pipe.meta["method"], len(gallery.failed))
    return 0


def cmd_index(a: argparse.Namespace) -> int:
    from cirlab.api import Pipeline
    from cirlab.data.triplets import Gallery
    from cirlab.index import read_manifest, save_index, update_index, verify_index

    if a.action in ("info", "verify"):
        problems = verify_index(a.dir)
        if a.action == "verify":
            print("\n".join(problems) if problems else f"{a.dir}: sound (every file matches its size and checksum)")
            return 1 if problems else 0
        manifest, version = read_manifest(a.dir)
        model = manifest.get("model", {})
        print(f"vectors    {manifest['count']}\ndimension  {manifest['dim']}\nbackend    {manifest['backend']}\n"
              f"metric     {manifest.get('metric', '?')}\nmodel      {model.get('fusion', '?')}\n"
              f"encoders   {model.get('image_encoder', '?')} + {model.get('text_encoder', '?')}\n"
              f"gallery    {model.get('gallery', '?')}\nversion    {version.name} (cirlab {manifest.get('cirlab_version')})\n"
              f"integrity  {'; '.join(problems) if problems else 'sound'}")
        return 1 if problems else 0
    if a.action == "remove":
        with update_index(a.dir) as index:
            removed = index.remove(a.ids)
        print(f"removed {removed} of {len(a.ids)} id(s); {len(index)} vectors remain")
        return 0
    pipe = Pipeline.load(a.model, a.cache)
    if a.action == "build":
        index, failed = pipe.index_gallery(Gallery.from_folder(a.gallery), a.backend, progress=not a.quiet)
        save_index(index, a.out, {**pipe.identity, "gallery": str(Path(a.gallery).resolve())})
        print(f"indexed {len(index)} images ({len(failed)} unreadable) with {index.spec} into {a.out}")
        return 0
    # add: files or folders; ids relative to the gallery the index was built from where possible
    manifest, _ = read_manifest(a.dir, pipe.model.embed_dim, pipe.identity)  # refused before encoding
    root = Path(manifest.get("model", {}).get("gallery") or ".")
    ids, paths = [], []
    for item in a.paths:
        item = Path(item)
        if not item.exists():
            raise CirlabError(f"{item} does not exist")
        for p in ([item] if item.is_file() else Gallery.from_folder(item).paths):
            p = p.resolve()
            ids.append(p.relative_to(root).with_suffix("").as_posix() if p.is_relative_to(root) else str(p))
            paths.append(p)
    vectors = pipe.encode_gallery(Gallery(ids, paths), progress=not a.quiet)  # before the lock: other writers go on
    with update_index(a.dir, pipe.model.embed_dim, pipe.identity) as index:  # applied to the live version
        before = len(index)
        index.add(vectors.ids, vectors.vectors, vectors.metadata())
    print(f"added {len(vectors.ids)} image(s) ({len(index) - before} new, {len(vectors.failed)} unreadable); "
          f"{len(index)} vectors")
    return 0


def cmd_methods(a: argparse.Namespace) -> int:
    from cirlab.config import method_config, variant_names
    from cirlab.fusion import FeatureDims, build_fusion, fusion_methods

    dims = FeatureDims(1280, 384, 1280, 49, 384, (3, 192))  # the default encoders' shapes
    if a.configs:
        for name in fusion_methods.names() + variant_names():
            print(json.dumps({"name": name, **method_config(name)}))
        return 0
    for name in fusion_methods.names():
        cfg = method_config(name)
        model = build_fusion(name, dims, **cfg["model"])
        print(f"{name:<12} {model.num_parameters():>11,}  {model.paper}")
    return 0


def cmd_bench(a: argparse.Namespace) -> int:
    import shlex

    from cirlab.encoders.cache import FeatureCache
    from cirlab.eval.bench import expand_methods, run_bench, save_bench

    methods = expand_methods(a.methods)
    result = run_bench(a.data, methods, a.seeds, FeatureCache(a.cache or settings.cache_dir()), a.image_encoder,
                       a.text_encoder, a.split, a.epochs, progress=not a.quiet,
                       log=lambda line: print(line, file=sys.stderr, flush=True), image_head=a.image_head,
                       retrieval=[x for x in (a.retrieval or "").split(";") if x])
    print(result.table())
    if result.edit_table():
        print("\nRecall@1 by edit type:\n" + result.edit_table(1))
        print("\nRecall@10 by edit type:\n" + result.edit_table())
    if result.carries_table():
        print("\nTop-1 results carrying the requested attribute (%):\n" + result.carries_table())
    if result.composition_table():
        print("\nRecall on seen and novel compositions:\n" + result.composition_table())
    if result.retrieval_table():
        print("\nRecall through other index backends:\n" + result.retrieval_table())
    name = a.name or f"{result.dataset}-{a.methods.replace(',', '+') if len(a.methods) < 40 else 'methods'}-{a.seeds}seeds"
    command = "cirlab " + " ".join(shlex.quote(x) for x in sys.argv[1:])
    path = save_bench(result, a.out, name, command)
    print(f"saved {path} and {path.with_suffix('.json')}", file=sys.stderr)
    return 0


def cmd_serve(a: argparse.Namespace) -> int:
    from cirlab.serve.app import serve

    if not 1 <= a.port <= 65535:
        raise CirlabError(f"--port must be between 1 and 65535, got {a.port}")
    if a.max_upload_mb <= 0:
        raise CirlabError(f"--max-upload-mb must be positive, got {a.max_upload_mb}")
    serve(str(a.index), a.model, a.host, a.port, a.max_upload_mb, a.cache)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cirlab", description="Composed image retrieval: a reference image plus a "
                                "modification text -> ranked gallery images. Train, evaluate and search.")
    p.add_argument("--version", action="version", version=f"cirlab {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    d = sub.add_parser("demo", help="build EmojiEdit, encode, train, evaluate, show example queries")
    d.add_argument("--data", type=Path, default=Path("data/emojiedit"), help="where the data set is built (default: %(default)s)")
    d.add_argument("--out", type=Path, default=Path("demo_out"), help="where the report goes (default: %(default)s)")
    d.add_argument("--seed", type=int, default=0, help="data set seed (default: %(default)s)")
    d.add_argument("--quiet", action="store_true", help="no progress bars")
    d.set_defaults(func=cmd_demo)

    d = sub.add_parser("data", help="build a data set")
    dsub = d.add_subparsers(dest="action", metavar="ACTION", required=True)
    m = dsub.add_parser("make", help="generate a data set into a folder")
    m.add_argument("name", help="emojiedit (Twemoji edits), css (TIRG-style scenes of shapes), or a public "
                                "benchmark made a cirlab data set from its files: fashioniq, shoes, fashion200k")
    m.add_argument("--out", type=Path, required=True, help="output folder")
    m.add_argument("--seed", type=int, default=0, help="split and phrasing seed (default: %(default)s)")
    m.add_argument("--size", type=int, default=4000, help="css: number of triplets, 70/10/20 train/val/test "
                                                          "(default: %(default)s)")
    m.add_argument("--config", default=None, metavar="NAME",
                   help="css: a named configuration instead of --size: small (2,800/400/800 triplets) or large "
                        "(16,000/1,000/8,000, a test gallery of over 10,000 scenes)")
    m.add_argument("--image-size", type=int, default=224, help="css: pixels of images/ (images64/ is always 64; "
                                                               "default: %(default)s)")
    m.add_argument("--annotations", type=Path, default=None, help="benchmarks: the annotation folder, as published")
    m.add_argument("--images", type=Path, default=None, help="benchmarks: the folder holding its images "
                                                             "(they are referenced, not copied)")
    m.add_argument("--category", action="append", choices=["dress", "shirt", "toptee"], default=None,
                   help="fashioniq: train on these categories (repeat; default: all three); each gets a val-<category> split")
    m.add_argument("--spelling", type=Path, default=None, help="fashioniq / shoes: a spelling-correction dictionary "
                                                               "(file, or DQU-CIR's folder for fashioniq)")
    m.add_argument("--captions", type=Path, default=None,
                   help="benchmarks: per-image captions (DQU-CIR's BLIP-2 files, a file or a folder) for the text "
                        "head and dqu; shoes reads captions_shoes.json and fashion200k its labels by default")
    m.set_defaults(func=cmd_data)

    def add_encoders(q: argparse.ArgumentParser) -> None:
        q.add_argument("--image-encoder", default="efficientnet_lite0",
                       help="image encoder: efficientnet_lite0 (default), efficientnet_lite2, clip:/path, hf:/path, "
                            "tuned:/stage1/image.pt (fine-tuned by stage 1)")
        q.add_argument("--text-encoder", default="minilm",
                       help="text encoder: minilm (default), clip:/path, hf:/path, tuned:/stage1/text.pt")

    def add_cache(q: argparse.ArgumentParser) -> None:
        q.add_argument("--cache", type=Path, default=None, help=f"feature cache folder (default: {settings.cache_dir()})")

    e = sub.add_parser("encode", help="encode a folder of images into the feature cache")
    e.add_argument("gallery", type=Path, help="folder of jpg/png/webp images")
    e.add_argument("--image-encoder", default="efficientnet_lite0", help="image encoder spec (default: %(default)s)")
    e.add_argument("--views", nargs="+", default=["pooled"], choices=["pooled", "tokens", "levels", "colour"],
                   help="views to cache: the pooled vector, region tokens, intermediate levels, colour statistics")
    e.add_argument("--fit-vocabulary", action="store_true",
                   help="sift_bovw: learn the visual vocabulary (k-means over SIFT descriptors) from this folder "
                        "first, then encode; prints the spec that names it")
    e.add_argument("--quiet", action="store_true", help="no progress bars")
    add_cache(e)
    e.set_defaults(func=cmd_encode)

    t = sub.add_parser("train", help="train a fusion method on a data set's train split")
    t.add_argument("--method", default="combiner", help="a registered method, see 'cirlab methods' (default: %(default)s)")
    t.add_argument("--data", type=Path, required=True,
                   help="dataset folder (with dataset.json; trains on 'train', picks the best epoch on 'val'), "
                        "or a triplet JSONL file (all of it is trained on); for --stage 1 also an image-caption "
                        'JSONL file ({"image": "path", "caption": "..."} lines; 10%% of the images held out)')
    t.add_argument("--images", type=Path, default=None,
                   help="with a JSONL --data: the image folder its ids are relative to (default: 'images' beside it)")
    t.add_argument("--config", type=Path, default=None, help="JSON file overriding the method's model/train options")
    t.add_argument("--image-head", default=None, metavar="SPEC",
                   help="how images are embedded on both sides (model.image_head): pooled (the pooled vector alone), "
                        "attnpool (attention pooling over the region map), grid[:cells=3], colour, or a sum such as "
                        "attnpool+colour (default: the method's config)")
    t.add_argument("--out", type=Path, required=True,
                   help="output folder (model.pt is written there) or a .pt path; beside it go <name>-metrics.jsonl "
                        "(every epoch's loss, learning rate and validation recall), <name>-metrics.png (their plot) "
                        "and <name>-state.pt (the training state --resume continues from)")
    o = t.add_argument_group("training options (each overrides the method's config, see 'cirlab methods --configs'; "
                             "with --stage 1 the train options of configs/stage1.json; with --stage both, stage 2's)")
    o.add_argument("--epochs", type=int, help="passes over the training triplets")
    o.add_argument("--batch-size", dest="batch_size", type=int,
                   help="triplets per step; the other targets of the batch are each query's negatives")
    o.add_argument("--lr", type=float, help="peak learning rate")
    o.add_argument("--weight-decay", dest="weight_decay", type=float, help="weight decay (AdamW: decoupled; Adam: L2)")
    o.add_argument("--optimizer", choices=["adamw", "adam"], help="optimiser")
    o.add_argument("--schedule", choices=["constant", "step", "cosine"],
                   help="learning-rate schedule per step: constant; step (x --step-gamma once --step-at of training "
                        "is done; paper 000 drops x0.1 at half); cosine (to zero at the end)")
    o.add_argument("--warmup-epochs", dest="warmup_epochs", type=float,
                   help="linear warm-up from ~0 to --lr over this many epochs (fractions allowed)")
    o.add_argument("--step-at", dest="step_at", type=float, help="step schedule: fraction of training where the rate drops")
    o.add_argument("--step-gamma", dest="step_gamma", type=float, help="step schedule: factor the rate drops by")
    o.add_argument("--grad-clip", dest="grad_clip", type=float, help="clip the gradient's global L2 norm (0: off)")
    o.add_argument("--patience", type=int,
                   help="early stopping: stop after this many epochs without a better validation score (0: off)")
    o.add_argument("--monitor", help="the validation score for the best epoch and early stopping, e.g. 'R@10' or "
                                     "'R@1+R@10' (the default)")
    o.add_argument("--seed", type=int, help="seed of the initial weights, the batch order and dropout")
    t.add_argument("--stage", choices=["1", "2", "both"], default="2",
                   help="1: fine-tune the encoders (paper 004's stage 1: sum fusion, batch classification loss at "
                        "logit scale 100) and write the tuned encoders to --out; 2 (default): train the fusion "
                        "--method on frozen encoders; both: stage 1 into OUT/stage1, then stage 2 on its encoders")
    s1 = t.add_argument_group("stage 1 (defaults: configs/stage1.json)")
    s1.add_argument("--tune", choices=["none", "text", "image", "both"],
                    help="which encoder adapts: none (only the projections train), text, image or both (default)")
    s1.add_argument("--image-blocks", dest="image_blocks", type=int,
                    help="fine-tune the last N MBConv blocks (+ head convolution) of EfficientNet-Lite (default 2)")
    s1.add_argument("--text-layers", dest="text_layers", type=int,
                    help="fine-tune the last N transformer layers of the text model (default 1)")
    s1.add_argument("--stage1-config", dest="stage1_config", default=None,
                    help="a preset (clip_cd: paper 004's composed objective, the default; caff: paper 001's domain "
                         "tasks, image-caption retrieval + attribute prediction + category similarity; align: "
                         "image-text alignment of the projections only) or a JSON file overriding "
                         "configs/stage1.json (tune, image_blocks, text_layers, embed_dim, head_lr_scale, tasks "
                         "{composed, retrieval, attributes, category: weights}, train)")
    s2 = t.add_argument_group("stage 2 on stage-1 encoders, and pseudo triplets (paper 004)")
    s2.add_argument("--stage1", type=Path, default=None,
                    help="a stage-1 folder: train on the encoders it tuned (sets --image-encoder/--text-encoder)")
    s2.add_argument("--augment", action="store_true",
                    help="add pseudo triplets: a reference or target replaced by a similar training image, kept "
                         "when the stage-1 model scores the pseudo query-target pair above --alpha")
    s2.add_argument("--s-max", dest="s_max", type=int, help="substitutes per image at most (default 4)")
    s2.add_argument("--eps-l", dest="eps_l", type=float, help="lowest cosine of a substitute (default 0.90)")
    s2.add_argument("--eps-u", dest="eps_u", type=float, help="highest cosine: closer is a near duplicate (default 0.995)")
    s2.add_argument("--alpha", type=float, help="the stage-1 score a pseudo triplet must exceed (default 0.6)")
    s2.add_argument("--pseudo-every", dest="pseudo_every", type=int,
                    help="real-triplet epochs before each pseudo-triplet epoch (default 3)")
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    t.add_argument("--resume", action="store_true",
                   help="continue from <name>-state.pt after its last finished epoch (same config and data; "
                        "--epochs may grow); the result equals an uninterrupted run")
    t.add_argument("--log", type=Path, default=None,
                   help="the metrics log (.csv for CSV, else JSON lines; default: <name>-metrics.jsonl beside --out)")
    add_encoders(t)
    add_cache(t)
    t.set_defaults(func=cmd_train)

    v = sub.add_parser("eval", help="Recall@K of a trained model on a data set split or a public benchmark")
    v.add_argument("--data", type=Path, default=None, help="dataset folder (with dataset.json)")
    v.add_argument("--split", default=None, help="split to evaluate (default: test; benchmarks: val)")
    v.add_argument("--benchmark", choices=["fashioniq", "cirr", "shoes", "fashion200k"], default=None,
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
                   help="where the JSON, the Recall@K curve (PNG), the example page (HTML) and CIRR test1 submissions go "
                        "(default: %(default)s)")
    v.add_argument("--examples", type=int, default=20,
                   help="queries drawn (seeded) for the example page; 0: no page (default: %(default)s)")
    v.add_argument("--quiet", action="store_true", help="no progress bars")
    v.add_argument("--gallery", choices=["split", "all"], default="split",
                   help="gallery: the split's images (default) or every image of the data set")
    v.add_argument("--keep-reference", action="store_true",
                   help="leave the reference image in its own ranking (default: as the data set's protocol says; "
                        "excluded unless it says otherwise)")
    _add_model(v)
    add_cache(v)
    v.set_defaults(func=cmd_eval)

    s = sub.add_parser("search", help="composed search over a folder of images or an index")
    where = s.add_mutually_exclusive_group(required=True)
    where.add_argument("--gallery", type=Path, help="folder of jpg/png/webp images (searched recursively)")
    where.add_argument("--index", type=Path, help="an index folder made by 'cirlab index build'")
    s.add_argument("--scoring", default=None,
                   help="with --index: paper 000's combined score, e.g. 'cosine=1,euclidean=0.5,hamming=0.2,l1=0,"
                        "candidates=100' (re-ranks the backend's candidates)")
    s.add_argument("--image", type=Path, default=None,
                   help="reference image (left out: a plain text-to-image search through the model's text head)")
    s.add_argument("--text", required=True, help='modification text, e.g. "make it red"')
    s.add_argument("-k", type=int, default=10, help="number of results (default: %(default)s)")
    s.add_argument("--exclude-reference", action="store_true", help="leave the reference image out of the results")
    s.add_argument("--json", action="store_true", help="print JSON for machines")
    _add_model(s)
    add_cache(s)
    s.set_defaults(func=cmd_search)

    ix = sub.add_parser("index", help="build, grow, shrink and describe a persistent index of a gallery")
    isub = ix.add_subparsers(dest="action", metavar="ACTION", required=True)
    ib = isub.add_parser("build", help="embed a folder of images with a model and index it")
    ib.add_argument("gallery", type=Path, help="folder of jpg/png/webp images (searched recursively)")
    ib.add_argument("--out", type=Path, required=True, help="index folder to write")
    ib.add_argument("--backend", default="exact",
                    help="exact (default), knn, kdtree, lsh[:bits=256,candidates=100], faiss:FACTORY[,nprobe=N,ef=N] "
                         "(e.g. faiss:HNSW32, faiss:IVF1024,PQ64), kmeans_svm[:k=15,probe=1]")
    ib.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_model(ib)
    add_cache(ib)
    ia = isub.add_parser("add", help="add images (files or folders) to an index")
    ia.add_argument("dir", type=Path, help="index folder")
    ia.add_argument("paths", nargs="+", type=Path, help="images or folders of images")
    ia.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_model(ia)
    add_cache(ia)
    ir = isub.add_parser("remove", help="remove images by id")
    ir.add_argument("dir", type=Path, help="index folder")
    ir.add_argument("ids", nargs="+", help="ids to remove (see 'cirlab search --index ... --json')")
    ii = isub.add_parser("info", help="number of vectors, dimension, backend, model, and an integrity check")
    ii.add_argument("dir", type=Path, help="index folder")
    iv = isub.add_parser("verify", help="check every file of the live version against the manifest's sizes and "
                                        "checksums; exit 1 if the index is damaged")
    iv.add_argument("dir", type=Path, help="index folder")
    ix.set_defaults(func=cmd_index)

    b = sub.add_parser("bench", help="train and evaluate several methods over seeds; a mean ± std table")
    b.add_argument("--data", type=Path, required=True, help="dataset folder (with dataset.json)")
    b.add_argument("--methods", default="all",
                   help="'all' (every registered method), 'ablations' (every variant and its base method), "
                        "or a comma list of methods and variants (default: %(default)s)")
    b.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per method (default: %(default)s)")
    b.add_argument("--epochs", type=int, default=None, help="override every method's epochs")
    b.add_argument("--image-head", default=None, metavar="SPEC",
                   help="the image head every method uses on both sides, e.g. attnpool, grid:cells=3, attnpool+colour "
                        "(default: each method's config; pooled = the pooled vector alone)")
    b.add_argument("--retrieval", default=None, metavar="SPECS",
                   help="also rank each trained model through these index backends, ';'-separated, e.g. "
                        "'exact;knn;kmeans_svm:k=15' (paper 003's KNN and K-means + SVM)")
    b.add_argument("--split", default="test", help="split to report (default: %(default)s)")
    b.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="where the table goes (default: %(default)s)")
    b.add_argument("--name", default=None, help="file name of the table, without suffix")
    b.add_argument("--quiet", action="store_true", help="no progress bars")
    add_encoders(b)
    add_cache(b)
    b.set_defaults(func=cmd_bench)

    sv = sub.add_parser("serve", help="the HTTP API and web page over an index (FastAPI + uvicorn)",
                        description="Serve composed search over an index: POST /search, GET /images/{id}, GET /gallery, "
                                    "GET /health, GET /info, /docs, and the page at /. POST /gallery and DELETE "
                                    "/gallery/{id} need the bearer token in $CIRLAB_API_TOKEN (unset: they are off).")
    sv.add_argument("--index", type=Path, required=True, help="an index folder made by 'cirlab index build'")
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s, this machine only)")
    sv.add_argument("--port", type=int, default=8000, help="port (default: %(default)s)")
    sv.add_argument("--max-upload-mb", type=float, default=10.0, help="largest upload in MB (default: %(default)s)")
    _add_model(sv)
    add_cache(sv)
    sv.set_defaults(func=cmd_serve)

    mth = sub.add_parser("methods", help="list the registered fusion methods: name, parameters (default encoders), paper")
    mth.add_argument("--configs", action="store_true", help="print every method's and ablation variant's full config (JSON lines)")
    mth.set_defaults(func=cmd_methods)
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="cirlab: warning: %(message)s")
    settings.offline()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except CirlabError as e:
        print(f"cirlab: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cirlab: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
