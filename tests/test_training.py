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
from cirlab.config import TrainConfig
from cirlab.training.trainer import train_fusion


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


def test_infonce_takes_extra_negatives_and_masks_the_positives_image_among_them():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    t = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [1.0, 0.0]])  # two targets, then two references
    # query 0: columns 0 (positive), 1, 2 (a reference); column 3 is its own target's image (key 5): masked
    # query 1: columns 1 (positive), 0, 2, 3 (column 3 is image 5, a negative for query 1)
    z0 = math.log(math.exp(2) + math.exp(0) + math.exp(1.2)) - 2
    z1 = math.log(math.exp(2) + math.exp(0) + math.exp(1.6) + math.exp(0)) - 2
    keys = torch.tensor([5, 6, 8, 5])
    assert float(batch_infonce(q, t, 2.0, keys)) == pytest.approx((z0 + z1) / 2, rel=1e-6)


def test_reference_negatives_put_the_batchs_references_among_the_negatives():
    """With ``reference_negatives`` the loss of the same model on the same batch is higher: the reference,
    which a sum of vectors sits closest to, is now a wrong answer it is scored against."""
    from cirlab.training.trainer import TripletIndex, reference_negatives

    images, texts, triplets = _toy()
    index = TripletIndex.build(triplets, images, QuerySide(images, texts))
    assert [images.keys[r] for r in index.ref_gallery[:3]] == [t.reference for t in triplets[:3]]
    model = build_fusion("sum", TOY_DIMS, embed_dim=16)
    b = np.arange(12)
    negatives, keys = reference_negatives(model, images, index, b, torch.device("cpu"))
    assert sorted(keys.tolist()) == sorted(set(index.ref_gallery[b].tolist())) and len(negatives) == len(keys)
    losses = []
    for on in (False, True):
        res = train_fusion(build_fusion("sum", TOY_DIMS, embed_dim=16), triplets, images, QuerySide(images, texts),
                           TrainConfig(epochs=1, batch_size=32, lr=1e-9, reference_negatives=on), progress=False)
        losses.append(res.history[0]["loss"])
    assert losses[1] > losses[0] + 0.1, losses


def test_mined_negatives_are_each_querys_nearest_gallery_images_but_its_target():
    """Hard-negative mining: the ``k`` snapshot rows nearest each query, its own target left out, embedded again
    with gradients; a run with mining scores the same model against them, so its loss is higher."""
    from cirlab.training.trainer import TripletIndex, gallery_snapshot, mined_negatives

    images, texts, triplets = _toy()
    index = TripletIndex.build(triplets, images, QuerySide(images, texts))
    model = build_fusion("sum", TOY_DIMS, embed_dim=16)
    snapshot = gallery_snapshot(model, images, torch.device("cpu"), chunk=7)
    assert snapshot.shape == (40, 16) and model.training, "the snapshot is taken in eval mode, then training resumes"
    b = np.arange(5)
    query = model(images.tensors(index.ref[b]), texts.tensors(index.text[b]))
    sims = query.detach() @ snapshot.t()
    sims[np.arange(5), index.target[b]] = float("-inf")
    expected = set(sims.topk(3, dim=1).indices.flatten().tolist())
    negatives, rows = mined_negatives(model, images, snapshot, query, index, b, 3, torch.device("cpu"))
    assert set(rows.tolist()) == expected and len(negatives) == len(rows) and negatives.requires_grad
    assert torch.allclose(negatives.detach(), snapshot[rows], atol=1e-6)
    # a query's other right answers are never its negatives
    index.other_targets[0] = sims[0].topk(3).indices.numpy()
    _, rows = mined_negatives(model, images, snapshot, query[:1], index, b[:1], 3, torch.device("cpu"))
    assert not set(rows.tolist()) & set(index.other_targets[0].tolist())
    losses = []
    for k in (0, 4):
        res = train_fusion(build_fusion("sum", TOY_DIMS, embed_dim=16), triplets, images, QuerySide(images, texts),
                           TrainConfig(epochs=1, batch_size=8, lr=1e-9, hard_negatives=k), progress=False)
        losses.append(res.history[0]["loss"])
    assert losses[1] > losses[0] + 0.1, losses


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
    triplets = [Triplet(f"i{g * 4 + a}", f"t{b}", [f"i{g * 4 + b}"])
                for g in range(10) for a in range(4) for b in range(4) if a != b]
    return images, texts, triplets


