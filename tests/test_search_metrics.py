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
