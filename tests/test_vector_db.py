"""Metadata filters (one meaning on every backend), the qdrant backend (Qdrant Edge, Qdrant's engine embedded, in a
folder of its own and on disk: add, remove, search, persistence, reuse of a shard that still holds the rows; the
client's local mode for the client calls of the url= path), per-image
metadata attached at index build, and filters through the CLI and the HTTP API."""

import csv
import os
import json
import subprocess
import sys

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cirlab.errors import CirlabError
from cirlab.index import build_index, check_filter, load_index, save_index
from cirlab.index.metadata import attach, read_metadata
from conftest import make_dataset, start_server, stop_server

FAMILIES = ["person", "thing", "colour"]


def unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def rows():
    rng = np.random.default_rng(3)
    vectors = unit(rng.normal(size=(400, 24)))
    ids = [f"im{i}" for i in range(400)]
    meta = [{"family": FAMILIES[i % 3], "tags": ["red", "round"] if i % 2 else ["blue"], "size": i % 5,
             "flag": i % 4 == 0} for i in range(400)]
    return ids, vectors, meta, unit(rng.normal(size=(6, 24)))


def reference(ids, vectors, meta, queries, k, where):
    """The filter's meaning, written out: the exact top-k of the rows that match every field."""
    def match(m):
        for field, values in where.items():
            values = values if isinstance(values, list) else [values]
            got = m.get(field)
            got = got if isinstance(got, list) else [got]
            if not any(type(g) is type(v) and g == v for g in got for v in values):
                return False
        return True
    keep = [r for r, m in enumerate(meta) if match(m)]
    order = np.argsort(-(queries @ vectors[keep].T), axis=1, kind="stable")[:, :k]
    return [[ids[keep[j]] for j in row] for row in order]


FILTERS = [{"family": "colour"}, {"family": ["person", "thing"], "tags": "red"}, {"size": 3}, {"flag": True},
           {"size": [1, 2], "family": "person", "tags": ["blue", "green"]}, {"family": "nobody"}]
SPECS = ["exact", "knn", "kdtree", "faiss:Flat", "faiss:HNSW16", "lsh:bits=64,candidates=20", "kmeans_svm:k=4,probe=1",
         "qdrant", "qdrant:acorn=0", "qdrant:m=0", "qdrant:path={tmp}/db", "qdrant:local=1"]


@pytest.mark.parametrize("spec", SPECS)
def test_a_filter_gives_the_same_results_on_every_backend(spec, rows, tmp_path):
    ids, vectors, meta, queries = rows
    index = build_index(spec.format(tmp=tmp_path), 24)
    index.add(ids, vectors, meta)
    for where in FILTERS:
        found, scores = index.search(queries, 7, where)
        assert found == reference(ids, vectors, meta, queries, 7, where), (spec, where)
        assert np.all(np.diff(scores, axis=1) <= 1e-6)
    index.remove([i for i in ids if int(i[2:]) % 3 == 2])  # the colour rows go
    assert index.search(queries, 5, {"family": "colour"})[0] == [[] for _ in queries]
    assert all(len(r) == 5 for r in index.search(queries, 5, {"family": "thing"})[0])


@pytest.mark.parametrize("bad", [["family"], {"family": 1.5}, {"family": []}, {"": "x"}, {"family": {"a": 1}}])
def test_a_malformed_filter_is_refused_in_one_line(bad, rows):
    ids, vectors, meta, queries = rows
    index = build_index("exact", 24)
    index.add(ids, vectors, meta)
    with pytest.raises(CirlabError) as e:
        index.search(queries, 3, bad)
    assert "\n" not in str(e.value) and "filter" in str(e.value)
    with pytest.raises(CirlabError):
        check_filter(bad)


