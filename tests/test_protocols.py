"""Benchmark evaluation under a protocol, on a hand-made CIRR-style split with real small images and
a trained model: metrics agree with the rankings, the subset ranking is the full ranking restricted
to the image set, and the CIRR submission files have the server's fields."""

import json

import numpy as np
import pytest
from conftest import make_images

from cirlab.api import Pipeline
from cirlab.data.public import BenchmarkQuery, BenchmarkSplit
from cirlab.eval.metrics import recall_at_k
from cirlab.eval.protocols import cirr_submission, evaluate_benchmark


@pytest.fixture(scope="module")
def cirr_like(served, tmp_path_factory):
    _, index_dir, _, model = served
    pipe = Pipeline.load(model, index_dir.parent / "cache")
    paths = make_images(tmp_path_factory.mktemp("cirr") / "img", n=12, seed=5)
    ids = [p.stem for p in paths]
    queries = [BenchmarkQuery(ids[i], f"make it look like shape {(i + 1) % 12}", [ids[(i + 1) % 12]], 1000 + i,
                              [ids[(i + d) % 12] for d in range(6)]) for i in range(12)]
    split = BenchmarkSplit("cirr-val", queries, ids, dict(zip(ids, paths)), True, (1, 5, 10, 50))
    return pipe, split


def test_metrics_follow_the_rankings_and_the_subset_is_the_restricted_ranking(cirr_like):
    pipe, split = cirr_like
    res = evaluate_benchmark(pipe, split, progress=False)
    assert res.queries == 12 and res.gallery == 12 and res.skipped == 0
    for q, ranked, sub in zip(res.evaluated, res.ranked, res.subset_ranked):
        assert q.reference not in ranked and len(ranked) == 11  # the reference is removed from its ranking
        assert sub == [x for x in ranked if x in set(q.members) - {q.reference}]
    pos = {g: i for i, g in enumerate(split.gallery)}
    want = recall_at_k([[pos[x] for x in r] for r in res.ranked], [[pos[t] for t in q.targets] for q in res.evaluated],
                       (1, 5, 10, 50))
    assert all(res.metrics[f"R@{k}"] == pytest.approx(v) for k, v in want.items())
    sub1 = np.mean([s[0] == q.targets[0] for s, q in zip(res.subset_ranked, res.evaluated)]) * 100
    assert res.metrics["Rsubset@1"] == pytest.approx(sub1)
    assert res.metrics["(R@5+Rsubset@1)/2"] == pytest.approx((res.metrics["R@5"] + sub1) / 2)


def test_cirr_submission_files(cirr_like, tmp_path):
    pipe, split = cirr_like
    for q in split.queries:
        q.targets = []  # test1: targets hidden
    res = evaluate_benchmark(pipe, split, progress=False)
    assert res.metrics == {}
    recall_path, subset_path = cirr_submission(res, tmp_path)
    recall, subset = json.loads(recall_path.read_text()), json.loads(subset_path.read_text())
    assert recall["version"] == subset["version"] == "rc2"
    assert recall["metric"] == "recall" and subset["metric"] == "recall_subset"
    pair_keys = {str(1000 + i) for i in range(12)}
    assert set(recall) - {"version", "metric"} == pair_keys == set(subset) - {"version", "metric"}
    q0 = split.queries[0]
    assert recall["1000"] == res.ranked[0][:50] and len(subset["1000"]) == 3
    assert q0.reference not in subset["1000"] and set(subset["1000"]) <= set(q0.members)


