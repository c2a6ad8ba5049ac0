"""Every method through the shared paths: checkpoints, DQU's unification, the CLI's train/eval/bench."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from cirlab.checkpoint import load_checkpoint, save_checkpoint
from cirlab.config import method_config
from cirlab.encoders.cache import FeatureCache
from cirlab.fusion import FeatureDims, build_fusion, fusion_methods, learned_methods, zero_shot_methods
from cirlab.fusion.dqu import draw_keywords, keywords, unified_text
from cirlab.experiment.workspace import Workspace, train_method, views_needed
from conftest import make_dataset, make_images


def _views(dims, b, seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(b, dims.image_tokens, dims.image_token, generator=g).abs()
    image = {"pooled": tokens.mean(1), "tokens": tokens, "levels": torch.randn(b, *dims.levels, generator=g)}
    text = {"pooled": torch.randn(b, dims.text, generator=g), "tokens": torch.randn(b, 5, dims.text_token, generator=g),
            "mask": torch.ones(b, 5, dtype=torch.bool)}
    return image, text


@pytest.mark.parametrize("name", learned_methods())  # zero-shot ones: tests/test_zero_shot.py
def test_checkpoint_round_trip_for_every_method(name, image_encoder, text_encoder, tmp_path):
    dims = FeatureDims.of(image_encoder, text_encoder)
    cfg = method_config(name)
    torch.manual_seed(0)
    model = build_fusion(name, dims, **cfg["model"])
    if name == "dqu":  # the captioner travels inside the checkpoint
        rng = np.random.default_rng(0)
        model.fit_captioner(rng.normal(size=(5, dims.image)), rng.normal(size=(5, dims.text)), [f"p{i}" for i in range(5)],
                            rng.normal(size=(5, dims.text)))
    with torch.no_grad():  # move every parameter off its initial value, so a silent re-init would show
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    model.eval()
    path = save_checkpoint(tmp_path / "m.pt", model, cfg["model"], cfg["train"], image_encoder, text_encoder)
    loaded, meta = load_checkpoint(path, image_encoder, text_encoder)
    ref, txt = _views(dims, 3)
    assert meta["method"] == name and meta["dims"]["image"] == dims.image
    assert torch.equal(loaded.compose(ref, txt), model.compose(ref, txt))
    assert torch.equal(loaded.embed_gallery(ref), model.embed_gallery(ref))
    if name == "dqu":
        assert loaded.vocabulary == model.vocabulary and len(loaded.vocabulary) == 5
    # and it answers a composed query through the public API (reference views read through the cache)
    from cirlab.api import Pipeline

    pipe = Pipeline(loaded, meta, image_encoder, text_encoder, FeatureCache(tmp_path / "cache"))
    paths = make_images(tmp_path / "gallery", n=4)
    gallery = pipe.encode_gallery(tmp_path / "gallery", progress=False)
    hits = pipe.search(gallery, paths[1], "make it larger and blue", k=3, exclude_reference=True)
    assert len(hits) == 3 and all(h.path != str(paths[1]) for h in hits)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_keyword_extraction_removes_function_words():
    assert keywords("make it red and shorter") == "red shorter"
    assert keywords("Change the hair to blonde, please") == "hair blonde"
    assert keywords("is a woman instead of a man") == "woman man"
    assert keywords("has no strap") == "no strap"  # negation is content
    assert keywords("make it") == "make it"  # nothing left: keep the words rather than draw nothing
    assert keywords("") == ""
    assert unified_text("a red dress.", " make it blue") == "a red dress, but make it blue"


def test_drawing_writes_the_keywords_in_a_band_and_leaves_the_rest():
    base = Image.new("RGB", (100, 60), (30, 120, 200))
    plain = np.asarray(draw_keywords(base, "", 224)).astype(int)
    drawn = np.asarray(draw_keywords(base, "red hair", 224)).astype(int)
    assert drawn.shape == (224, 224, 3)
    changed = np.abs(drawn - plain).sum(axis=2) > 0
    rows = np.nonzero(changed.any(axis=1))[0]
    assert rows.min() > 224 // 2  # only the lower band changes
    band = drawn[rows.min():]
    assert (band.sum(axis=2) < 100).sum() > 50  # dark text pixels were drawn
    assert (band.sum(axis=2) > 700).sum() > 50  # on a white band
    longer = np.asarray(draw_keywords(base, "red hair and a long blue coat with silver buttons", 224)).astype(int)
    assert (np.abs(longer - plain).sum(axis=2) > 0).any(axis=1).sum() > len(rows)  # long keywords wrap


def test_retrieval_captioner_finds_the_caption_of_a_mapped_image():
    rng = np.random.default_rng(0)
    dims = FeatureDims(image=24, text=16)
    model = build_fusion("dqu", dims, embed_dim=8)
    phrases = [f"phrase {i}" for i in range(6)]
    text_vecs = rng.normal(size=(6, 16))
    mapping = rng.normal(size=(16, 24))
    images = np.repeat(text_vecs, 5, axis=0) @ mapping + 0.05 * rng.normal(size=(30, 24))
    model.fit_captioner(images, np.repeat(text_vecs, 5, axis=0), phrases, text_vecs)
    probe = text_vecs[[3, 0, 5]] @ mapping
    assert model.caption(probe) == ["phrase 3", "phrase 0", "phrase 5"]


def test_dqu_trains_on_unified_queries_and_caches_the_drawn_references(tmp_path):
    ds = make_dataset(tmp_path / "tiny")
    cache = FeatureCache(tmp_path / "cache")
    ws = Workspace.open(ds, cache, progress=False)
    model, result, _ = train_method(ws, "dqu", {"train": {"epochs": 2, "batch_size": 4}}, out=tmp_path / "dqu.pt",
                                    progress=False)
    assert result.triplets == 12 and len(model.vocabulary) == 4  # the captioner was fitted on the 4 train captions
    queries = ws.queries(model)
    key = queries.key("img4", "make it look like shape 5")
    assert key[1] == "shape number 4, but make it look like shape 5"  # the caption from the metadata
    assert key[0].endswith("\tshape 5")  # the drawn reference, keyed by (image content, keywords)
    drawn_store = [p for p in (tmp_path / "cache").iterdir() if "drawn" in p.name]
    assert len(drawn_store) == 1
    before = sorted(p.name for p in drawn_store[0].iterdir())
    ws2 = Workspace.open(ds, cache, progress=False)  # a fresh workspace reads them back, encodes nothing
    ws2.queries(model)
    assert sorted(p.name for p in drawn_store[0].iterdir()) == before
    ev = ws.evaluate(model, "test", audit=True)
    assert len(ev.triplets) == 2 and set(ev.recall) == {1, 5, 10, 50}
    # the audit's text alone is the plain text with the blank unified reference, not the unified text (which
    # carries the reference's caption)
    from cirlab.eval.audit import blank_queries

    blank = blank_queries(model, queries, ws.triplets["test"], None, ws.texts)
    assert {k[1] for k in blank.keys.values()} == {t.text for t in ws.triplets["test"]}
    assert len(ev.audit.per_query()) == 2

    from cirlab.api import Pipeline

    pipe = Pipeline.load(tmp_path / "dqu.pt", tmp_path / "cache")
    gallery = pipe.encode_gallery(ds / "images", progress=False)
    hits = pipe.search(gallery, ds / "images" / "img0.png", "make it look like shape 3", k=3)
    assert len(hits) == 3 and hits[0].score >= hits[-1].score


def test_views_needed_is_the_union_of_the_methods(image_encoder, text_encoder):
    dims = FeatureDims.of(image_encoder, text_encoder)
    image, text = views_needed([method_config("sum"), method_config("mffm"), method_config("tirg_gate")], dims)
    assert image == ("levels", "pooled", "tokens") and text == ("mask", "pooled", "tokens")
    assert views_needed([method_config("combiner")], dims) == (("pooled",), ("pooled",))


def _cli(*args, home):
    env = {"CIRLAB_HOME": str(home), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-m", "cirlab.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=600)


def test_cli_methods_lists_every_method_with_parameters(tmp_path):
    res = _cli("methods", home=tmp_path)
    assert res.returncode == 0
    lines = res.stdout.strip().splitlines()
    assert [ln.split()[0] for ln in lines] == fusion_methods.names()
    for ln in lines:
        if ln.split()[0] in zero_shot_methods():  # no triplet: no parameter, or a pseudo-word's mapping
            learns = ln.split()[0] in ("pic2word", "lincir")
            assert (int(ln.split()[1].replace(",", "")) > 0) == learns and "zero-shot" in ln
            continue
        assert int(ln.split()[1].replace(",", "")) > 0 and "paper" in ln or "baseline" in ln or "TIRG" in ln
    configs = [json.loads(x) for x in _cli("methods", "--configs", home=tmp_path).stdout.splitlines()]
    names = {c["name"] for c in configs}
    assert {"mffm-L2", "mffm-H1", "mffm-X0", "clip_cd-nobilinear", "caff-iggf", "caff-tggf", "dqu-visual"} <= names


@pytest.mark.slow
def test_cli_train_eval_and_bench_on_a_tiny_dataset(tmp_path):
    ds = make_dataset(tmp_path / "tiny")
    cfg = tmp_path / "short.json"
    cfg.write_text(json.dumps({"model": {"layers": 1}, "train": {"epochs": 1, "batch_size": 4}}))
    res = _cli("train", "--method", "mffm", "--data", ds, "--config", cfg, "--out", tmp_path / "run", home=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "trained mffm on 12 triplets" in res.stdout and "| mffm |" in res.stdout
    res = _cli("eval", "--data", ds, "--model", tmp_path / "run" / "model.pt", "--out", tmp_path / "eval", home=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "2 queries over 2 gallery images" in res.stdout
    assert json.loads((tmp_path / "eval" / "tiny-test.json").read_text())["queries"] == 2
    res = _cli("bench", "--data", ds, "--methods", "sum,caff-tggf", "--seeds", "2", "--epochs", "1", "--quiet",
               "--retrieval", "exact;knn", "--extra-splits", "val", "--out", tmp_path / "results", "--name", "tiny",
               home=tmp_path)
    assert res.returncode == 0, res.stderr
    table = (tmp_path / "results" / "tiny.md").read_text()
    assert "--methods sum,caff-tggf --seeds 2" in table
    assert "| sum |" in table and "| caff-tggf |" in table and " ± " in table
    runs = json.loads((tmp_path / "results" / "tiny.json").read_text())["runs"]
    assert [(r["name"], r["seed"]) for r in runs] == [("sum", 0), ("sum", 1), ("caff-tggf", 0), ("caff-tggf", 1)]
    assert "| method | exact R@1 | exact R@10 | knn R@1 | knn R@10 |" in table
    for r in runs:  # Euclidean KNN over unit vectors ranks as cosine does
        assert r["by_retrieval"]["knn R@1"] == r["by_retrieval"]["exact R@1"] == r["recall"]["1"]
    assert "| method | val R@1 | val R@10 |" in table  # the same models on another split
    assert all(r["by_split"]["val R@10"] == 100.0 for r in runs)  # 2 val images: the target is always within 10
    res = _cli("bench", "--data", ds, "--methods", "sum", "--extra-splits", "dev", home=tmp_path)
    assert res.returncode == 2 and "has no split 'dev'" in res.stderr
    res = _cli("bench", "--data", ds, "--methods", "sum,nonsense", home=tmp_path)
    assert res.returncode == 2 and "unknown method or variant 'nonsense'" in res.stderr
    res = _cli("bench", "--data", ds, "--methods", "sum", "--measure", "splits,nonsense", home=tmp_path)
    assert res.returncode == 2 and "unknown measurement 'nonsense'; choose one of: audit, composition" in res.stderr
    res = _cli("bench", "--data", ds, "--methods", "sum", "--measure", "rerank", home=tmp_path)
    assert res.returncode == 2 and "--measure rerank needs the second model: --rerank" in res.stderr


def test_bench_help_names_every_measurement_a_user_can_ask_for():
    """``--measure``'s help lists the measurements by hand (building the parser imports no model code): it must name
    every registered one that is not always run."""
    from cirlab.cli import build_parser
    from cirlab.experiment.measures import measure_names, measurements

    bench = build_parser()._subparsers._group_actions[0].choices["bench"]
    text = next(a.help for a in bench._actions if "--measure" in a.option_strings)
    optional = [n for n in measure_names() if not measurements.get(n).default]
    assert optional and all(n in text for n in optional)


def test_train_from_a_triplet_file_and_an_image_folder(tmp_path):
    ds = make_dataset(tmp_path / "tiny")
    lines = (ds / "train.jsonl").read_text()
    (tmp_path / "mine.jsonl").write_text(lines)
    res = _cli("train", "--method", "tirg", "--data", tmp_path / "mine.jsonl", "--images", ds / "images",
               "--config", ds / "dataset.json", "--out", tmp_path / "m.pt", home=tmp_path)
    assert res.returncode == 2 and "unknown key(s) ['images', 'name'" in res.stderr  # not a config: refused in one line
    assert "Traceback" not in res.stderr
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"train": {"epochs": 1, "batch_size": 4}}))
    res = _cli("train", "--method", "tirg", "--data", tmp_path / "mine.jsonl", "--images", ds / "images",
               "--config", cfg, "--out", tmp_path / "m.pt", home=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "trained tirg on 12 triplets" in res.stdout and (tmp_path / "m.pt").is_file()
    res = _cli("train", "--method", "tirg", "--data", tmp_path / "absent.jsonl", "--out", tmp_path / "x.pt", home=tmp_path)
    assert res.returncode == 2 and "absent.jsonl does not exist" in res.stderr


def test_recall_by_edit_type_counts_hits_per_group():
    from cirlab.data.triplets import Triplet
    from cirlab.experiment.measures.edits import recall_by
    from cirlab.eval.evaluate import Rankings

    trip = [Triplet("a", "t", ["x"], {"edit": "tone"}), Triplet("b", "t", ["y"], {"edit": "tone"}),
            Triplet("c", "t", ["z"], {"edit": "facing"}), Triplet("d", "t", ["w"], {})]
    ids = [["x", "q"], ["q"] * 10 + ["y"], ["z"], ["w"]]  # b's target is at rank 11: a miss at 10
    ev = Rankings(trip, ids, np.zeros((4, 1)), {}, 0)
    assert recall_by(ev, "edit") == {"facing": 100.0, "tone": 50.0}


def test_a_training_run_does_not_depend_on_what_ran_before_it(tmp_path):
    """The seed fixes the initial weights as well as the batches: a bench's second method gets the
    same model whether or not another one was trained first in the process."""
    ds = make_dataset(tmp_path / "tiny")
    ws = Workspace.open(ds, FeatureCache(tmp_path / "cache"), progress=False)
    cfg = {"train": {"epochs": 2, "batch_size": 4, "seed": 5}}
    first, _, _ = train_method(ws, "tirg", cfg, progress=False)
    torch.manual_seed(123)
    torch.randn(1000)  # disturb the global generator, as training another method would
    train_method(ws, "combiner", {"train": {"epochs": 1, "batch_size": 4}}, progress=False)
    second, _, _ = train_method(ws, "tirg", cfg, progress=False)
    for (k, a), b in zip(first.state_dict().items(), second.state_dict().values()):
        assert torch.equal(a, b), k