def test_qdrant_edge_on_disk_persists_reuses_its_shard_and_refills_a_stale_one(rows, tmp_path):
    from qdrant_edge import EdgeShard, UpdateOperation

    from cirlab.index.qdrant import point_id

    ids, vectors, meta, queries = rows
    index = build_index(f"qdrant:path={tmp_path}/db,collection=gallery", 24)
    assert index.embedded
    index.add(ids[:300], vectors[:300], meta[:300])
    index.add(ids[300:], vectors[300:], meta[300:])  # in place
    assert index.remove(ids[:10]) == 10
    before = index.search(queries, 8)
    save_index(index, tmp_path / "ix")
    index.close()
    # out of band, mark one point: a load that reuses the shard keeps the mark, a refill loses it
    shard = EdgeShard.load(str(tmp_path / "db" / "gallery"))
    shard.update(UpdateOperation.set_payload([point_id(ids[20])], {"marker": 1}))
    shard.flush()
    shard.close()

    def payload(index, i):
        return index.engine.shard.retrieve([point_id(i)], True, False)[0].payload

    loaded, manifest = load_index(tmp_path / "ix")
    assert manifest["backend"] == f"qdrant:path={tmp_path}/db,collection=gallery"
    after = loaded.search(queries, 8)
    assert after[0] == before[0] and np.allclose(after[1], before[1], atol=1e-5)
    marked = payload(loaded, ids[20])
    assert marked.get("marker") == 1 and marked["cirlab_id"] == ids[20] and marked["family"] == meta[20]["family"]
    # a shard that lost points is refilled from the saved rows
    loaded.engine.delete([point_id(i) for i in ids[50:60]])
    loaded.engine.settle()
    loaded.close()
    again, _ = load_index(tmp_path / "ix")
    assert again.engine.count() == 390
    assert again.search(queries, 8)[0] == before[0]
    assert "marker" not in payload(again, ids[20])
    again.close()


def _edge_names(shard):  # a user's folder whose entries carry Qdrant Edge's file names
    (shard / "segments").mkdir(parents=True)
    (shard / "segments" / "mine.txt").write_bytes(b"my notes\x00\xff\n")
    (shard / "wal").write_bytes(b"my own wal\n")


def _lone_config(shard):
    shard.mkdir(parents=True)
    (shard / "edge_config.json").write_bytes(b'{"mine": true}\n')


def _a_file(shard):
    shard.parent.mkdir(parents=True)
    shard.write_bytes(b"a user's file where the shard folder would be\n")


def _a_symlink(shard):
    (shard.parent / "elsewhere").mkdir(parents=True)
    (shard.parent / "elsewhere" / "keep.txt").write_bytes(b"behind the link\n")
    shard.symlink_to(shard.parent / "elsewhere")


def _path_is_a_file(shard):
    shard.parent.parent.mkdir(parents=True, exist_ok=True)
    shard.parent.write_bytes(b"path= names this file\n")


def _other_files(shard):
    shard.mkdir(parents=True)
    (shard / "photo.jpg").write_bytes(b"not a shard")


def _files_of(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("place,says", [(_edge_names, "not a shard cirlab made"),
                                        (_lone_config, "not a shard cirlab made"),
                                        (_a_file, "is a file, not a folder"),
                                        (_a_symlink, "is a symbolic link, not a folder"),
                                        (_path_is_a_file, "is a file, not a folder"),
                                        (_other_files, "not a shard cirlab made")])
def test_qdrant_edge_replaces_only_a_shard_it_made_and_the_users_files_survive_byte_for_byte(place, says, rows,
                                                                                              tmp_path):
    ids, vectors, meta, _ = rows
    place(tmp_path / "db" / "cirlab")
    before = _files_of(tmp_path)
    assert before
    with pytest.raises(CirlabError) as e:
        build_index(f"qdrant:path={tmp_path}/db", 24).add(ids[:5], vectors[:5], meta[:5])
    assert says in str(e.value) and "\n" not in str(e.value)
    assert _files_of(tmp_path) == before


def test_a_shard_cirlab_made_is_marked_replaced_in_place_and_refused_once_it_holds_a_users_file(rows, tmp_path):
    from cirlab.index.qdrant import MARKER

    ids, vectors, meta, queries = rows
    index = build_index(f"qdrant:path={tmp_path}/db", 24)
    index.add(ids[:5], vectors[:5], meta[:5])
    index.close()
    shard = tmp_path / "db" / "cirlab"
    assert (shard / MARKER).is_file() and (shard / "edge_config.json").is_file()
    again = build_index(f"qdrant:path={tmp_path}/db", 24)  # a rebuild replaces cirlab's own shard
    again.add(ids[5:9], vectors[5:9], meta[5:9])
    assert again.engine.count() == 4 and (shard / MARKER).is_file()
    again.close()
    (shard / "notes.txt").write_bytes(b"mine\n")
    with pytest.raises(CirlabError) as e:
        build_index(f"qdrant:path={tmp_path}/db", 24).add(ids[:5], vectors[:5], meta[:5])
    assert "notes.txt" in str(e.value) and (shard / "notes.txt").read_bytes() == b"mine\n"


@pytest.mark.parametrize("spec,says", [("qdrant:path={tmp}/db", "one process at a time"),
                                       ("qdrant:local=1,path={tmp}/db", "one process")])
def test_a_second_process_on_the_same_qdrant_folder_gets_one_line(spec, says, rows, tmp_path):
    ids, vectors, meta, _ = rows
    spec = spec.format(tmp=tmp_path)
    index = build_index(spec, 24)
    index.add(ids[:20], vectors[:20], meta[:20])
    code = ("import sys\nfrom cirlab.errors import CirlabError\nfrom cirlab.index import build_index\ntry:\n"
            f"    build_index('{spec}', 24).add(['x'], [[1.0] + [0.0] * 23])\n"
            "except CirlabError as e:\n    print(e)\n    sys.exit(3)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 3, r.stderr[-500:]
    assert says in r.stdout and len(r.stdout.strip().splitlines()) == 1
    assert index.search(vectors[:1], 1)[0] == [[ids[0]]]  # the first process's index is untouched
    index.close()


def test_index_verify_and_info_on_an_index_another_process_holds_say_in_use_and_exit_3(rows, tmp_path):
    ids, vectors, meta, _ = rows
    index = build_index(f"qdrant:path={tmp_path}/db", 24)
    index.add(ids[:20], vectors[:20], meta[:20])
    save_index(index, tmp_path / "ix")  # this process holds the shard, as a server would

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "cirlab.cli", "index", *args, str(tmp_path / "ix")],
                              capture_output=True, text=True)

    for action in ("verify", "info"):
        r = cli(action)
        assert r.returncode == 3, (action, r.stdout, r.stderr[-500:])
        assert "in use by another process" in r.stdout and "every file matches" in r.stdout and not r.stderr
    index.close()
    assert cli("verify").returncode == 0 and cli("info").returncode == 0


