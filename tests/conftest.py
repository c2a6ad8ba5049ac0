"""Shared fixtures: an isolated CIRLAB_HOME, offline switches, small real images."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
# the encoders in fp32 on every CPU: `auto` may pick bf16 where the CPU has it (tests/test_precision.py names
# precisions itself), and the tests compare vectors across machines
os.environ.setdefault("CIRLAB_ENCODER_PRECISION", "fp32")
if os.environ.get("PYTEST_XDIST_WORKER"):  # several workers share the cores: one thread each (and their CLI runs)
    os.environ.setdefault("CIRLAB_THREADS", "1")
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pytest
from PIL import Image


def pytest_collection_modifyitems(config, items):
    """The heavy tests (marked ``slow``) first, each group in its own order: pytest-xdist hands tests out in this
    order, so the longest start at once instead of leaving one worker busy after the other has finished."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("CIRLAB_HOME", str(tmp_path_factory.getbasetemp() / "cirlab_home"))


@pytest.fixture(scope="session")
def image_encoder():
    from cirlab.encoders import build_image_encoder

    return build_image_encoder("efficientnet_lite0")


@pytest.fixture(scope="session")
def text_encoder():
    from cirlab.encoders import build_text_encoder

    return build_text_encoder("minilm")


def make_images(folder, n=4, size=48, seed=0):
    """``n`` small PNGs of differently coloured shapes; returns their paths."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        arr = np.full((size, size, 3), 255, np.uint8)
        c = rng.integers(0, 255, 3)
        a, b = sorted(rng.integers(0, size, 2))
        arr[a:b + 4, a:b + 4] = c
        p = folder / f"img{i}.png"
        Image.fromarray(arr).save(p)
        paths.append(p)
    return paths


@pytest.fixture
def small_gallery(tmp_path):
    return make_images(tmp_path / "gallery")


def make_dataset(folder, n=8, seed=0):
    """A tiny cirlab dataset on disk: ``n`` images with captions, and train/val/test triplets."""
    import json

    paths = make_images(folder / "images", n=n, seed=seed)
    ids = [p.stem for p in paths]
    split_of = {i: ("train" if k < n // 2 else "val" if k < 3 * n // 4 else "test") for k, i in enumerate(ids)}
    with open(folder / "images.jsonl", "w") as f:
        for k, (i, p) in enumerate(zip(ids, paths)):
            f.write(json.dumps({"id": i, "file": p.name, "split": split_of[i], "caption": f"shape number {k}"}) + "\n")
    splits = {}
    for split in ("train", "val", "test"):
        members = [i for i in ids if split_of[i] == split]
        lines = [json.dumps({"reference": a, "text": f"make it look like shape {b[-1]}", "targets": [b]})
                 for a in members for b in members if a != b]
        (folder / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
        splits[split] = f"{split}.jsonl"
    (folder / "dataset.json").write_text(json.dumps({"name": "tiny", "version": 1, "seed": seed, "images": "images",
                                                     "splits": splits}))
    return folder


def tiny_tokenizer(folder):
    """A 13-word BERT vocabulary (the pseudo-word ``$`` last) saved in ``folder``; returns its size."""
    from transformers import BertTokenizer

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "make", "it", "red", "blue", "a", "dress", "shorter", "$"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizer(str(folder / "vocab.txt")).save_pretrained(folder)
    return len(vocab)


def make_tiny_clip(folder):
    """A tiny randomly initialised CLIP (2 layers a tower, 32 px, 16-d joint space) saved in ``folder``."""
    from transformers import CLIPConfig, CLIPModel

    n = tiny_tokenizer(folder)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=n, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=32, eos_token_id=3, pad_token_id=0, bos_token_id=2),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16,
    )
    CLIPModel(cfg).save_pretrained(folder)
    return folder


from cirlab.serve.launch import free_port, start_server, stop_server  # noqa: E402,F401  (free_port: for the tests)

API_TOKEN = "test-token-7f3a"


@pytest.fixture(scope="session")
def served(tmp_path_factory):
    """A real ``cirlab serve`` (uvicorn on 127.0.0.1) over an index of a tiny captioned data set,
    with a model trained on it; gallery changes allowed with ``API_TOKEN``, uploads capped at 1 MB.
    Yields (base URL, index folder, data set folder, model path)."""
    from cirlab.api import Pipeline
    from cirlab.encoders.cache import FeatureCache
    from cirlab.experiment.workspace import Workspace, train_method
    from cirlab.index import save_index

    root = tmp_path_factory.mktemp("served")
    ds = make_dataset(root / "tiny", n=16)
    cache = root / "cache"
    ws = Workspace.open(ds, FeatureCache(cache), progress=False)
    train_method(ws, "sum", {"train": {"epochs": 3, "batch_size": 8}}, out=root / "sum.pt", progress=False)
    pipe = Pipeline.load(root / "sum.pt", cache)
    from cirlab.indexing import index_gallery
    index, _ = index_gallery(pipe, ds / "images", "exact", progress=False)
    for i, m in zip(index.ids, index.metadata):
        m["name"] = f"shape {i[3:]}"
    save_index(index, root / "index", pipe.identity)
    env = {**os.environ, "CIRLAB_API_TOKEN": API_TOKEN, "CIRLAB_HOME": str(root / "home")}
    proc, base = start_server(["--index", root / "index", "--model", root / "sum.pt", "--cache", cache,
                               "--max-upload-mb", "1"], env=env, log=root / "server.log")
    yield base, root / "index", ds, root / "sum.pt"
    stop_server(proc)
