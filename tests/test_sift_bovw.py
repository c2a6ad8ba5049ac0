"""Paper 003's SIFT + bag of visual words encoder: fitting, determinism, identity, the histograms'
arithmetic on constructed images, keypoint-free images, and a model trained on it that serves."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from PIL import Image, ImageDraw

from conftest import make_dataset
from test_cli import assert_one_line_error, run

from cirlab.encoders import build_image_encoder
from cirlab.encoders.sift_bovw import PYRAMID, SiftBovwEncoder


def scenes(folder, n=24, seed=0, size=96):
    """``n`` constructed images: a few filled ellipses, rectangles and crosses in random places."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        im = Image.new("RGB", (size, size), "white")
        d = ImageDraw.Draw(im)
        for _ in range(int(rng.integers(3, 6))):
            x, y = rng.integers(4, size - 28, 2)
            w, h = rng.integers(8, 24, 2)
            colour = tuple(int(c) for c in rng.integers(0, 200, 3))
            kind = rng.integers(0, 3)
            if kind == 0:
                d.ellipse([x, y, x + w, y + h], fill=colour)
            elif kind == 1:
                d.rectangle([x, y, x + w, y + h], fill=colour)
            else:
                d.line([x, y, x + w, y + h], fill=colour, width=3)
                d.line([x + w, y, x, y + h], fill=colour, width=3)
        p = folder / f"scene{i:02d}.png"
        im.save(p)
        paths.append(p)
    return paths


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    root = tmp_path_factory.mktemp("sift")
    paths = scenes(root / "images")
    enc = SiftBovwEncoder(k=16).fit(paths, root / "cache")
    return enc, paths, root


def test_fit_is_deterministic_and_refit_on_other_images_changes_the_id(fitted, tmp_path):
    enc, paths, root = fitted
    assert enc.fitted and enc.vocab_path.parent == root / "cache" / "vocabularies"
    again = SiftBovwEncoder(k=16).fit(paths, tmp_path / "other-cache", refit=True)
    assert again.id == enc.id  # same images, same seed: the same vocabulary bytes
    np.testing.assert_array_equal(again.centroids, enc.centroids)
    reused = SiftBovwEncoder(k=16).fit(paths, root / "cache")
    assert reused.vocab_path == enc.vocab_path and reused.id == enc.id
    other = SiftBovwEncoder(k=16).fit(scenes(tmp_path / "more", seed=1), root / "cache")
    assert other.vocab_path != enc.vocab_path and other.id != enc.id
    assert not np.allclose(other.centroids, enc.centroids)
    asked = SiftBovwEncoder(k=16)
    asked.fit(paths, tmp_path / "third-cache", refit=True)
    assert not asked.fitted and asked.id.endswith(":unfitted")  # fit returns a new encoder; this one is unchanged


def test_encoding_is_deterministic_and_the_spec_rebuilds_the_encoder(fitted):
    enc, paths, _ = fitted
    images = [Image.open(p) for p in paths[:6]]
    a = enc.encode_images(images, ("pooled", "tokens", "colour"))
    rebuilt = build_image_encoder(enc.spec)
    assert rebuilt.id == enc.id
    b = rebuilt.encode_images(images, ("pooled", "tokens", "colour"))
    for view in a:
        np.testing.assert_array_equal(a[view], b[view])
    assert a["pooled"].shape == (6, 16) and a["tokens"].shape == (6, 32, 133)


def test_histogram_sums_and_norms_on_a_constructed_image(fitted):
    enc, paths, root = fitted
    image = Image.open(paths[3])
    geo, desc = enc.keypoints(image)
    assert len(desc) >= 4
    words = enc.words(desc)
    # tf-idf undone: the histogram counts each keypoint's word once, over the whole image
    pooled = enc.encode_images([image])["pooled"][0]
    assert np.linalg.norm(pooled) == pytest.approx(1.0, abs=1e-5)
    whole = enc.histograms(geo, words, 1)[0]
    counts = whole * len(words) / enc.idf
    np.testing.assert_allclose(counts, np.bincount(words, minlength=enc.k), atol=1e-4)
    assert counts.sum() == pytest.approx(len(desc), abs=1e-3)
    np.testing.assert_allclose(pooled, whole / np.linalg.norm(whole), atol=1e-6)
    # every pyramid level's cells add up to the whole-image histogram; levels carry their weights
    pyr = SiftBovwEncoder(k=16, pyramid=True, vocab=enc.vocab_path)
    vec = pyr.encode_images([image])["pooled"][0]
    assert vec.shape == (16 * 21,) and np.linalg.norm(vec) == pytest.approx(1.0, abs=1e-5)
    start, scale = 0, None
    for side, weight in PYRAMID:
        level = vec[start:start + side * side * 16].reshape(side * side, 16)
        start += side * side * 16
        level_sum = level.sum(0) / weight
        scale = scale or level_sum.sum() / whole.sum()
        np.testing.assert_allclose(level_sum, whole * scale, rtol=1e-4, atol=1e-6)
    # the grid tokens of paper 003's gating average to the pooled vector
    grid = SiftBovwEncoder(k=16, tokens="grid", vocab=enc.vocab_path)
    views = grid.encode_images([image], ("pooled", "tokens"))
    assert views["tokens"].shape == (1, 16, 16)
    np.testing.assert_allclose(views["tokens"][0].astype(np.float32).mean(0), views["pooled"][0], atol=2e-3)
    # keypoint tokens: unit descriptors, positions inside the image, strongest first
    tokens = enc.encode_images([image], ("tokens",))["tokens"][0].astype(np.float32)
    m = min(len(desc), 32)
    np.testing.assert_allclose(np.linalg.norm(tokens[:m, :128], axis=1), 1.0, atol=2e-3)
    assert ((tokens[:m, 128:130] >= 0) & (tokens[:m, 128:130] <= 1)).all()
    assert not tokens[m:].any()


