"""Index builds through shards: the local engine and Ray Data give the same vectors, a restarted build
resumes from its finished shards, the shards are what embedding-reader reads, and a missing Ray is one line."""

import json
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import make_images

from cirlab.errors import CirlabError
from cirlab.index import load_index


@pytest.fixture(scope="module")
def gallery(tmp_path_factory):
    folder = tmp_path_factory.mktemp("engines") / "gallery"
    make_images(folder, n=150, size=40, seed=5)
    (folder / "broken.png").write_bytes(b"not an image")
    return folder


def build(gallery, out, model, *extra):
    r = subprocess.run([sys.executable, "-m", "cirlab.cli", "index", "build", str(gallery), "--out", str(out), "--quiet",
                        "--model", str(model), "--shard-size", "32", *map(str, extra)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-1500:]
    return r.stdout


@pytest.mark.slow
def test_ray_and_local_engines_write_the_same_vectors_and_a_ray_build_resumes(gallery, served, tmp_path):
    model = served[3]
    out = build(gallery, tmp_path / "local", model)
    assert "indexed 150 images (1 unreadable)" in out and "unreadable: " in out and "broken.png" in out
    out = build(gallery, tmp_path / "ray", model, "--engine", "ray", "--workers", "2")
    assert "indexed 150 images (1 unreadable)" in out and "ray_start" in out
    local, _ = load_index(tmp_path / "local")
    ray, _ = load_index(tmp_path / "ray")
    assert local.ids == ray.ids and len(local.ids) == 150
    assert np.abs(np.asarray(local.vectors) - np.asarray(ray.vectors)).max() <= 1e-6
    assert local.metadata == ray.metadata
    # the shards are embedding-reader's layout: vectors and metadata rows in step, shard by shard
    emb = tmp_path / "ray" / "embeddings"
    first = np.load(emb / "img_emb" / "img_emb_00000.npy")
    meta = pq.read_table(emb / "metadata" / "metadata_00000.parquet").to_pydict()
    assert first.shape == (31, local.dim) and meta["id"] == ray.ids[:31]  # broken.png sorts first, into shard 0
    assert np.allclose(first, np.asarray(ray.vectors[:31]))
    failed = [x for f in sorted((emb / "failed").glob("*.json")) for x in json.loads(f.read_text())]
    assert len(failed) == 1 and failed[0][0].endswith("broken.png")
    # a build that stopped after some shards: the next run embeds only the missing ones
    (emb / "img_emb" / "img_emb_00002.npy").unlink()
    (emb / "img_emb" / "img_emb_00004.npy").unlink()
    out = build(gallery, tmp_path / "ray", model, "--engine", "ray", "--workers", "1")
    missing = 32 + (151 - 4 * 32)  # shard 2, and shard 4 (the last: 23 images)
    assert f"resumed: {151 - missing} images were already in" in out
    again, _ = load_index(tmp_path / "ray")
    assert again.ids == ray.ids and np.abs(np.asarray(again.vectors) - np.asarray(ray.vectors)).max() <= 1e-6


@pytest.mark.slow  # 32 s of index builds: in make test, not make test-fast
def test_a_local_build_resumes_and_a_changed_build_starts_over(gallery, served, tmp_path):
    model = served[3]
    build(gallery, tmp_path / "ix", model)
    before, _ = load_index(tmp_path / "ix")
    emb = tmp_path / "ix" / "embeddings"
    (emb / "img_emb" / "img_emb_00001.npy").unlink()
    assert "resumed: 119 images were already in" in build(gallery, tmp_path / "ix", model)
    after, _ = load_index(tmp_path / "ix")
    assert after.ids == before.ids and np.array_equal(np.asarray(after.vectors), np.asarray(before.vectors))
    (emb / "img_emb" / "img_emb_notes.npy").write_bytes(b"a user's file among the shards\n")
    r = subprocess.run([sys.executable, "-m", "cirlab.cli", "index", "build", str(gallery), "--out", str(tmp_path / "ix"),
                        "--quiet", "--model", str(model), "--shard-size", "100"], capture_output=True, text=True)
    assert r.returncode == 0 and "resumed" not in r.stdout  # another shard size: a new build
    assert len(list((emb / "img_emb").glob("img_emb_0*.npy"))) == 2  # the old shards went, the user's file did not
    assert (emb / "img_emb" / "img_emb_notes.npy").read_bytes() == b"a user's file among the shards\n"


def test_a_missing_ray_is_one_line_naming_the_extra(monkeypatch):
    from cirlab.indexing import ray_init

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(CirlabError, match=r"cirlab\[ray\]"):
        ray_init(None, 1)


@pytest.mark.parametrize("address,message", [("127.0.0.1:{port}", "no Ray cluster answers at"),
                                             ("ray://127.0.0.1:{port}", "no Ray cluster answers at"),
                                             ("nowhere", "give HOST:PORT")])
def test_an_unreachable_ray_address_is_one_line_within_seconds(address, message):
    import time

    from conftest import free_port

    from cirlab.indexing import ray_init

    start = time.perf_counter()
    with pytest.raises(CirlabError, match=message) as e:
        ray_init(address.format(port=free_port()), 2)
    assert "\n" not in str(e.value) and time.perf_counter() - start < 30


@pytest.mark.parametrize("args,message", [(["--engine", "spark"], "invalid choice"),
                                          (["--workers", "2"], "--address and --workers are for --engine ray"),
                                          (["--shard-size", "0"], "--shard-size must be at least 1")])
def test_bad_engine_arguments_are_one_line(args, message, gallery, served, tmp_path):
    r = subprocess.run([sys.executable, "-m", "cirlab.cli", "index", "build", str(gallery), "--out", str(tmp_path / "x"),
                        "--model", str(served[3]), *args], capture_output=True, text=True)
    assert r.returncode != 0 and message in r.stderr and "Traceback" not in r.stderr
