import math

import numpy as np
import pytest
import torch

from cirlab import checkpoint
from cirlab.data.features import FeatureTable, QuerySide
from cirlab.data.triplets import Triplet
from cirlab.errors import CirlabError
from cirlab.fusion import FeatureDims, build_fusion
from cirlab.training.losses import batch_infonce, batch_triplet
from cirlab.training.trainer import TrainConfig, train_fusion


def test_infonce_against_hand_computation():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    t = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    # logits = 2 * q t^T = [[2, 1.2], [0, 1.6]]; loss = mean(-log softmax diagonal)
    expected = 0.5 * ((math.log(math.exp(2) + math.exp(1.2)) - 2) + (math.log(1 + math.exp(1.6)) - 1.6))
    assert float(batch_infonce(q, t, 2.0)) == pytest.approx(expected, rel=1e-6)


def test_infonce_masks_duplicate_targets():
    q = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    t = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    # both queries share one target image: without masking each sees its positive as a negative
    assert float(batch_infonce(q, t, 5.0)) == pytest.approx(math.log(2), rel=1e-6)
    assert float(batch_infonce(q, t, 5.0, torch.tensor([7, 7]))) == pytest.approx(0.0, abs=1e-6)


def test_triplet_loss_against_hand_computation():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    t = torch.tensor([[0.8, 0.6], [0.0, 1.0], [1.0, 0.0]])
    # sims = q t^T = [[.8, 0, 1], [.6, 1, 0], [.96, .8, .6]]
    # hardest negatives: row0 max(0, 1) = 1; row1 max(.6, 0) = .6; row2 max(.96, .8) = .96
    # losses, margin .2: max(0, .2 - .8 + 1) = .4; max(0, .2 - 1 + .6) = 0; max(0, .2 - .6 + .96) = .56
    assert float(batch_triplet(q, t, 0.2)) == pytest.approx((0.4 + 0.0 + 0.56) / 3, rel=1e-6)
    # target 2 is the same image as target 0: it is not a negative of query 0 (nor 0 of query 2)
    # row0 hardest = 0 -> .2 - .8 + 0 = 0 (clamped); row2 hardest = .8 -> .2 - .6 + .8 = .4
    assert float(batch_triplet(q, t, 0.2, torch.tensor([5, 6, 5]))) == pytest.approx((0.0 + 0.0 + 0.4) / 3, rel=1e-6)


def _toy(n_img=40, n_txt=4, seed=0):
    """Images in 10 groups of 4 variants; text j means "variant j": the target is group g, variant j."""
    rng = np.random.default_rng(seed)
    group = rng.normal(size=(10, 32))
    variant = rng.normal(size=(4, 32))
    feats = np.stack([group[i // 4] + 0.7 * variant[i % 4] for i in range(n_img)]).astype(np.float32)
    images = FeatureTable([f"i{i}" for i in range(n_img)], {"pooled": feats})
    texts = FeatureTable([f"t{j}" for j in range(n_txt)], {"pooled": rng.normal(size=(n_txt, 8)).astype(np.float32)})
    triplets = [Triplet(f"i{g * 4 + a}", f"t{b}", [f"i{g * 4 + b}"]) for g in range(10) for a in range(4) for b in range(4) if a != b]
    return images, texts, triplets


def test_trainer_lowers_the_loss_on_a_tiny_set():
    images, texts, triplets = _toy()
    model = build_fusion("sum", TOY_DIMS, embed_dim=16)
    res = train_fusion(model, triplets, images, QuerySide(images, texts), TrainConfig(epochs=15, batch_size=32, lr=1e-2), progress=False)
    assert res.history[-1]["loss"] < 0.5 * res.history[0]["loss"]
    assert res.triplets == 120


def test_select_best_keeps_the_best_validation_epoch():
    images, texts, triplets = _toy()
    model = build_fusion("sum", TOY_DIMS, embed_dim=16)
    scores = iter([10.0, 50.0, 20.0, 5.0])
    snapshots = []

    def validate(m):
        snapshots.append({k: v.clone() for k, v in m.state_dict().items()})
        return {1: next(scores), 10: 0.0}

    res = train_fusion(model, triplets, images, QuerySide(images, texts), TrainConfig(epochs=4, batch_size=32, lr=1e-2), False, validate)
    assert res.best_epoch == 2
    for k, v in model.state_dict().items():
        assert torch.equal(v, snapshots[1][k])


TOY_DIMS = FeatureDims(image=32, text=8)


class _Enc:
    """Stands in for an encoder's identity (the checkpoint only reads spec, id and shapes)."""

    def __init__(self, id_, spec="x", dim=32):
        self.id, self.spec, self.dim = id_, spec, dim
        self.token_dim, self.num_tokens, self.levels_shape = dim, 0, (0, 0)


def test_checkpoint_round_trip_and_refusals(tmp_path):
    images, texts, _ = _toy()
    model = build_fusion("combiner", TOY_DIMS, embed_dim=16, projection_dim=8, hidden_dim=8).eval()
    ie, te = _Enc("img-a", dim=32), _Enc("txt-a", dim=8)
    path = checkpoint.save_checkpoint(tmp_path / "m.pt", model, {"embed_dim": 16, "projection_dim": 8, "hidden_dim": 8},
                                      {"epochs": 1}, ie, te)
    loaded, meta = checkpoint.load_checkpoint(path, ie, te)
    ref, txt = images.tensors(np.arange(5)), texts.tensors(np.arange(4).repeat(2)[:5])
    assert torch.equal(loaded.compose(ref, txt), model.compose(ref, txt))
    assert meta["method"] == "combiner" and meta["cirlab_version"]

    with pytest.raises(CirlabError, match="trained on image features of img-a, but img-b is loaded"):
        checkpoint.load_checkpoint(path, _Enc("img-b", dim=32), te)
    raw = torch.load(path, weights_only=True)
    raw["meta"]["format_version"] = 99
    torch.save(raw, tmp_path / "future.pt")
    with pytest.raises(CirlabError, match="checkpoint format 99.*retrain"):
        checkpoint.load_checkpoint(tmp_path / "future.pt", ie, te)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CirlabError, match="not a readable cirlab checkpoint"):
        checkpoint.load_checkpoint(tmp_path / "junk.pt", ie, te)
    with pytest.raises(CirlabError, match="no model at"):
        checkpoint.load_checkpoint(tmp_path / "absent.pt", ie, te)


def test_the_text_head_learns_to_find_the_image_of_a_caption():
    """Captions and images related by an unknown linear map: a trained head finds the right image
    of held-out captions far above chance, an untrained one does not."""
    import torch.nn.functional as F

    from cirlab.training.align import fit_text_head, head_from_state, head_state, text_recall

    g = torch.Generator().manual_seed(0)
    texts = torch.randn(300, 24, generator=g)
    images = F.normalize(texts @ torch.randn(24, 32, generator=g), dim=-1)
    train, test = (texts[:240], images[:240]), (texts[240:], images[240:])
    untrained, _ = fit_text_head(*train, embed_dim=32, epochs=0)
    head, result = fit_text_head(*train, embed_dim=32, epochs=60, held_out=test)
    assert text_recall(untrained, *test)[1] < 15
    assert result.recall[1] > 60 and result.pairs == 240
    again = head_from_state(head_state(head))  # the checkpoint round trip
    assert torch.equal(again(test[0]), head(test[0]).detach())
