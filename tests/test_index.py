"""Index backends against exact search, persistence (including a save killed midway), removal,
dimension checks, paper 000's combined scoring, and the index CLI."""

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from cirlab.errors import CirlabError
from cirlab.index import CombinedScoring, build_index, index_backends, load_index, read_manifest, rescore, save_index
from test_cli import assert_one_line_error


def unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def clustered(n=600, d=32, centers=6, seed=0):
    """Vectors around a few centres (real galleries have structure; uniform noise has none)."""
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centers, d))
    return unit(c[rng.integers(0, centers, n)] + 0.35 * rng.normal(size=(n, d)))


def brute(vectors, queries, k):
    return np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, :k]


def recall_at(found, truth):
    return np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)])


# (spec, the smallest Recall@10 against exact it must reach on the clustered set)
BACKENDS = [("exact", 1.0), ("knn", 1.0), ("kdtree", 1.0), ("faiss:Flat", 1.0), ("faiss:HNSW16,ef=64", 0.95),
            ("faiss:IVF8,Flat,nprobe=8", 1.0), ("lsh:bits=256,candidates=150", 0.9), ("kmeans_svm:k=6,probe=6", 1.0),
            ("kmeans_svm:k=6,probe=2", 0.8), ("qdrant", 1.0)]


@pytest.fixture(scope="module")
def data():
    vectors = clustered()
    queries = clustered(40, seed=1)
    return vectors, queries, [f"img{i}" for i in range(len(vectors))]


def test_every_registered_backend_is_covered():
    assert {s.split(":")[0] for s, _ in BACKENDS} == set(index_backends.names())


@pytest.mark.parametrize("spec,threshold", BACKENDS)
def test_backend_recall_against_exact(spec, threshold, data):
    vectors, queries, ids = data
    index = build_index(spec, 32)
    index.add(ids, vectors)
    found, scores = index.search(queries, 10)
    truth = [[ids[j] for j in row] for row in brute(vectors, queries, 10)]
    assert recall_at(found, truth) >= threshold
    assert all(len(row) == 10 for row in found)
    assert np.all(np.diff(scores, axis=1) <= 1e-6)  # best first
    if threshold == 1.0 and spec != "knn":  # exact backends report the cosine itself
        best = queries @ vectors[[int(r[0][3:]) for r in found]].T
        assert np.allclose(scores[:, 0], np.diag(best), atol=1e-4)


def test_knn_scores_are_negative_euclidean_distances(data):
    vectors, queries, ids = data
    index = build_index("knn", 32)
    index.add(ids, vectors)
    found, scores = index.search(queries[:3], 4)
    for q, row, s in zip(queries[:3], found, scores):
        d = np.linalg.norm(vectors[[int(i[3:]) for i in row]] - q, axis=1)
        assert np.allclose(-d, s, atol=1e-4)


@pytest.mark.parametrize("spec", [s for s, _ in BACKENDS])
def test_save_load_round_trip_and_removed_ids_never_return(spec, data, tmp_path):
    vectors, queries, ids = data
    index = build_index(spec, 32)
    index.add(ids[:500], vectors[:500], [{"n": i} for i in range(500)])
    index.add(ids[500:], vectors[500:])  # incremental where the backend allows
    before = index.search(queries, 10)
    save_index(index, tmp_path / "ix", {"fusion": "combiner:abc"})
    loaded, manifest = load_index(tmp_path / "ix", dim=32, model={"fusion": "combiner:abc"})
    assert len(loaded) == 600 and manifest["backend"] == index.spec and loaded.metadata[7] == {"n": 7}
    after = loaded.search(queries, 10)
    assert after[0] == before[0] and np.allclose(after[1], before[1], atol=1e-5)
    gone = [ids[int(r[3:])] for r in {x for row in before[0] for x in row[:2]}]  # ids that were answers
    assert loaded.remove(gone + ["never-there"]) == len(gone)
    removed_vectors = vectors[[int(g[3:]) for g in gone]]
    for found in (loaded.search(removed_vectors, 20)[0], loaded.search(queries, 20)[0]):
        assert not {x for row in found for x in row} & set(gone)
    save_index(loaded, tmp_path / "ix")
    again, _ = load_index(tmp_path / "ix")
    assert len(again) == 600 - len(gone)
    assert not {x for row in again.search(removed_vectors, 20)[0] for x in row} & set(gone)