def test_cli_eval_benchmark_on_a_shoes_format_folder(served, tmp_path):
    import os
    import subprocess
    import sys

    _, index_dir, _, model = served
    paths = make_images(tmp_path / "shoes_images", n=6, seed=9)
    names = [p.name for p in paths]
    ann = tmp_path / "shoes_ann"
    ann.mkdir()
    (ann / "eval_im_names.txt").write_text("\n".join(names[:5]) + "\n")  # the 6th is a training image
    rel = [{"ImageName": names[i + 1], "ReferenceImageName": names[i], "RelativeCaption": f"is more like {i + 1}"}
           for i in range(5)]
    (ann / "relative_captions_shoes.json").write_text(json.dumps(rel))
    paths[0].unlink()  # one eval image is missing: its query is skipped and it is listed
    env = {**os.environ, "CIRLAB_HOME": str(tmp_path / "home")}
    r = subprocess.run([sys.executable, "-m", "cirlab.cli", "eval", "--benchmark", "shoes", "--annotations", str(ann),
                        "--images", str(tmp_path / "shoes_images"), "--model", str(model), "--cache",
                        str(index_dir.parent / "cache"), "--out", str(tmp_path / "out"), "--quiet"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    # eval triplets need both images in the eval list: pairs (0,1), (1,2), (2,3), (3,4); (0,1) loses image 0
    assert "shoes-test: 3 queries over 4 gallery images; 1 images missing, 1 queries skipped" in r.stdout
    assert "| shoes-test |" in r.stdout and "R@1 | R@10 | R@50" in r.stdout
    report = json.loads((tmp_path / "out" / "shoes.json").read_text())
    assert report["results"][0]["queries"] == 3 and report["protocol"][0]["exclude_reference"] is True
    assert (tmp_path / "out" / "shoes-test-missing.txt").read_text() == names[0] + "\n"
    bad = subprocess.run([sys.executable, "-m", "cirlab.cli", "eval", "--benchmark", "cirr"], capture_output=True,
                         text=True, env=env, timeout=120)
    assert bad.returncode == 2 and "needs --annotations" in bad.stderr and "Traceback" not in bad.stderr


def make_fashion200k(root, seed=1):
    """A folder in Fashion200K's published layout: labels/<category>_<split>_detect_all.txt
    (path, detection score, caption) and test_queries.txt (source and target paths). Every caption
    is held by two images, so each query has two targets."""
    import shutil

    caps = [f"{c} {item}" for c in ("red", "blue", "green") for item in ("dress", "skirt")]
    (root / "labels").mkdir(parents=True)
    for split, s in (("train", seed), ("test", seed + 1)):
        lines = []
        for k, p in enumerate(make_images(root / "tmp" / split, n=12, seed=s)):
            rel = f"women/{split}/{k}/{k}_0.png"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            p.rename(root / rel)
            lines.append(f"{rel}\t0.87\t{caps[k % 6]}")
        (root / "labels" / f"dress_{split}_detect_all.txt").write_text("\n".join(lines) + "\n")
    shutil.rmtree(root / "tmp")
    queries = [f"women/test/{k}/{k}_0.png women/test/{(k + 2) % 12}/{(k + 2) % 12}_0.png" for k in range(12)]
    (root / "test_queries.txt").write_text("\n".join(queries) + "\n")
    return root


def test_fashion200k_loader_follows_the_published_protocol(tmp_path):
    from cirlab.data.fashion200k import load_fashion200k

    root = make_fashion200k(tmp_path / "f200k")
    test = load_fashion200k(root, root)
    assert len(test.queries) == 12 and len(test.gallery) == 12 and test.exclude_reference and test.ks == (1, 10, 50)
    q = test.queries[0]  # "red dress" -> "blue dress": both blue dresses are hits
    assert q.reference == "women/test/0/0_0" and q.text == "replace red with blue"
    assert q.targets == ["women/test/2/2_0", "women/test/8/8_0"]
    train = load_fashion200k(root, root, "train")
    caption = train.captions
    for t in train.queries:  # a training pair differs by one word, and every image with the caption is a target
        a, b = caption[t.reference].split(), caption[t.targets[0]].split()
        assert len(a) == len(b) and sum(x != y for x, y in zip(a, b)) == 1
        assert set(t.targets) == {i for i, c in caption.items() if c == caption[t.targets[0]]}
    (root / "women/test/8/8_0.png").unlink()  # one of two targets gone: the query stays with the other
    gone = load_fashion200k(root, root)
    assert gone.missing == ["women/test/8/8_0"] and gone.queries[0].targets == ["women/test/2/2_0"]
    assert gone.skipped == 1  # the query whose reference it was


@pytest.mark.slow  # 37 s: builds and evaluates a data set: in make test, not make test-fast
def test_a_benchmark_made_a_data_set_evaluates_as_its_loader_does(served, tmp_path):
    """``cirlab data make fashion200k`` then ``cirlab eval --data`` gives the same numbers as
    ``cirlab eval --benchmark fashion200k`` (two routes, one protocol); both write the Recall@K curve
    and the example page; ``cirlab bench`` runs on the made data set."""
    import os
    import subprocess
    import sys

    from PIL import Image

    _, index_dir, _, model = served
    root = make_fashion200k(tmp_path / "f200k")
    env = {**os.environ, "CIRLAB_HOME": str(tmp_path / "home")}
    common = ["--model", str(model), "--cache", str(index_dir.parent / "cache"), "--quiet"]

    def cli(*args):
        r = subprocess.run([sys.executable, "-m", "cirlab.cli", *map(str, args)], capture_output=True, text=True,
                           env=env, timeout=300)
        assert r.returncode == 0, r.stderr
        return r.stdout

    made = json.loads(cli("data", "make", "fashion200k", "--annotations", root, "--images", root, "--out", tmp_path / "ds"))
    assert made["splits"] == {"train": {"triplets": 12, "gallery": 12}, "test": {"triplets": 12, "gallery": 12}}
    cli("eval", "--data", tmp_path / "ds", "--split", "test", "--out", tmp_path / "a", *common)
    cli("eval", "--benchmark", "fashion200k", "--annotations", root, "--images", root, "--out", tmp_path / "b", *common)
    via_data = json.loads((tmp_path / "a" / "fashion200k-test.json").read_text())
    via_loader = json.loads((tmp_path / "b" / "fashion200k.json").read_text())["results"][0]
    assert via_data["queries"] == via_loader["queries"] == 12 and via_data["exclude_reference"]
    for k in (1, 10, 50):
        assert via_data["recall"][str(k)] == pytest.approx(via_loader["metrics"][f"R@{k}"])
    for k in (5, 10, 25, 50):  # two targets per query: CIRCO-style mAP@K on both routes
        assert via_data["map"][str(k)] == pytest.approx(via_loader["metrics"][f"mAP@{k}"])
    # the modality audit, by the same model on both routes: the same three ranks for each query
    assert via_data["audit"]["summary"] == pytest.approx(via_loader["audit"]["summary"])
    assert [q["image"] for q in via_data["audit"]["queries"]] == [q["image"] for q in via_loader["audit"]["queries"]]
    assert len(via_data["audit"]["queries"]) == 12 and via_data["audit"]["solved_at"] == 1
    for out, name in ((tmp_path / "a", "fashion200k-test"), (tmp_path / "b", "fashion200k")):
        with Image.open(out / f"{name}-recall.png") as im:
            assert im.size[0] > 400
        page = (out / f"{name}-examples.html").read_text()
        assert page.count("<div class='q'>") == 12 and "class='gt'" in page and "replace red with blue" in page
    bench = subprocess.run([sys.executable, "-m", "cirlab.cli", "bench", "--data", tmp_path / "ds", "--methods", "sum",
                            "--seeds", "1", "--epochs", "1", "--out", tmp_path / "bench", "--cache",
                            index_dir.parent / "cache", "--quiet", "--name", "f200k"],
                           capture_output=True, text=True, env=env, timeout=300)
    assert bench.returncode == 0, bench.stderr
    assert "| sum |" in bench.stdout and "mAP@10" in bench.stdout
    assert "reference excluded" in (tmp_path / "bench" / "f200k.md").read_text()
    assert "| method | composed R@1 | composed R@10 | image R@1 |" in (tmp_path / "bench" / "f200k.md").read_text()
    run = json.loads((tmp_path / "bench" / "f200k.json").read_text())["runs"][0]
    assert run["audit"]["composed R@1"] == pytest.approx(run["recall"]["1"])


def test_circo_scores_every_ground_truth_and_writes_the_server_file(cirr_like, tmp_path):
    """A CIRCO-style split (several ground truths, the reference kept): mAP@K from the rankings over every ground
    truth, Recall@K on the target alone; the test split's file has every query id with its top ids as integers,
    and a split with skipped queries is refused."""
    from cirlab.errors import CirlabError
    from cirlab.eval.metrics import map_at_k
    from cirlab.eval.protocols import circo_submission

    pipe, cirr = cirr_like
    ids = [str(100 + n) for n in range(12)]
    paths = dict(zip(ids, cirr.paths.values()))
    queries = [BenchmarkQuery(ids[i], f"make it look like shape {(i + 1) % 12}", [ids[(i + d) % 12] for d in (1, 2, 3)],
                              i) for i in range(12)]
    split = BenchmarkSplit("circo-val", queries, ids, paths, False, (5, 10, 25, 50), {"recall": "target"})
    res = evaluate_benchmark(pipe, split, progress=False)
    assert all(q.reference in r for q, r in zip(res.evaluated, res.ranked))  # the reference stays in the gallery
    want = map_at_k(res.ranked, [q.targets for q in res.evaluated])
    assert all(res.metrics[f"mAP@{k}"] == pytest.approx(v) for k, v in want.items())
    first = np.mean([q.targets[0] in r[:5] for q, r in zip(res.evaluated, res.ranked)]) * 100
    assert res.metrics["R@5"] == pytest.approx(first)
    for q in split.queries:
        q.targets = []
    held = evaluate_benchmark(pipe, BenchmarkSplit("circo-test", split.queries, ids, paths, False, (5, 10, 25, 50)),
                              progress=False)
    sent = json.loads(circo_submission(held, tmp_path).read_text())
    assert set(sent) == {str(i) for i in range(12)} and all(len(v) == 12 for v in sent.values())
    assert all(isinstance(x, int) for v in sent.values() for x in v) and sent["0"] == [int(x) for x in held.ranked[0]]
    held.skipped = 1
    with pytest.raises(CirlabError, match="needs every query"):
        circo_submission(held, tmp_path)
