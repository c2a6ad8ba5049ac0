"""Inference runtimes: the encoders' networks exported to ONNX and run by ONNX Runtime or OpenVINO hold parity
with PyTorch, are exported once per encoder id, and a missing package is a one-line error."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from cirlab.encoders import build_image_encoder, build_text_encoder
from cirlab.devices import Placement, resolve_runtime
from cirlab.encoders.runtime import exported_path
from cirlab.errors import CirlabError
from conftest import make_images, make_tiny_clip

TEXTS = ["make it red", "change the skin tone to dark and make it face left", "a woman instead, and smaller",
         "the same but blue"]


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    return float(((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min())


@pytest.fixture(scope="module")
def real_images():
    from cirlab.data.emojiedit import collect_emoji
    from cirlab.images import load_image

    return [load_image(r["src"]) for r in collect_emoji()[:24:3]]


@pytest.mark.parametrize("runtime", ["onnx", "openvino"])
def test_runtime_parity_on_real_images_and_texts(runtime, real_images):
    """Every view of EfficientNet-Lite0 on Twemoji images and of MiniLM on modification texts: cosine >= 0.9995."""
    views = ("pooled", "tokens", "local", "levels")
    ref = build_image_encoder(placement=Placement.resolve("cpu", "torch")).encode_images(real_images, views)
    got = build_image_encoder(placement=Placement.resolve("cpu", runtime)).encode_images(real_images, views)
    for v in views:
        assert got[v].shape == ref[v].shape
        assert min_cosine(ref[v], got[v]) >= 0.9995, v
    tv = ("pooled", "tokens", "mask")
    ref_t = build_text_encoder(placement=Placement.resolve("cpu", "torch")).encode_texts(TEXTS, tv)
    got_t = build_text_encoder(placement=Placement.resolve("cpu", runtime)).encode_texts(TEXTS, tv)
    np.testing.assert_array_equal(ref_t["mask"], got_t["mask"])
    assert min_cosine(ref_t["pooled"], got_t["pooled"]) >= 0.9995
    assert min_cosine(ref_t["tokens"], got_t["tokens"]) >= 0.9995
    # the image batch varies (the graph's batch axis is dynamic) and one image alone gives the same vector
    one = build_image_encoder(placement=Placement.resolve("cpu", runtime)).encode_images(real_images[:1])["pooled"]
    np.testing.assert_allclose(one[0], got["pooled"][0], atol=1e-4)


def test_clip_and_hf_models_export_and_hold_parity(tmp_path):
    from transformers import BertConfig, BertModel, ResNetConfig, ResNetModel

    from conftest import tiny_tokenizer

    clip = make_tiny_clip(tmp_path / "clip")
    rn = tmp_path / "resnet"
    ResNetModel(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic")).save_pretrained(rn)
    bert = tmp_path / "bert"
    BertModel(BertConfig(vocab_size=tiny_tokenizer(bert), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32)).save_pretrained(bert)
    images = [Image.new("RGB", (40, 30), c) for c in ("blue", "red", "white")]
    for spec in (f"clip:{clip}", f"hf:{rn}"):
        views = ("pooled", "tokens", "levels")
        ref = build_image_encoder(spec, Placement.resolve("cpu", "torch")).encode_images(images, views)
        got = build_image_encoder(spec, Placement.resolve("cpu", "onnx")).encode_images(images, views)
        for v in views:
            assert min_cosine(ref[v], got[v]) >= 0.9995, (spec, v)
    texts = ["make it red", "a blue dress shorter"]
    for spec in (f"clip:{clip}", f"hf:{bert}"):
        ref = build_text_encoder(spec, Placement.resolve("cpu", "torch")).encode_texts(texts, ("pooled", "tokens"))
        got = build_text_encoder(spec, Placement.resolve("cpu", "onnx")).encode_texts(texts, ("pooled", "tokens"))
        assert min_cosine(ref["pooled"], got["pooled"]) >= 0.9995 and min_cosine(ref["tokens"], got["tokens"]) >= 0.9995


def test_an_exported_model_is_rebuilt_when_its_source_changes(tmp_path):
    """New weights in the folder give a new encoder id, so a new export whose outputs follow the new weights;
    an export cut short (no source.json) is rebuilt rather than run."""
    from transformers import ResNetConfig, ResNetModel

    folder = tmp_path / "resnet"
    config = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic")
    ResNetModel(config).save_pretrained(folder)
    images = [Image.new("RGB", (32, 32), "green"), Image.new("RGB", (32, 32), "purple")]
    first = build_image_encoder(f"hf:{folder}", Placement.resolve("cpu", "onnx"))
    before = first.encode_images(images)["pooled"]
    path = exported_path(first)
    assert path.is_file() and (path.parent / "source.json").is_file()

    import torch

    torch.manual_seed(7)
    ResNetModel(config).save_pretrained(folder)  # the source changes: other weights
    from cirlab.encoders.base import new_encoder

    second = new_encoder("image", f"hf:{folder}")
    second.runtime = "onnx"
    assert second.id != first.id and exported_path(second) != path
    after = second.encode_images(images)["pooled"]
    second.runtime = "torch"
    np.testing.assert_allclose(after, second.encode_images(images)["pooled"], atol=1e-4)
    assert not np.allclose(after, before, atol=1e-4)

    (exported_path(second).parent / "source.json").unlink()  # as if the export had been cut short
    second._runtime_sessions.clear()
    second.runtime = "onnx"
    np.testing.assert_allclose(second.encode_images(images)["pooled"], after, atol=1e-5)
    assert (exported_path(second).parent / "source.json").is_file()


def test_the_feature_cache_records_the_runtime(tmp_path):
    from cirlab.encoders.cache import FeatureCache

    paths = make_images(tmp_path / "g", n=3)
    cache = FeatureCache(tmp_path / "cache")
    cache.image_features(build_image_encoder(placement=Placement.resolve("cpu", "onnx")), paths, progress=False)
    store = cache.store(build_image_encoder(placement=Placement.resolve("cpu", "onnx")).id)
    assert {e["runtime"] for e in store.entries.values()} == {"onnx"}
    torch_encoder = build_image_encoder(placement=Placement.resolve("cpu", "torch"))
    again = FeatureCache(tmp_path / "cache").store(torch_encoder.id)  # read back from parquet
    assert {e["runtime"] for e in again.entries.values()} == {"onnx"}
    cache.text_features(build_text_encoder(placement=Placement.resolve("cpu", "torch")), ["make it red"], progress=False)
    assert cache.store(build_text_encoder().id).entries["make it red"]["runtime"] == "torch"


def test_a_missing_runtime_package_is_a_one_line_error_and_auto_falls_back(tmp_path):
    """A stand-in ``onnxruntime`` that fails to import, first on the path: the CLI names the extra in one line;
    ``auto`` runs PyTorch and says so."""
    blocker = tmp_path / "blocked" / "onnxruntime"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('onnxruntime blocked by the test')\n")
    env = {**os.environ, "PYTHONPATH": f"{blocker.parent}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    gallery = tmp_path / "gallery"
    make_images(gallery, n=2)
    r = subprocess.run([sys.executable, "-m", "cirlab.cli", "encode", str(gallery), "--runtime", "onnx", "--quiet",
                        "--cache", str(tmp_path / "c")], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0, r.stderr
    assert "the onnx runtime needs the package 'onnxruntime'" in r.stderr and "cirlab[runtime]" in r.stderr
    r = subprocess.run([sys.executable, "-m", "cirlab.cli", "encode", str(gallery), "--quiet",
                        "--cache", str(tmp_path / "c")], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "onnxruntime is not installed, so the encoders run in PyTorch" in r.stderr
    with pytest.raises(CirlabError, match="unknown runtime 'tensorrt'"):
        resolve_runtime("tensorrt")