def test_adding_an_existing_id_replaces_it(data):
    vectors, _, ids = data
    index = build_index("exact", 32)
    index.add(ids[:10], vectors[:10])
    index.add(["img3"], vectors[20:21], [{"new": True}])
    assert len(index) == 10
    assert index.search(vectors[20:21], 1)[0] == [["img3"]] and index.metadata[index.row_of["img3"]] == {"new": True}


def test_dimension_mismatches_and_bad_specs_are_refused(data, tmp_path):
    vectors, _, ids = data
    index = build_index("exact", 32)
    with pytest.raises(CirlabError, match="dimension 16, this index holds 32-d"):
        index.add(["a"], np.ones((1, 16)))
    index.add(ids[:5], vectors[:5])
    with pytest.raises(CirlabError, match="dimension 8"):
        index.search(np.ones((1, 8)), 3)
    save_index(index, tmp_path / "ix", {"fusion": "combiner:abc", "image_encoder": "enc-a"})
    with pytest.raises(CirlabError, match="holds 32-d vectors but the model makes 64-d"):
        load_index(tmp_path / "ix", dim=64)
    with pytest.raises(CirlabError, match="built with fusion combiner:abc, not mffm:def"):
        load_index(tmp_path / "ix", dim=32, model={"fusion": "mffm:def"})
    with pytest.raises(CirlabError, match="not a cirlab index"):
        load_index(tmp_path)
    with pytest.raises(CirlabError, match="unknown index backend 'annoy'"):
        build_index("annoy", 8)
    with pytest.raises(CirlabError, match="has no option 'bitz'"):
        build_index("lsh:bitz=3", 8)
    with pytest.raises(CirlabError, match="faiss cannot build"):
        build_index("faiss:NoSuchThing", 8).add(ids[:5], np.ones((5, 8), np.float32))


def test_query_time_options_change_without_a_rebuild(data):
    vectors, queries, ids = data
    truth = [[ids[j] for j in row] for row in brute(vectors, queries, 10)]
    index = build_index("faiss:IVF8,Flat,nprobe=1", 32)
    index.add(ids, vectors)
    structure = index._index
    low = recall_at(index.search(queries, 10)[0], truth)
    index.tune(nprobe=8)
    assert index._index is structure and index.spec == "faiss:IVF8,Flat,nprobe=8"
    assert recall_at(index.search(queries, 10)[0], truth) == 1.0 > low
    with pytest.raises(CirlabError, match="cannot change 'factory' at query time"):
        index.tune(factory="Flat")


def test_reranking_a_compressed_index_with_the_raw_vectors(data, tmp_path):
    vectors, queries, ids = data
    truth = [[ids[j] for j in row] for row in brute(vectors, queries, 10)]
    index = build_index("faiss:PQ4x4", 32)  # 2 bytes a vector: a coarse ranking
    index.add(ids, vectors)
    coarse = recall_at(index.search(queries, 10)[0], truth)
    index.tune(rerank=300)
    found, scores = index.search(queries, 10)
    assert recall_at(found, truth) > max(coarse, 0.9)
    exact = np.sort(queries @ vectors.T, axis=1)[:, ::-1][:, :10]
    assert np.allclose(scores[0][:3], exact[0][:3], atol=1e-5)  # exact cosines after re-ranking
    save_index(index, tmp_path / "pq")
    loaded, _ = load_index(tmp_path / "pq")
    assert isinstance(loaded.vectors, np.memmap)  # raw rows stay on disk; only re-ranked ones are read
    assert loaded.search(queries, 10)[0] == found
    loaded.add(["extra"], vectors[:1] * -1.0)
    assert loaded.remove(["img0"]) == 1 and "img0" not in sum(loaded.search(queries, 10)[0], [])