def test_an_unreachable_qdrant_server_is_one_line(rows, tmp_path):
    from conftest import free_port

    ids, vectors, meta, queries = rows
    index = build_index(f"qdrant:url=http://127.0.0.1:{free_port()},collection=c", 24)
    with pytest.raises(CirlabError) as e:
        index.add(ids[:5], vectors[:5], meta[:5])
    assert "qdrant (http://127.0.0.1:" in str(e.value) and "failed" in str(e.value) and "\n" not in str(e.value)
    save = tmp_path / "ix"
    local = build_index("exact", 24)
    local.add(ids[:5], vectors[:5], meta[:5])
    save_index(local, save)
    manifest = save / (save / "CURRENT").read_text() / "manifest.json"
    text = json.loads(manifest.read_text())
    text["backend"] = f"qdrant:url=http://127.0.0.1:{free_port()}"
    manifest.write_text(json.dumps(text))
    with pytest.raises(CirlabError) as e:  # an index whose server went away: one line when it loads
        load_index(save)
    assert "qdrant (http://127.0.0.1:" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("module,spec", [("qdrant_client", "qdrant:local=1"), ("qdrant_edge", "qdrant")])
def test_a_missing_qdrant_package_is_one_line_naming_the_extra(module, spec, monkeypatch):
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(CirlabError, match=r"cirlab\[qdrant\]"):
        build_index(spec, 8)


