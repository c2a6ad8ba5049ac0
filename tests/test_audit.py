"""The modality audit (eval/audit.py): on a hand-built gallery where the image alone solves one query, the text alone
another, and only the composed query the third, each query's three ranks, the composition subset and the gap come out
as worked by hand."""

import numpy as np
import pytest

from cirlab.data.features import FeatureTable, QuerySide
from cirlab.data.triplets import Triplet
from cirlab.eval.audit import BLANK, ModalityAudit, blank_queries, evaluate_audited
from cirlab.fusion import FeatureDims, build_fusion

E = np.eye(5, dtype=np.float32)


def unit(v):
    return v / np.linalg.norm(v)


# zs_sum in one shared 5-d space (the maps are the identity): q = L2(L2(r) + L2(t)), the gallery as it is
GALLERY = {"A": E[0], "B": unit(E[0] + .3 * E[1]), "C": unit(E[2] + .2 * E[0]), "D": E[3], "E": unit(E[2] + E[3]),
           "F": E[4], "G": E[1], "H": unit(E[2] + .1 * E[0] + .4 * E[4]), "J": unit(E[3] + .8 * E[0] + .3 * E[4])}
QUERIES = [
    Triplet("A", "more two", ["B"]),  # B is A's nearest other image: the image alone solves it
    Triplet("G", "three", ["C"]),  # the blank reference (mostly e1) plus e3 lands on C: the text alone solves it
    Triplet("C", "four", ["E"]),  # C's nearest is H, blank + e4 lands on J; C + e4 lands on E: only composed
]


@pytest.fixture(scope="module")
def audited():
    images = FeatureTable(list(GALLERY), {"pooled": np.stack(list(GALLERY.values()))})
    texts = FeatureTable(["more two", "three", "four"], {"pooled": np.stack([E[1], E[2], E[3]])})
    model = build_fusion("zs_sum", FeatureDims(image=5, text=5))
    side = QuerySide(images, texts)
    blank = blank_queries(model, side, QUERIES, text_encoder=None)
    return evaluate_audited(model, QUERIES, images, side, list(GALLERY), blank), blank


def test_the_blank_reference_is_the_mean_of_the_queried_references(audited):
    _, blank = audited
    assert blank.key("C", "four") == (BLANK, "four")
    np.testing.assert_allclose(blank.images.views["pooled"][0], (GALLERY["A"] + GALLERY["G"] + GALLERY["C"]) / 3,
                               atol=1e-6)


def test_the_audit_finds_the_query_the_image_alone_solves(audited):
    ev, _ = audited
    assert ev.recall[1] == pytest.approx(100.0)
    ranks = ev.audit.per_query()
    # G alone (e2) is at cosine 0 to C and to six other images (B alone is nearer): C's image-only rank is any place
    # of that tie, 2 to 8, as the search orders equal scores
    assert 2 <= ranks[1]["image"] <= 8
    assert [(r["composed"], r["image"], r["text"]) for r in ranks] == [(1, 1, 2), (1, ranks[1]["image"], 1), (1, 2, 2)]
    assert [r["subset"] for r in ranks] == [False, False, True]
    s = ev.audit.summary()
    assert s["image R@1"] == pytest.approx(100 / 3) and s["text R@1"] == pytest.approx(100 / 3)
    assert s["subset share"] == pytest.approx(100 / 3) and s["subset R@1"] == pytest.approx(100.0)
    assert s["composition gap"] == pytest.approx(100 - 100 / 3)


def test_the_summary_of_hand_set_ranks():
    inf = np.inf
    audit = ModalityAudit(composed=np.array([0, 3, 0, inf]), image=np.array([0, 1, 4, 2]), text=np.array([5, 0, 2, inf]))
    s = audit.summary()
    assert audit.subset.tolist() == [False, False, True, True]
    assert (s["composed R@1"], s["composed R@10"], s["image R@1"], s["text R@1"]) == (50.0, 75.0, 25.0, 25.0)
    assert (s["subset share"], s["subset R@1"], s["subset R@10"], s["composition gap"]) == (50.0, 50.0, 50.0, 25.0)
    assert audit.per_query()[3] == {"composed": None, "image": 3, "text": None, "subset": True}