def test_trainer_lowers_the_loss_on_a_tiny_set():
    images, texts, triplets = _toy()
    model = build_fusion("sum", TOY_DIMS, embed_dim=16)
    res = train_fusion(model, triplets, images, QuerySide(images, texts), TrainConfig(epochs=15, batch_size=32, lr=1e-2),
                       progress=False)
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

    res = train_fusion(model, triplets, images, QuerySide(images, texts), TrainConfig(epochs=4, batch_size=32, lr=1e-2),
                       False, validate)
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


@pytest.mark.slow
def test_the_text_head_learns_to_find_the_image_of_a_caption():
    """Captions and images related by an unknown linear map: a trained head finds the right image
    of held-out captions far above chance, an untrained one does not."""
    import torch.nn.functional as F

    from cirlab.fusion.text_head import head_from_state, head_state
    from cirlab.training.align import fit_text_head, text_recall

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


def test_schedules_warmup_and_step_decay():
    step = TrainConfig(schedule="step", step_at=0.5, step_gamma=0.1)
    assert [step.lr_factor(s, 10, 5) for s in (0, 4, 5, 9)] == [1.0, 1.0, 0.1, 0.1]  # paper 000: x0.1 at half
    cos = TrainConfig(schedule="cosine", warmup_epochs=1)
    factors = [cos.lr_factor(s, 20, 4) for s in range(20)]
    assert factors[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])  # warm-up over one epoch of 4 steps
    assert all(a >= b for a, b in zip(factors[4:], factors[5:])) and factors[-1] < 0.02
    assert TrainConfig().lr_factor(7, 10, 2) == 1.0
    # the rate the optimiser actually used, recorded per epoch
    images, texts, triplets = _toy()
    model = build_fusion("sum", TOY_DIMS, embed_dim=16)
    res = train_fusion(model, triplets, images, QuerySide(images, texts),
                       TrainConfig(epochs=4, batch_size=40, lr=1e-2, schedule="step", optimizer="adam"), progress=False)
    assert [round(r["lr"], 6) for r in res.history] == [0.01, 0.001, 0.001, 0.001]


def test_bad_training_options_are_one_line_errors():
    for bad, match in (({"optimizer": "sgdx"}, "optimizer 'sgdx' unknown"), ({"schedule": "linear"}, "schedule"),
                       ({"monitor": "mAP"}, "monitor 'mAP' not understood"), ({"epochs": 0}, "epochs >= 1"),
                       ({"warmup": 2}, "unknown training option"), ({"hard_negatives": -1}, "hard_negatives must be")):
        with pytest.raises(CirlabError, match=match):
            TrainConfig.from_dict(bad)


def test_gradient_clipping_bounds_the_gradient_the_optimiser_sees():
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    images, texts, triplets = _toy()
    norms: list[float] = []

    def record(opt, args, kwargs):
        grads = [p.grad for g in opt.param_groups for p in g["params"] if p.grad is not None]
        norms.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))

    handle = register_optimizer_step_pre_hook(record)
    try:
        seen = {}
        for clip in (0.0, 0.05):
            norms.clear()
            train_fusion(build_fusion("sum", TOY_DIMS, embed_dim=16), triplets, images, QuerySide(images, texts),
                         TrainConfig(epochs=2, batch_size=32, lr=1e-2, grad_clip=clip), progress=False)
            seen[clip] = list(norms)
    finally:
        handle.remove()
    assert max(seen[0.0]) > 0.05  # unclipped gradients are larger than the bound...
    assert max(seen[0.05]) <= 0.05 * (1 + 1e-4) and len(seen[0.05]) == 8  # ...and clipped ones never exceed it