KILLED_SAVE = """
import sys, numpy as np
from cirlab.index import build_index, load_index, save_index
index, manifest = load_index(sys.argv[1])
rng = np.random.default_rng(0)
big = rng.normal(size=(400_000, 128)).astype(np.float32)
index.add([f"new{i}" for i in range(len(big))], big)
print("saving", flush=True)
save_index(index, sys.argv[1])
"""


def test_a_save_killed_midway_leaves_the_previous_index_loadable(data, tmp_path):
    vectors, queries, ids = data
    folder = tmp_path / "ix"
    index = build_index("exact", 32)
    index.add(ids, vectors)
    save_index(index, folder)
    # a writer with a bigger index (wrong dim on purpose? no: same index grown) killed during its save
    index128 = build_index("exact", 128)
    index128.add(ids, np.random.default_rng(1).normal(size=(600, 128)).astype(np.float32))
    save_index(index128, tmp_path / "big")
    proc = subprocess.Popen([sys.executable, "-c", KILLED_SAVE, str(tmp_path / "big")], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "saving"
    deadline = time.time() + 60
    while not list((tmp_path / "big").glob(".v-*.tmp")) and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list((tmp_path / "big").glob(".v-*.tmp")), "the save was not caught midway"
    survived, manifest = load_index(tmp_path / "big")
    assert len(survived) == 600 and manifest["count"] == 600  # the old version, whole
    save_index(survived, tmp_path / "big")  # the next save clears the debris
    assert not list((tmp_path / "big").glob(".v-*.tmp"))
    assert read_manifest(folder)[0]["count"] == 600


def test_combined_scoring_against_hand_computation():
    q = np.array([0.6, 0.8, 0.0, 0.0], np.float32)
    g = np.array([[0.8, 0.6, 0.0, 0.0], [0.6, 0.0, 0.8, 0.0]], np.float32)
    s = CombinedScoring(cosine=1, euclidean=0.5, hamming=0.2, l1=0.1).score(q, g)
    # g0: cos .96, L2 sqrt(.04+.04) = .28284, signs differ in 0 of 4 dims, L1 (.2+.2)/4 = .1
    # g1: cos .36, L2 sqrt(0+.64+.64) = 1.13137, signs: dim1 (q>0, g=0) and dim2 (q=0, g>0) differ: 2/4, L1 1.6/4 = .4
    assert s[0] == pytest.approx(0.96 - 0.5 * 0.28284 - 0 - 0.1 * 0.1, abs=1e-4)
    assert s[1] == pytest.approx(0.36 - 0.5 * 1.13137 - 0.2 * 0.5 - 0.1 * 0.4, abs=1e-4)
    assert CombinedScoring.parse("cosine=2,hamming=0.5,candidates=7") == CombinedScoring(2.0, 0.0, 0.5, 0.0, 7)
    with pytest.raises(CirlabError, match="use name=value"):
        CombinedScoring.parse("cosin=1")


def test_rescoring_with_cosine_only_keeps_the_order_and_a_hamming_weight_can_change_it(data):
    vectors, queries, ids = data
    index = build_index("exact", 32)
    index.add(ids, vectors)
    plain = index.search(queries, 10)
    same = rescore(index, queries, 10, CombinedScoring(candidates=50))
    assert same[0] == plain[0] and np.allclose(same[1], plain[1], atol=1e-5)
    heavy = rescore(index, queries, 10, CombinedScoring(cosine=0.0, hamming=1.0, candidates=50))
    assert heavy[0] != plain[0]  # ranking by sign agreement alone is another order
    for q, row in zip(queries, heavy[0]):  # and it is sorted by that agreement
        ham = [((vectors[int(i[3:])] > 0) != (q > 0)).sum() for i in row]
        assert ham == sorted(ham)


def _cli(*args, home):
    import os

    env = {**os.environ, "CIRLAB_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "cirlab.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=600)


@pytest.mark.slow  # 40 s of CLI subprocesses: in make test, not make test-fast
def test_index_cli_build_info_search_add_remove(tmp_path, image_encoder, text_encoder):
    import torch

    from cirlab.checkpoint import save_checkpoint
    from cirlab.config import method_config
    from cirlab.fusion import FeatureDims, build_fusion
    from conftest import make_images

    cfg = method_config("sum")
    torch.manual_seed(0)
    model = build_fusion("sum", FeatureDims.of(image_encoder, text_encoder), **cfg["model"]).eval()
    ckpt = save_checkpoint(tmp_path / "m.pt", model, cfg["model"], cfg["train"], image_encoder, text_encoder)
    imgs = make_images(tmp_path / "gallery", n=5)
    make_images(tmp_path / "more", n=2, seed=3)  # what "index add" adds below
    res = _cli("index", "build", tmp_path / "gallery", "--out", tmp_path / "ix", "--model", ckpt,
               "--backend", "faiss:Flat", "--quiet", home=tmp_path)
    assert res.returncode == 0, res.stderr
    info = _cli("index", "info", tmp_path / "ix", home=tmp_path).stdout
    assert "vectors    5" in info and "dimension  512" in info and "faiss:Flat" in info and "sum:" in info
    res = _cli("search", "--index", tmp_path / "ix", "--model", ckpt, "--image", imgs[0], "--text", "make it blue",
               "-k", "3", "--exclude-reference", "--json", home=tmp_path)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert len(out["results"]) == 3 and "img0" not in [r["id"] for r in out["results"]]
    res = _cli("search", "--index", tmp_path / "ix", "--model", ckpt, "--image", imgs[0], "--text", "make it blue",
               "--scoring", "cosine=1,hamming=0.3,candidates=5", "--json", home=tmp_path)
    assert res.returncode == 0 and len(json.loads(res.stdout)["results"]) == 5
    res = _cli("index", "add", tmp_path / "ix", tmp_path / "more", "--model", ckpt, "--quiet", home=tmp_path)
    assert res.returncode == 0 and "7 vectors" in res.stdout, res.stderr
    res = _cli("index", "remove", tmp_path / "ix", "img1", "img2", home=tmp_path)
    assert res.returncode == 0 and "removed 2 of 2" in res.stdout
    res = _cli("search", "--index", tmp_path / "ix", "--model", ckpt, "--image", imgs[1], "--text", "same",
               "-k", "10", "--json", home=tmp_path)
    found = [r["id"] for r in json.loads(res.stdout)["results"]]
    assert len(found) == 5 and "img1" not in found and "img2" not in found
    # one index holds one kind of vectors: adding bf16 ones to this fp32 index is refused in one line, before any
    # image is encoded; searching it in bf16 works and says what it costs
    bf16 = ("--runtime", "torch", "--encoder-precision", "bf16")
    res = _cli("index", "add", tmp_path / "ix", tmp_path / "more", "--model", ckpt, *bf16, "--quiet", home=tmp_path)
    assert_one_line_error(res, "holds fp32 image vectors but this run encodes images in bf16")
    assert "it searches" not in res.stderr  # the refusal alone, not the warning a search gives before it
    res = _cli("search", "--index", tmp_path / "ix", "--model", ckpt, *bf16, "--image", imgs[1], "--text", "same",
               "-k", "3", "--json", home=tmp_path)
    assert res.returncode == 0 and len(json.loads(res.stdout)["results"]) == 3, res.stderr
    assert "holds fp32 image vectors and this model encodes images in bf16" in res.stderr
    assert json.loads((tmp_path / "ix" / (tmp_path / "ix" / "CURRENT").read_text().strip() / "manifest.json")
                      .read_text())["model"]["image_vectors"] == "fp32"
    # another model is refused, in one line
    other = build_fusion("sum", FeatureDims.of(image_encoder, text_encoder), **cfg["model"]).eval()
    ckpt2 = save_checkpoint(tmp_path / "m2.pt", other, cfg["model"], cfg["train"], image_encoder, text_encoder)
    res = _cli("search", "--index", tmp_path / "ix", "--model", ckpt2, "--image", imgs[0], "--text", "x", home=tmp_path)
    assert res.returncode == 2 and "was built with fusion sum:" in res.stderr and "Traceback" not in res.stderr
    res = _cli("index", "info", tmp_path / "nowhere", home=tmp_path)
    assert res.returncode == 2 and "not a cirlab index" in res.stderr


def test_evaluation_through_an_index_backend():
    """Evaluation ranks through the one search (``eval.evaluate.ranked`` over ``gallery_index``): exact search gives
    the brute-force rows with each reference left out; paper 003's KNN gives exact search's rows over unit vectors;
    K-means + SVM (one cluster probed) pads short lists with -1 / -inf."""
    from cirlab.eval.evaluate import gallery_index, ranked
    from cirlab.index.exact import exact_topk

    rng = np.random.default_rng(0)
    g = rng.normal(size=(300, 16)).astype(np.float32)
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    q = g[:40] + 0.3 * rng.normal(size=(40, 16)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    ids = [f"g{i}" for i in range(300)]
    exclude = np.arange(40)
    leave_out = [{ids[i]} for i in exclude]
    rows, scores = exact_topk(q, g, 10, exclude)
    exact_rows, exact_scores = ranked(gallery_index(g, ids), q, 10, leave_out)
    np.testing.assert_array_equal(exact_rows, rows)
    np.testing.assert_allclose(exact_scores, scores, rtol=1e-6)
    knn_rows, knn_scores = ranked(gallery_index(g, ids, "knn"), q, 10, leave_out)
    np.testing.assert_array_equal(knn_rows, rows)
    assert not (knn_rows == exclude[:, None]).any() and (np.diff(knn_scores, axis=1) <= 1e-6).all()
    svm_rows, svm_scores = ranked(gallery_index(g, ids, "kmeans_svm:k=15"), q, 100, leave_out)
    short = svm_rows == -1
    assert short.any() and np.isneginf(svm_scores[short]).all() and not (svm_rows == exclude[:, None]).any()


def test_re_ranking_keeps_the_first_stages_top_k_and_only_reorders_it(data):
    """A second model (its own query and gallery vectors) reorders the first stage's top K: the set is the first
    stage's, the order is the second model's, in the one search (index.search) and in an evaluation
    (eval.evaluate.ranked) alike; fewer results than K keep the second model's best of the K."""
    from cirlab.eval.evaluate import gallery_index, ranked
    from cirlab.index.scoring import ModelScoring
    from cirlab.index.search import search
    from cirlab.rerank import RerankSpec

    vectors, queries, ids = data
    index = build_index("exact", 32)
    index.add(ids, vectors)
    rng = np.random.default_rng(5)
    second_gallery, second_queries = unit(rng.normal(size=(len(ids), 32))), unit(rng.normal(size=(len(queries), 32)))
    by_id = ModelScoring(second_queries, lambda keys: second_gallery[[int(i[3:]) for i in keys]], candidates=20)
    first = search(index, queries, 20)
    served = search(index, queries, 20, rerank=by_id)
    short = search(index, queries, 5, rerank=by_id)
    top, scores = ranked(gallery_index(vectors, ids), queries, 20, rerank=by_id)
    changed = 0
    for q, (a, b, c) in enumerate(zip(first, served, short)):
        assert {i for i, _ in a} == {i for i, _ in b}  # the same top K
        want = sorted((i for i, _ in a), key=lambda i: -float(second_gallery[int(i[3:])] @ second_queries[q]))
        assert [i for i, _ in b] == want == [ids[j] for j in top[q]]  # in the second model's order, both paths
        assert [i for i, _ in c] == want[:5]
        assert np.allclose([s for _, s in b], scores[q], atol=1e-5)
        changed += [i for i, _ in a] != want
    assert changed > len(queries) // 2  # the second model really reorders
    assert RerankSpec.parse("runs/m.pt") == RerankSpec.parse("model=runs/m.pt,candidates=100")
    assert RerankSpec.parse("model=m.pt,candidates=7").candidates == 7
    for bad, says in [("candidates=5", "needs a checkpoint"), ("m.pt,top=3", "model=PATH"),
                      ("m.pt,candidates=x", "whole number"), ("m.pt,candidates=0", "at least 1")]:
        with pytest.raises(CirlabError, match=says):
            RerankSpec.parse(bad)