def test_metadata_files_in_every_format_attach_by_id_path_or_file(tmp_path):
    gallery = tmp_path / "g"
    (gallery / "sub").mkdir(parents=True)
    paths = [gallery / "a.png", gallery / "sub" / "b.png", gallery / "c.jpg"]
    ids = ["a", "sub/b", "c"]
    records = [{"id": "a", "name": "apple", "attributes": {"family": "thing"}},
               {"path": "sub/b.png", "name": "ball", "price": 3}, {"file": "c.jpg", "caption": "a cat"}]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    with open(tmp_path / "m.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["id", "path", "file", "name", "caption"])
        w.writeheader()
        w.writerows([{"id": "a", "name": "apple"}, {"path": "sub/b.png", "name": "ball"}, {"file": "c.jpg", "caption": "a cat"}])
    pq.write_table(pa.Table.from_pylist([{"id": "a", "name": "apple"}, {"id": "sub/b", "name": "ball"},
                                         {"id": "zzz", "name": "nobody"}]), tmp_path / "m.parquet")
    got = attach(ids, paths, read_metadata(tmp_path / "m.jsonl"), gallery)
    assert got == [{"name": "apple", "family": "thing"}, {"name": "ball", "price": 3}, {"caption": "a cat"}]
    assert [m.get("name", m.get("caption")) for m in attach(ids, paths, read_metadata(tmp_path / "m.csv"), gallery)] == \
        ["apple", "ball", "a cat"]
    assert attach(ids, paths, read_metadata(tmp_path / "m.parquet"), gallery)[2] == {}
    (tmp_path / "bad.jsonl").write_text('{"name": "no key"}\n')
    for bad, why in ((tmp_path / "bad.jsonl", "no id, path, file"), (tmp_path / "m.txt", "does not exist")):
        with pytest.raises(CirlabError, match=why):
            read_metadata(bad)


def test_index_build_attaches_a_data_sets_records_and_search_filters_on_them(tmp_path, served):
    ds = make_dataset(tmp_path / "ds", n=8)
    env_run = [sys.executable, "-m", "cirlab.cli"]
    model = ["--model", str(served[3])]
    r = subprocess.run(env_run + ["index", "build", str(ds / "images"), "--out", str(tmp_path / "ix"), "--quiet", *model,
                                  "--backend", f"qdrant:path={tmp_path}/db"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-800:]
    assert "attached metadata from" in r.stdout and "to 8 of 8 images" in r.stdout
    index, _ = load_index(tmp_path / "ix")
    assert index.metadata[index.row_of["img3"]]["caption"] == "shape number 3"
    assert index.metadata[index.row_of["img3"]]["split"] == "train"
    index.close()
    r = subprocess.run(env_run + ["search", "--index", str(tmp_path / "ix"), "--text", "a shape", "-k", "8", "--json", *model,
                                  "--filter", "split=test,val"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-800:]
    found = {h["id"]: h["name"] for h in json.loads(r.stdout)["results"]}
    assert found == {f"img{n}": f"shape number {n}" for n in (4, 5, 6, 7)}  # names from images.jsonl's captions
    r = subprocess.run(env_run + ["search", "--index", str(tmp_path / "ix"), "--text", "a shape", "--filter", "split", *model],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "FIELD=VALUE" in r.stderr and "Traceback" not in r.stderr


def test_http_search_filters_by_metadata_and_refuses_a_bad_filter(served):
    base = served[0]
    names = ["shape 1", "shape 2", "shape 5"]
    r = httpx.post(base + "/search", data={"text": "a shape", "k": "10", "filter": json.dumps({"name": names})}, timeout=60)
    assert r.status_code == 200, r.text
    assert sorted(h["name"] for h in r.json()["results"]) == sorted(names)
    assert r.json()["query"]["filter"] == {"name": names}
    for bad in ("family=colour", '["a"]', '{"name": 1.5}'):
        r = httpx.post(base + "/search", data={"text": "a shape", "filter": bad}, timeout=60)
        assert r.status_code == 422 and "filter" in r.json()["error"] and "\n" not in r.json()["error"]


def test_the_service_answers_over_a_qdrant_index(served, tmp_path):
    from cirlab.api import Pipeline

    base, _, ds, model = served
    pipe = Pipeline.load(model)
    from cirlab.indexing import index_gallery
    index, _ = index_gallery(pipe, ds / "images", f"qdrant:path={tmp_path}/db", progress=False)
    exact, _ = index_gallery(pipe, ds / "images", "exact", progress=False)
    save_index(index, tmp_path / "ix", pipe.identity)
    index.close()
    proc, qbase = start_server(["--index", tmp_path / "ix", "--model", model], log=tmp_path / "log")
    try:
        assert httpx.get(qbase + "/info").json()["index"]["backend"].startswith("qdrant:path=")
        r = httpx.post(qbase + "/search", data={"image_id": "img2", "text": "make it look like shape 3", "k": "5"}, timeout=60)
        assert r.status_code == 200, r.text
        want = pipe.search(exact, ds / "images" / "img2.png", "make it look like shape 3", 6)
        assert [h["id"] for h in r.json()["results"]] == [h.id for h in want if h.id != "img2"][:5]
    finally:
        stop_server(proc)


@pytest.mark.skipif(not os.environ.get("QDRANT_URL"),
                    reason="the url= contract needs a Qdrant server: set QDRANT_URL=http://HOST:6333 (one binary, or "
                           "docker run -p 6333:6333 qdrant/qdrant)")
def test_the_url_path_against_a_qdrant_server(rows, tmp_path):
    """The client calls of url= on a real server: filters in the engine, in-place add and remove, and a saved index
    that reuses its collection."""
    ids, vectors, meta, queries = rows
    spec = f"qdrant:url={os.environ['QDRANT_URL']},collection=cirlab-test-{os.getpid()}"
    index = build_index(spec, 24)
    try:
        index.add(ids[:300], vectors[:300], meta[:300])
        index.add(ids[300:], vectors[300:], meta[300:])
        for where in FILTERS:
            assert index.search(queries, 7, where)[0] == reference(ids, vectors, meta, queries, 7, where), where
        assert index.remove(ids[:10]) == 10
        before = index.search(queries, 8)
        save_index(index, tmp_path / "ix")
        loaded, _ = load_index(tmp_path / "ix")
        assert loaded.search(queries, 8)[0] == before[0] and loaded.engine.count() == 390
    finally:
        index.engine.client.delete_collection(index.collection)