def test_early_stopping_on_validation_r10():
    images, texts, triplets = _toy()
    model = build_fusion("sum", TOY_DIMS, embed_dim=16)
    scores = iter([(90.0, 10.0), (5.0, 20.0), (1.0, 15.0), (99.0, 12.0), (0.0, 0.0), (0.0, 0.0)])

    def validate(m):
        r1, r10 = next(scores)
        return {1: r1, 10: r10}

    res = train_fusion(model, triplets, images, QuerySide(images, texts),
                       TrainConfig(epochs=6, batch_size=32, lr=1e-2, monitor="R@10", patience=2), False, validate)
    assert res.best_epoch == 2 and len(res.history) == 4  # R@10 peaked at epoch 2; two stale epochs, stop


def test_a_resumed_run_takes_the_uninterrupted_runs_steps(tmp_path):
    """Stop after epoch 2 of 4 and resume: the next step's loss, every later loss and the final weights
    equal those of the run that never stopped (dropout, batch order, Adam moments, schedule restored)."""
    from cirlab.training.trainer import write_metrics_log

    images, texts, triplets = _toy()
    cfg = dict(epochs=4, batch_size=32, lr=5e-3, schedule="cosine", warmup_epochs=1, grad_clip=1.0, select_best=False)
    side = QuerySide(images, texts)

    def fresh():  # the same initial weights each time
        torch.manual_seed(0)
        return build_fusion("combiner", TOY_DIMS, embed_dim=16, hidden_dim=32, dropout=0.3)

    calls = []

    def validate(m):  # the interrupted run is killed during epoch 3's validation, after epoch 2 was saved
        calls.append(1)
        if crash and len(calls) == 3:
            raise KeyboardInterrupt
        return {1: 0.0, 10: 0.0}

    crash = False
    whole = fresh()
    full = train_fusion(whole, triplets, images, side, TrainConfig(**cfg), False, validate)
    crash, calls = True, []
    first = fresh()
    with pytest.raises(KeyboardInterrupt):
        train_fusion(first, triplets, images, side, TrainConfig(**cfg), False, validate, state_path=tmp_path / "state.pt")
    crash = False
    later = fresh()
    rest = train_fusion(later, triplets, images, side, TrainConfig(**cfg), False, validate,
                        state_path=tmp_path / "state.pt", resume=True, log_path=tmp_path / "m.csv")
    per_epoch = len(full.step_losses) // 4
    assert rest.resumed_from == 2 and len(rest.history) == 4
    assert rest.step_losses[0] == full.step_losses[2 * per_epoch]  # the next step after resuming
    assert rest.step_losses == full.step_losses[2 * per_epoch:]
    for (k, a), b in zip(whole.state_dict().items(), later.state_dict().values()):
        assert torch.equal(a, b), k
    lines = (tmp_path / "m.csv").read_text().splitlines()
    assert lines[0].startswith("epoch,loss,lr,seconds,val_R@1") and len(lines) == 5
    assert write_metrics_log(tmp_path / "m.jsonl", rest.history).read_text().count("\n") == 4
    with pytest.raises(CirlabError, match="other settings \\(lr\\)"):
        train_fusion(fresh(), triplets, images, side, TrainConfig(**{**cfg, "lr": 1e-3}), False,
                     state_path=tmp_path / "state.pt", resume=True)
    with pytest.raises(CirlabError, match="nothing to resume"):
        train_fusion(fresh(), triplets, images, side, TrainConfig(**cfg), False, state_path=tmp_path / "none.pt",
                     resume=True)


def test_gradient_accumulation_equals_one_step_on_a_mean_loss():
    """With a loss that is a mean over rows, two micro-batches give the same update as the whole batch."""
    from cirlab.training.trainer import fit

    x, y = torch.randn(8, 3), torch.randn(8, 1)
    results = []
    for parts in (1, 2, 4):
        torch.manual_seed(0)
        model = torch.nn.Linear(3, 1)
        fit(model, 8, lambda rows: ((model(x[rows]) - y[rows]) ** 2).mean(),
            TrainConfig(epochs=2, batch_size=8, lr=0.1, accumulate=parts), progress=False)
        results.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.allclose(results[0], results[1], atol=1e-6) and torch.allclose(results[0], results[2], atol=1e-6)
    with pytest.raises(CirlabError, match="micro-batch"):
        TrainConfig.from_dict({"batch_size": 4, "accumulate": 3})