def test_a_keypoint_free_image_gets_zeros_and_a_count_in_the_log(fitted, caplog):
    enc, _, _ = fitted
    flat = Image.new("RGB", (64, 64), (200, 120, 40))
    tiny = Image.new("RGB", (3, 2), "white")
    with caplog.at_level(logging.INFO, logger="cirlab"):
        out = enc.encode_images([flat, tiny], ("pooled", "tokens", "colour"))
    assert not out["pooled"].any() and not out["tokens"].any()
    assert out["colour"][0].any()  # the colour view still describes the flat image
    assert enc.no_keypoints >= 2
    assert any("2 of 2 images had no SIFT keypoint" in r.message for r in caplog.records)


def test_spec_errors_are_one_line(fitted):
    from cirlab.errors import CirlabError

    for spec, pattern in (("sift_bovw:k=1", "at least 2"), ("sift_bovw:tokens=dense", "tokens='dense'"),
                          ("sift_bovw:kk=3", "no option 'kk'"), ("sift_bovw:k=ten", "whole numbers"),
                          ("sift_bovw:vocab=/nowhere.npz", "no visual vocabulary at")):
        with pytest.raises(CirlabError, match=pattern):
            build_image_encoder(spec)
    with pytest.raises(CirlabError, match="no visual vocabulary yet"):
        SiftBovwEncoder(k=16).encode_images([Image.new("RGB", (32, 32))])
    with pytest.raises(CirlabError, match="fewer than k=4000"):
        SiftBovwEncoder(k=4000).fit(fitted[1][:2], fitted[2] / "cache")


@pytest.mark.slow
def test_cli_fits_a_vocabulary_and_trains_serves_on_it(tmp_path):
    """``encode --fit-vocabulary`` prints the spec; ``train`` fits its own vocabulary on the training
    images; the checkpoint names it, and an index built with the model answers a query."""
    gallery = tmp_path / "gallery"
    scenes(gallery, n=12)
    res = run("encode", gallery, "--image-encoder", "sift_bovw:k=8", "--quiet", home=tmp_path)
    assert_one_line_error(res, "add --fit-vocabulary")
    res = run("encode", gallery, "--image-encoder", "sift_bovw:k=8", "--fit-vocabulary", "--quiet", home=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "12 images encoded" in res.stdout and "--image-encoder sift_bovw:k=8,vocab=" in res.stdout

    data = make_dataset(tmp_path / "data", n=12)
    scenes(data / "images", n=12)  # richer pictures under the same file names as the data set's
    for i, p in enumerate(sorted((data / "images").glob("scene*.png"))):
        p.replace(data / "images" / f"img{i}.png")
    model = tmp_path / "model"
    res = run("train", "--method", "tirg_gate", "--data", data, "--image-encoder", "sift_bovw:k=8",
              "--epochs", "1", "--batch-size", "4", "--out", model, "--quiet", home=tmp_path)
    assert_one_line_error(res, "tokens=grid without pyramid")
    res = run("train", "--method", "sum", "--data", data, "--image-encoder", "sift_bovw:k=8,tokens=grid",
              "--epochs", "1", "--batch-size", "4", "--out", model, "--quiet", home=tmp_path)
    assert res.returncode == 0, res.stderr
    vocabularies = list((tmp_path / "features" / "vocabularies").glob("sift_bovw-k8@128-*.npz"))
    assert len(vocabularies) == 2  # encode's (all 12 gallery images) and train's (the training split)
    from cirlab.checkpoint import read_checkpoint

    spec = read_checkpoint(model / "model.pt")["meta"]["image_encoder"]["spec"]
    assert spec.startswith("sift_bovw:k=8,tokens=grid,vocab=") and spec.split("vocab=")[1] in map(str, vocabularies)
    index = tmp_path / "index"
    res = run("index", "build", data / "images", "--model", model / "model.pt", "--out", index, "--quiet", home=tmp_path)
    assert res.returncode == 0, res.stderr
    res = run("search", "--index", index, "--model", model / "model.pt", "--image", data / "images" / "img0.png",
              "--text", "make it look like shape 3", "-k", "3", "--json", home=tmp_path)
    assert res.returncode == 0, res.stderr
    hits = json.loads(res.stdout)
    assert len(hits["results"] if isinstance(hits, dict) else hits) == 3
