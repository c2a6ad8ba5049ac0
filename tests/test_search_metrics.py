import numpy as np
import pytest

from cirlab.eval.metrics import recall_at_k
from cirlab.index.exact import exact_topk


def test_exact_topk_hand_case_with_exclusion():
    g = np.array([[1, 0], [0, 1], [0.8, 0.6], [-1, 0]], dtype=np.float32)
    q = np.array([[1, 0], [0, 1]], dtype=np.float32)
    idx, sc = exact_topk(q, g, 3)
    assert idx.tolist() == [[0, 2, 1], [1, 2, 0]]
    np.testing.assert_allclose(sc[0], [1.0, 0.8, 0.0], atol=1e-6)
    idx, _ = exact_topk(q, g, 2, exclude=np.array([0, -1]))
    assert idx.tolist() == [[2, 1], [1, 2]]


def test_exact_topk_matches_brute_force_in_chunks():
    rng = np.random.default_rng(0)
    g, q = rng.normal(size=(300, 8)).astype(np.float32), rng.normal(size=(50, 8)).astype(np.float32)
    idx, _ = exact_topk(q, g, 5, chunk=7)
    assert (idx == np.argsort(-(q @ g.T), axis=1)[:, :5]).all()


def test_recall_at_k_hand_case():
    ranked = [[3, 1, 2, 0], [0, 1, 2, 3], [2, 3, 0, 1]]
    targets = [[1], [3], [2, 0]]
    # first hits at positions 1, 3, 0
    assert recall_at_k(ranked, targets, ks=(1, 2, 4)) == pytest.approx({1: 100 / 3, 2: 200 / 3, 4: 100.0})
    assert recall_at_k([[5, 6]], [[7]], ks=(1, 2)) == {1: 0.0, 2: 0.0}
    with pytest.raises(ValueError):
        recall_at_k([[1]], [[1], [2]])


def test_cirr_recall_subset_restricts_the_ranking_to_the_image_set():
    from cirlab.eval.metrics import recall_subset_at_k, subset_ranking

    ranked = [["a", "x", "ref", "b", "t", "c"], ["t2", "y", "z"]]
    members = [["ref", "b", "t", "c", "zz"], ["y", "t2", "ref2"]]
    # query 0: the set without its reference, in ranked order, is b, t, c: the target is 2nd
    assert subset_ranking(ranked[0], members[0], "ref") == ["b", "t", "c"]
    r = recall_subset_at_k(ranked, members, ["ref", "ref2"], [["t"], ["t2"]])
    assert r == pytest.approx({1: 50.0, 2: 100.0, 3: 100.0})


def test_circo_average_precision_by_hand():
    from cirlab.eval.metrics import average_precision_at_k, map_at_k

    # targets at ranks 1 and 3 of 4: (1/1 + 2/3) / min(4, 2)
    assert average_precision_at_k(["t1", "x", "t2", "y"], {"t1", "t2"}, 4) == pytest.approx((1 + 2 / 3) / 2)
    # K smaller than the number of targets: divide by K
    assert average_precision_at_k(["t1", "x"], {"t1", "t2", "t3"}, 2) == pytest.approx(1 / 2)
    assert average_precision_at_k(["x", "y"], {"t"}, 2) == 0.0
    m = map_at_k([["t1", "x", "t2", "y"], ["x", "t"]], [{"t1", "t2"}, {"t"}], ks=(1, 4))
    assert m == pytest.approx({1: 100 * (1 + 0) / 2, 4: 100 * ((1 + 2 / 3) / 2 + 1 / 2) / 2})


def test_recall_curve_matches_recall_at_k_and_rises():
    from cirlab.eval.metrics import recall_curve

    ranked = [["a", "b", "c", "d"], ["c", "a", "d", "b"], ["d", "c", "b", "a"]]
    targets = [["c"], ["x"], ["b", "a"]]  # hits at rank 3, never, rank 3
    curve = recall_curve(ranked, targets, 4)
    assert curve == pytest.approx([0.0, 0.0, 200 / 3, 200 / 3])
    pos = {x: i for i, x in enumerate("abcdx")}
    want = recall_at_k([[pos[x] for x in r] for r in ranked], [[pos[t] for t in ts] for ts in targets], (1, 2, 3, 4))
    assert [want[k] for k in (1, 2, 3, 4)] == pytest.approx(curve)


def test_an_image_shared_by_two_splits_is_in_both_galleries(tmp_path):
    """FashionIQ's shirt and toptee val splits share images: the exported record lists both splits."""
    from PIL import Image

    from cirlab.data.public import BenchmarkQuery, BenchmarkSplit, export_dataset
    from cirlab.data.triplets import Dataset

    paths = {}
    for name in "abcd":
        paths[name] = tmp_path / "img" / f"{name}.png"
        paths[name].parent.mkdir(exist_ok=True)
        Image.new("RGB", (4, 4)).save(paths[name])
    one = BenchmarkSplit("s1", [BenchmarkQuery("a", "t", ["b"])], ["a", "b", "c"], paths, False, (10,))
    two = BenchmarkSplit("s2", [BenchmarkQuery("c", "t", ["d"])], ["c", "d"], paths, False, (10,))
    counts = export_dataset(tmp_path / "ds", "x", {"val-1": [one], "val-2": [two]}, {"exclude_reference": False},
                            {"a": "caption of a"})
    ds = Dataset(tmp_path / "ds")
    assert counts["images"] == 4 and counts["captioned"] == 1
    assert ds.gallery("val-1").ids == ["a", "b", "c"] and ds.gallery("val-2").ids == ["c", "d"]
    assert ds.by_id["c"]["split"] == ["val-1", "val-2"] and ds.by_id["a"]["caption"] == "caption of a"
    assert not ds.exclude_reference and ds.gallery("val-1").paths[0] == paths["a"].resolve()
