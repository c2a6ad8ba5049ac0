"""``cirlab demo``: the whole system on EmojiEdit, end to end, in a few minutes on 2 CPU cores.

Builds the data set, encodes it once into the feature cache, tunes MiniLM's last layer (stage 1), trains every
baseline and the default method (``combiner``, on the tuned text layer), prints Recall@K on the test split
(held-out base emoji), runs three example composed queries and writes ``demo_out/index.html``. A second run
reuses the data, the cache and the models and takes seconds.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from cirlab import settings
from cirlab.config import method_config
from cirlab.data.emojiedit import build_emojiedit, mirror_splits
from cirlab.devices import Placement
from cirlab.encoders.cache import FeatureCache
from cirlab.eval.report import QueryResult, recall_table, recall_table_html, write_query_grid
from cirlab.experiment.workspace import Workspace, train_method
from cirlab.files import atomic_write_text
from cirlab.training.stage1 import run_stage1

DEMO_METHODS = ("image_only", "text_only", "sum", "combiner")
DEFAULT_METHOD = "combiner"
# Images are embedded from the pooled vector plus colour statistics (fusion.heads): the pooled vector
# alone loses skin tones (benchmarks/results/probes/representation-probe.md); text_only reads none.
# The baselines use 16 colour detectors instead of the head's 64 to keep the demo short on 2 cores (sum, seed 0,
# validation R@1 98.5 against 99.2, 30 s against 44 s of training).
DEMO_IMAGE_HEAD = "colour:bins=16"
# The default model is the combiner-mirror variant on its own head (64 colour detectors): it learns the facing
# edits from a text-gated mirror of the reference. It also reads its training texts in other wordings with the
# consistency loss. Both were chosen on the validation split by rules fixed beforehand
# (benchmarks/results/robustness/text-augment-select-emojiedit.md, .../default-head-select/README.md).
DEFAULT_VARIANT = "combiner-mirror"
# The demo's EmojiEdit adds mirror pairs (synthetic facing edits) to train and to val: training sees facing edits on
# every base, and the choice of the best epoch sees them too (the real val split has none). The test split is the
# plain build's (docs/datasets.md#mirror-pairs-synthetic-facing-edits).
DEMO_MIRROR_PAIRS = ["train", "val"]
TEXT_AUGMENT = "typos=0.05,frames=0.3,synonyms=0.3,relatives=0.3,order=0.3,drop=0.1,case=0.2"
DEFAULT_TEXT_TRAINING = {"text_consistency": 1.0, "text_augment": TEXT_AUGMENT}
# The default model reads texts through MiniLM with its last layer tuned by stage 1 on the same reworded texts
# (--tune text): frozen MiniLM does not read "complexion" as "skin tone" (docs/training.md, docs/demo.md).
DEFAULT_STAGE1 = {"tune": "text", "text_layers": 1, "train": {"text_augment": TEXT_AUGMENT}}
TWEMOJI_CREDIT = ("Emoji images: <a href='https://github.com/jdecked/twemoji'>Twemoji</a> "
                  "by Twitter/X and contributors, licensed CC-BY 4.0.")


def pick_examples(ws: Workspace, n: int = 3) -> list:
    """One test query of each of the first ``n`` edit types, fixed for the data set."""
    seen, out = set(), []
    for t in ws.triplets["test"]:
        edit = t.attributes.get("edit")
        if edit not in seen and t.reference in ws.images.row:
            seen.add(edit)
            out.append(t)
        if len(out) == n:
            break
    return out


def run_demo(data: str | Path = "data/emojiedit-demo", out: str | Path = "demo_out", seed: int = 0,
             progress: bool = True, placement: Placement | None = None) -> dict:
    """Build EmojiEdit (with mirror pairs in train and val) where it is missing, train the demo's methods on it
    (placed by ``placement``; None: the defaults'), evaluate them, make the best the default model and write a
    results page to ``out``."""
    t0 = time.perf_counter()
    data, out = Path(data), Path(out)
    if not (data / "dataset.json").is_file():
        print(f"building EmojiEdit into {data} ...")
        build_emojiedit(data, seed=seed, mirror_pairs=DEMO_MIRROR_PAIRS)
    cache = FeatureCache(settings.cache_dir())
    ws = Workspace.open(data, cache, image_views=("colour", "pooled"), progress=progress, placement=placement)
    counts = ws.dataset.meta["counts"]
    if mirror_splits(ws.dataset.meta.get("mirror_pairs", False)) != DEMO_MIRROR_PAIRS:
        print(f"note: {data} has no mirror pairs in val, so the best epoch is chosen without facing edits (the demo "
              f"builds its own with 'cirlab data make emojiedit --mirror-pairs train,val')")
    print(f"EmojiEdit: {sum(counts['images'].values())} images, "
          + ", ".join(f"{s} {sum(c.values())} triplets" for s, c in counts["triplets"].items()))
    models_dir = settings.home() / "models" / "emojiedit"
    tuned = run_stage1(ws.dataset, models_dir / "stage1-text", cache, ws.image_encoder.spec, ws.text_encoder.spec,
                       DEFAULT_STAGE1, progress=progress, placement=placement, reuse=True)
    default_ws = Workspace.open(ws.dataset, cache, ws.image_encoder.spec, tuned.text_spec, ("colour", "pooled"),
                                progress=progress, placement=placement)
    results, extra, evals, metas = {}, {}, {}, {}
    variant = method_config(DEFAULT_VARIANT)
    for method in DEMO_METHODS:
        head = {"model": {"image_head": DEMO_IMAGE_HEAD}} if method != "text_only" else None
        on = default_ws if method == DEFAULT_METHOD else ws
        if method == DEFAULT_METHOD:
            head = {"model": variant["model"], "train": {**variant["train"], **DEFAULT_TEXT_TRAINING}}
        model, tr, meta = train_method(on, method, head, out=models_dir / f"{method}.pt", progress=progress, reuse=True,
                                       text_head=method == DEFAULT_METHOD)  # only the default model's is used
        metas[method] = meta
        evals[method] = ev = on.evaluate(model, "test")
        results[method] = ev.recall
        info = meta["train"]
        extra[method] = {"params": f"{model.num_parameters():,}", "train s": f"{info['seconds']:.0f}",
                         "epoch": info.get("best_epoch", "")}
    default = settings.default_model_path()
    default.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(models_dir / f"{DEFAULT_METHOD}.pt", default)
    table = recall_table(results, extra=extra)
    print("\nRecall@K on the EmojiEdit test split (held-out base emoji, reference excluded; images embedded from "
          f"the pooled vector plus the '{DEMO_IMAGE_HEAD}' head, {DEFAULT_METHOD} plus the "
          f"'{variant['model']['image_head']}' head of {DEFAULT_VARIANT}, its texts read by MiniLM with the last layer "
          f"tuned by stage 1 ({tuned.seconds['total']:.0f} s)):\n")
    print(table)
    head = metas[DEFAULT_METHOD].get("text_head")
    if head and head.get("recall"):
        r = head["recall"]
        print(f"\nText-only search ({DEFAULT_METHOD}'s text head, {head['pairs']} training captions): "
              f"R@1 {r['1']:.1f}, R@10 {r['10']:.1f}, R@50 {r['50']:.1f} for the test images' own names "
              f"among the {len(ws.gallery_ids('test'))} test images")

    examples = pick_examples(ws)
    gallery_ids = ws.gallery_ids("test")
    path_of = {r["id"]: ws.dataset.image_dir / r["file"] for r in ws.dataset.images}
    ev = evals[DEFAULT_METHOD]
    by_query = {(t.reference, t.text): (ids, sc) for t, ids, sc in zip(ev.triplets, ev.ids, ev.scores)}
    queries = []
    print(f"\nExample composed queries ({DEFAULT_METHOD}, top 8 of {len(gallery_ids)} test images):")
    for t in examples:
        ids, scores = by_query[(t.reference, t.text)]
        rows = [(str(path_of[i]), float(s), i in t.targets) for i, s in zip(ids[:8], scores[:8])]
        queries.append(QueryResult(str(path_of[t.reference]), t.text, rows, [str(path_of[x]) for x in t.targets],
                                   title=f"{t.attributes.get('edit')} edit of {t.attributes.get('base', '').replace('_', ' ')}"))
        rank = next((n for n, i in enumerate(ids, 1) if i in t.targets), None)
        print(f"  {ws.dataset.by_id[t.reference]['caption']!r} + {t.text!r} -> "
              f"top-1 {ws.dataset.by_id[ids[0]]['caption']!r}; ground truth at rank {rank or '>50'}")
    intro = ("<p>Composed image retrieval on EmojiEdit's test split: a reference emoji plus a modification "
             "text; the top 8 results of the default method, ground truth boxed in green.</p>"
             "<h2>Recall@K on the test split</h2>" + recall_table_html(results, extra=extra))
    page = write_query_grid(out / "index.html", "cirlab demo: EmojiEdit", queries, intro, TWEMOJI_CREDIT)
    recalls = {m: {f"R@{k}": v for k, v in r.items()} for m, r in results.items()}
    atomic_write_text(out / "results.json", json.dumps(recalls, indent=2))
    print(f"\nwrote {page} and {out / 'results.json'}; default model: {default} ({time.perf_counter() - t0:.0f} s)")
    return results
