"""Stage 1 (encoder fine-tuning) and paper 004's pseudo triplets: frozen weights stay frozen, tuned
encoders get their own id and reload, the pseudo-triplet constraints hold on a constructed set."""

import numpy as np
import pytest
import torch
from conftest import make_dataset

from cirlab.data.features import FeatureTable
from cirlab.data.triplets import Triplet
from cirlab.errors import CirlabError
from cirlab.config import PseudoConfig
from cirlab.training.pseudo import make_pseudo_triplets, pseudo_epochs, substitutes


def unit(angle_deg):
    a = np.deg2rad(angle_deg)
    return np.array([np.cos(a), np.sin(a), 0.0], np.float32)


def test_substitutes_keep_the_similarity_window_and_the_cap():
    # cos to image 0: 1 -> 0.9994 (2 deg: a near duplicate), 0.985 (10 deg), 0.940 (20), 0.906 (25), 0.866 (30)
    v = np.stack([unit(0), unit(2), unit(10), unit(20), unit(25), unit(30)])
    subs = substitutes(v, s_max=2, eps_l=0.90, eps_u=0.995)
    assert subs[0].tolist() == [2, 3]  # the near duplicate is out, then the two most similar in the window
    assert substitutes(v, 4, 0.90, 0.995)[0].tolist() == [2, 3, 4]  # 30 deg (0.866) is below eps_l
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(20, 16))
    w = np.concatenate([c + 0.25 * rng.normal(size=(10, 16)) for c in centres])
    w /= np.linalg.norm(w, axis=1, keepdims=True)
    sims = w @ w.T
    for i, s in enumerate(substitutes(w.astype(np.float32), 4, 0.9, 0.995, chunk=37)):  # chunks: same answer
        window = [j for j in np.argsort(-sims[i], kind="stable") if j != i and 0.9 <= sims[i, j] <= 0.995]
        assert s.tolist() == window[:4]


class Scorer:
    """A stage-1 model stand-in over 3-d features: gallery = L2(x), query = L2(L2(x_r) + L2(t))."""

    def eval(self):
        return self

    def embed_gallery(self, v):
        return torch.nn.functional.normalize(v["pooled"], dim=-1)

    def compose(self, r, t):
        return torch.nn.functional.normalize(self.embed_gallery(r) + self.embed_gallery(t), dim=-1)


def test_pseudo_triplets_satisfy_both_constraints():
    ids = ["a", "a1", "a2", "b", "b1", "far"]
    v = np.stack([unit(0), unit(10), unit(1), unit(90), unit(100), unit(180)])
    images = FeatureTable(ids, {"pooled": v})
    texts = FeatureTable(["to b"], {"pooled": unit(90)[None]})
    triplets = [Triplet("a", "to b", ["b"])]
    cfg = PseudoConfig(s_max=4, eps_l=0.9, eps_u=0.995, alpha=0.6)
    made = make_pseudo_triplets(Scorer(), triplets, images, texts, ids, cfg)
    # substitutes: a -> a1 (a2 at 1 deg is a near duplicate); b -> b1; far has none. Candidates:
    # (a1, b): query L2(10 deg + 90 deg) = 50 deg, target 90 deg: cos 40 deg = 0.77 > 0.6, kept;
    # (a, b1): query 45 deg, target 100 deg: cos 55 deg = 0.57 < 0.6, dropped by the matching constraint
    pairs = {(t.reference, t.targets[0]) for t in made.triplets}
    assert made.made == 2 and pairs == {("a1", "b")} and made.kept == 1
    assert made.with_substitutes == 5 and made.images == 6  # every image but "far"
    for t in made.triplets:  # the matching constraint, recomputed
        q = Scorer().compose({"pooled": torch.from_numpy(v[[ids.index(t.reference)]])},
                             {"pooled": torch.from_numpy(unit(90)[None])})
        g = Scorer().embed_gallery({"pooled": torch.from_numpy(v[[ids.index(t.targets[0])]])})
        assert float((q * g).sum()) > cfg.alpha and t.attributes["pseudo"] in ("reference", "target")
    loose = make_pseudo_triplets(Scorer(), triplets, images, texts, ids, PseudoConfig(alpha=0.5))
    assert loose.made == 2 and loose.kept == 2  # both candidates pass a lower alpha
    assert pseudo_epochs(8, 3) == [False, False, False, True, False, False, False, True]
    with pytest.raises(CirlabError, match="unknown pseudo-triplet option"):
        PseudoConfig.from_dict({"smax": 3})


def test_stage2_trains_on_pseudo_epochs_in_the_schedule():
    from cirlab.data.features import QuerySide
    from cirlab.fusion import FeatureDims, build_fusion
    from cirlab.config import TrainConfig
    from cirlab.training.trainer import train_fusion

    rng = np.random.default_rng(0)
    images = FeatureTable([f"i{i}" for i in range(20)], {"pooled": rng.normal(size=(20, 8)).astype(np.float32)})
    texts = FeatureTable(["t"], {"pooled": rng.normal(size=(1, 4)).astype(np.float32)})
    real = [Triplet(f"i{i}", "t", [f"i{(i + 1) % 20}"]) for i in range(20)]
    fake = [Triplet(f"i{i}", "t", [f"i{(i + 2) % 20}"]) for i in range(6)]
    model = build_fusion("sum", FeatureDims(image=8, text=4), embed_dim=8)
    res = train_fusion(model, real, images, QuerySide(images, texts), TrainConfig(epochs=4, batch_size=4),
                       progress=False, pseudo=fake, pseudo_every=1)
    assert res.pseudo_epochs == [2, 4]
    assert len(res.step_losses) == 5 + 2 + 5 + 2  # 20 real triplets = 5 batches, 6 pseudo = 2 batches (4 + 2)


@pytest.mark.slow
def test_stage1_tunes_only_the_last_layers_and_the_tuned_encoders_reload(tmp_path, monkeypatch):
    from cirlab.api import Pipeline
    from cirlab.encoders.cache import FeatureCache
    from cirlab.encoders.base import new_encoder
    from cirlab.encoders.tuned import load_tuned
    from cirlab.data.triplets import Dataset
    from cirlab.training.stage1 import finished_stage1, run_stage1
    from cirlab.training.stage1_config import stage1_config

    ds = make_dataset(tmp_path / "tiny", n=12)
    res = run_stage1(ds, tmp_path / "s1", FeatureCache(tmp_path / "cache"), "efficientnet_lite0", "minilm",
                     {"tune": "both", "image_blocks": 1, "text_layers": 1,
                      "train": {"epochs": 2, "batch_size": 4, "lr": 1e-3}}, progress=False)
    assert res.image_spec == f"tuned:{tmp_path / 's1' / 'image.pt'}" and res.text_spec.endswith("text.pt")
    assert len(res.train.history) == 2 and "val_R@10" in res.train.history[0]
    # reuse: the finished run is read back (nothing rewritten); another config, data set or encoder is not reused
    config = {"tune": "both", "image_blocks": 1, "text_layers": 1, "train": {"epochs": 2, "batch_size": 4, "lr": 1e-3}}
    written = {f: (tmp_path / "s1" / f).stat().st_mtime_ns for f in ("image.pt", "text.pt", "stage1.pt")}
    again = run_stage1(ds, tmp_path / "s1", FeatureCache(tmp_path / "cache"), "efficientnet_lite0", "minilm", config,
                       progress=False, reuse=True)
    assert (again.image_spec, again.text_spec, again.val_recall) == (res.image_spec, res.text_spec, res.val_recall)
    assert written == {f: (tmp_path / "s1" / f).stat().st_mtime_ns for f in written}
    other = Dataset.open(make_dataset(tmp_path / "other", n=12, seed=1))
    assert not finished_stage1(tmp_path / "s1", stage1_config(config), other, "efficientnet_lite0", "minilm")
    assert finished_stage1(tmp_path / "s1", stage1_config(config), Dataset.open(ds), "efficientnet_lite0", "minilm")
    assert not finished_stage1(tmp_path / "s1", stage1_config({**config, "text_layers": 2}), Dataset.open(ds),
                               "efficientnet_lite0", "minilm")
    assert not finished_stage1(tmp_path / "s1", stage1_config(config), Dataset.open(ds), "efficientnet_lite2", "minilm")
    for side, spec in (("image", "efficientnet_lite0"), ("text", "minilm")):
        base, tuned = new_encoder(side, spec), load_tuned(tmp_path / "s1" / f"{side}.pt", side)
        trainable = set(tuned.tunable(1))
        before, after = base.model.state_dict(), tuned.model.state_dict()
        frozen = [k for k in before if k not in trainable]
        assert frozen and all(torch.equal(before[k], after[k]) for k in frozen), side  # weights and BN statistics
        assert any(not torch.equal(before[k], after[k]) for k in trainable), side
        assert tuned.id.startswith(base.id + "+ft1:") and tuned.id != base.id
    # the stage-1 model is a checkpoint on the tuned encoders: it loads, re-encodes under the new ids, searches
    pipe = Pipeline.load(tmp_path / "s1" / "stage1.pt", tmp_path / "cache")
    assert pipe.image_encoder.id.startswith("efficientnet_lite0@224:") and "+ft1:" in pipe.image_encoder.id
    assert not pipe.text_search  # trained on composed queries only: no text-only search
    gallery = pipe.encode_gallery(ds / "images", progress=False)
    hits = pipe.search(gallery, ds / "images" / "img0.png", "make it look like shape 1", 3)
    assert len(hits) == 3
    # the checkpoint carries its tuned files: moved away from them, or with another file where one was, it loads the
    # same encoders from copies written once under CIRLAB_HOME, and leaves the file it found in place as it was
    import os
    import shutil

    monkeypatch.setenv("CIRLAB_HOME", str(tmp_path / "home"))
    shutil.copyfile(tmp_path / "s1" / "stage1.pt", tmp_path / "moved.pt")
    os.rename(tmp_path / "s1", tmp_path / "s1-moved")
    (tmp_path / "s1").mkdir()
    (tmp_path / "s1" / "text.pt").write_bytes(b"another file")
    moved = Pipeline.load(tmp_path / "moved.pt", tmp_path / "cache")
    assert (moved.image_encoder.id, moved.text_encoder.id) == (pipe.image_encoder.id, pipe.text_encoder.id)
    copies = sorted(p.stem for p in (tmp_path / "home" / "models" / "tuned").glob("*.pt"))
    assert copies == sorted(e.id.rpartition(":")[2] for e in (pipe.image_encoder, pipe.text_encoder))
    assert (tmp_path / "s1" / "text.pt").read_bytes() == b"another file"
    assert [h.id for h in moved.search(gallery, ds / "images" / "img0.png", "make it look like shape 1", 3)] == \
        [h.id for h in hits]
    with pytest.raises(CirlabError, match="holds a fine-tuned image encoder"):
        load_tuned(tmp_path / "s1-moved" / "image.pt", "text")
    with pytest.raises(CirlabError, match="unknown stage-1 option"):
        run_stage1(ds, tmp_path / "s2", FeatureCache(tmp_path / "cache"), "efficientnet_lite0", "minilm", {"blocks": 1})


def test_stage1_runs_the_frozen_text_layers_once_a_text_and_gets_the_same_vectors_and_gradients(monkeypatch):
    """The tuned layers read the frozen layers' kept outputs: vectors and gradients equal the whole model's run,
    whatever batch (and padding) computed the kept states, and a text past the bound is still read right."""
    from cirlab.encoders.base import new_encoder
    from cirlab.training import stage1
    from cirlab.training.stage1 import TextSide

    enc = new_encoder("text", "minilm")
    parts = enc.tunable(1)
    for p in parts.values():
        p.requires_grad_(True)
    texts = ["make it red", "could you give it a dark skin tone, please?", "a woman", "x",
             "turn the arrow so that it points to the upper left corner of the picture"]
    whole = enc.pooled_with_grad(texts)
    monkeypatch.setattr(stage1, "FROZEN_STATES_MAX", 30 * enc.dim)  # room for the first texts' states only
    side = TextSide(enc, layers=1)
    side.pooled(texts[:1])
    side.pooled(texts[3:])  # kept from batches of other lengths
    part = side.pooled(texts)
    assert 0 < len(side.frozen) < len(texts) and side.kept <= 30 * enc.dim
    assert torch.allclose(part, whole, atol=1e-5)
    grads = [torch.autograd.grad(v.pow(2).sum() + v[:, 0].sum(), list(parts.values())) for v in (whole, part)]
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(*grads))
    after, fresh = enc.model.state_dict(), new_encoder("text", "minilm").model.state_dict()
    assert after.keys() == fresh.keys() and all(torch.equal(after[k], fresh[k]) for k in fresh)  # the model restored


@pytest.mark.slow
def test_stage1_tunes_the_text_model_on_augmented_wordings(tmp_path, monkeypatch):
    """``train.text_augment`` in stage 1: each epoch a triplet reads one of its text's variants (with keep 0, always
    one where it has any), never a text of another split, the same draws for the same seed; the tuned text encoder
    records the spec; ``text_consistency`` is refused in one line."""
    from cirlab.encoders.cache import FeatureCache
    from cirlab.data.perturb import TextAugment
    from cirlab.data.triplets import Dataset
    from cirlab.training.stage1 import TextSide, run_stage1

    ds = make_dataset(tmp_path / "tiny", n=12)
    spec = "typos=0.2,frames=1,variants=2,keep=0"
    read: list[list[str]] = []
    real = TextSide.pooled
    monkeypatch.setattr(TextSide, "pooled", lambda self, texts: (read.append(list(texts)), real(self, texts))[1])
    config = {"tune": "text", "text_layers": 1,
              "train": {"epochs": 2, "batch_size": 4, "lr": 1e-3, "text_augment": spec}}
    run_stage1(ds, tmp_path / "s1", FeatureCache(tmp_path / "cache"), "efficientnet_lite0", "minilm", config,
               progress=False)
    first, read[:] = list(read), []
    # a finished run is reused only under the augmentation rules it was trained with
    from cirlab.data import perturb
    from cirlab.training.stage1 import finished_stage1
    from cirlab.training.stage1_config import stage1_config

    assert finished_stage1(tmp_path / "s1", stage1_config(config), Dataset.open(ds), "efficientnet_lite0", "minilm")
    rules = perturb.RULES
    monkeypatch.setattr(perturb, "RULES", rules + 1)
    assert not finished_stage1(tmp_path / "s1", stage1_config(config), Dataset.open(ds), "efficientnet_lite0",
                               "minilm")
    monkeypatch.setattr(perturb, "RULES", rules)
    run_stage1(ds, tmp_path / "s1b", FeatureCache(tmp_path / "cache"), "efficientnet_lite0", "minilm", config,
               progress=False)
    assert read == first  # seeded, training and validation alike
    dataset = Dataset.open(ds)
    train = {t.text for t in dataset.triplets("train")}
    variants = TextAugment.parse(spec).variants_of(sorted(train), 0)
    allowed = {v for vs in variants.values() for v in vs} | {t for t, vs in variants.items() if not vs}
    others = {t.text for s in dataset.splits if s != "train" for t in dataset.triplets(s)}
    others |= set(dataset.captions.values())  # validation reads its split's texts, the alignment check captions
    batch_texts = {t for batch in first for t in batch} - others
    assert batch_texts and batch_texts <= allowed and not batch_texts & (train - allowed)
    assert torch.load(tmp_path / "s1" / "text.pt", weights_only=False)["meta"]["stage1"]["text_augment"] == \
        TextAugment.parse(spec).spec
    with pytest.raises(CirlabError, match="stage 1 does not apply text_consistency"):
        run_stage1(ds, tmp_path / "s2", FeatureCache(tmp_path / "cache"), "efficientnet_lite0", "minilm",
                   {"tune": "text", "train": {"text_augment": spec, "text_consistency": 1.0}}, progress=False)


@pytest.mark.parametrize("blocks", [2, "all"])
def test_end_to_end_stage1_from_augmented_images_moves_only_the_tuned_weights(tmp_path, blocks):
    """Reading augmented pixels every batch (64 px input, two micro-batches a step): gradients reach every
    tuned weight, the frozen blocks and all BatchNorm statistics stay as pretrained, and the file reloads
    at its resolution."""
    from cirlab.encoders.base import new_encoder
    from cirlab.encoders.cache import FeatureCache
    from cirlab.encoders.tuned import load_tuned
    from cirlab.training.stage1 import run_stage1

    ds = make_dataset(tmp_path / "tiny", n=12)
    res = run_stage1(ds, tmp_path / "s1", FeatureCache(tmp_path / "cache"), "efficientnet_lite0:size=64", "minilm",
                     {"tune": "image", "image_blocks": blocks, "augment": "scale=0.2,blur=1.5,noise=0.03",
                      "train": {"epochs": 2, "batch_size": 4, "lr": 1e-3, "accumulate": 2}}, progress=False)
    assert len(res.train.history) == 2
    base, tuned = new_encoder("image", "efficientnet_lite0:size=64"), load_tuned(tmp_path / "s1" / "image.pt", "image")
    assert tuned.id.startswith(f"efficientnet_lite0@64:{base.id.split(':')[1]}+ft{blocks}:") and tuned.size == 64
    before, after = base.model.state_dict(), tuned.model.state_dict()
    trainable = set(tuned.tunable(blocks))
    assert all(not torch.equal(before[k], after[k]) for k in trainable)  # every tuned weight got a gradient
    assert all(torch.equal(before[k], after[k]) for k in before if k not in trainable)  # frozen ones and BN stats
    assert any("running" in k for k in before)
    assert ("_conv_stem.weight" in trainable) == (blocks == "all")
    with pytest.raises(CirlabError, match="needs tune image or both"):
        run_stage1(ds, tmp_path / "s2", FeatureCache(tmp_path / "cache"), "efficientnet_lite0", "minilm",
                   {"tune": "text", "augment": "scale=0.1"})
    with pytest.raises(CirlabError, match="image_blocks"):
        run_stage1(ds, tmp_path / "s2", FeatureCache(tmp_path / "cache"), "efficientnet_lite0", "minilm",
                   {"image_blocks": "most"})


def test_stage1_fine_tunes_a_whole_clip_tower_and_leaves_the_base_encoder_alone(tmp_path):
    """Paper 004's CLIP preset on a tiny random CLIP: the whole image tower (from augmented images, with
    gradient checkpointing) and the last text layer move, the rest of the text tower stays; a base
    ``clip:`` encoder of the same folder, built before, still gives its old vectors; the stage-1 model
    reloads on the tuned towers and searches."""
    from PIL import Image

    from cirlab.api import Pipeline
    from cirlab.encoders import build_image_encoder
    from cirlab.encoders.base import new_encoder
    from cirlab.encoders.cache import FeatureCache
    from cirlab.encoders.tuned import load_tuned
    from cirlab.training.stage1 import run_stage1
    from cirlab.training.stage1_config import read_stage1_config
    from conftest import make_tiny_clip

    clip = f"clip:{make_tiny_clip(tmp_path / 'clip')}"
    ds = make_dataset(tmp_path / "tiny", n=12)
    probe = [Image.new("RGB", (40, 40), "red")]
    base = build_image_encoder(clip)
    before_vec = base.encode_images(probe)["pooled"]
    cfg = read_stage1_config("clip_ft")
    assert cfg["train"]["lr"] == 2e-6 and cfg["image_blocks"] == cfg["text_layers"] == "all"
    cfg.update({"text_layers": 1, "augment": "scale=0.2", "gradient_checkpointing": True,
                "train": {**cfg["train"], "epochs": 2, "batch_size": 4, "lr": 1e-3}})
    run_stage1(ds, tmp_path / "s1", FeatureCache(tmp_path / "cache"), clip, clip, cfg, progress=False)
    fresh = new_encoder("image", clip).model.state_dict()
    image, text = (load_tuned(tmp_path / "s1" / f"{side}.pt", side) for side in ("image", "text"))
    tuned_image, tuned_text = image.model.state_dict(), text.model.state_dict()
    moved = lambda state, key: not torch.equal(fresh[key], state[key])  # noqa: E731
    assert all(moved(tuned_image, k) for k in image.tunable("all"))  # the whole image tower
    assert moved(tuned_text, "text_model.encoder.layers.1.mlp.fc1.weight") and moved(tuned_text, "text_projection.weight")
    assert not moved(tuned_text, "text_model.encoder.layers.0.mlp.fc1.weight")
    assert not moved(tuned_text, "text_model.embeddings.token_embedding.weight")
    np.testing.assert_array_equal(base.encode_images(probe)["pooled"], before_vec)  # the base encoder is untouched
    assert not np.allclose(image.encode_images(probe)["pooled"], before_vec)
    pipe = Pipeline.load(tmp_path / "s1" / "stage1.pt", tmp_path / "cache")
    gallery = pipe.encode_gallery(ds / "images", progress=False)
    assert len(pipe.search(gallery, ds / "images" / "img0.png", "make it red", 3)) == 3


def test_augmentations_keep_the_background_and_the_colour_and_are_seeded():
    """No augmentation changes a blank image (the fill is the background) or an object's colour much; the
    draws follow torch's seed; flips and colour jitter are refused."""
    from cirlab.encoders.base import to_pixels
    from cirlab.training.augment import Augment
    from PIL import Image

    mean, std = (127.0,) * 3, (128.0,) * 3
    white, black = (to_pixels([Image.new("RGB", (4, 4), c)], 8, mean, std)[0, :, 0, 0] for c in ("white", "black"))
    red = Image.new("RGB", (64, 64), "white")
    red.paste((200, 30, 30), (20, 20, 44, 44))
    x = to_pixels([Image.new("RGB", (64, 64), "white"), red] * 4, 64, mean, std)
    aug = Augment.parse("scale=0.3,blur=1.5")
    torch.manual_seed(0)
    y = aug(x, white, black)
    assert torch.allclose(y[0::2], x[0::2], atol=1e-5)  # blank stays blank: the fill is the background
    assert not torch.allclose(y[1::2], x[1::2])
    rgb = (y[1::2] * 128 + 127).permute(0, 2, 3, 1).reshape(-1, 3)
    drawn = rgb[(rgb < 235).any(dim=1)]
    assert drawn[:, 0].mean() > 150 and drawn[:, 1:].mean() < 120  # still a red object
    torch.manual_seed(0)
    assert torch.equal(aug(x, white, black), y)
    assert not Augment.parse("") and Augment.parse("noise=0.05").spec == "noise=0.05"
    with pytest.raises(CirlabError, match="no colour jitter or flips"):
        Augment.parse("flip=1")
    with pytest.raises(CirlabError, match="out of range"):
        Augment.parse("scale=1.5")


@pytest.mark.slow
def test_alignment_raises_caption_to_image_recall_and_caff_tasks_run(tmp_path):
    import json

    from cirlab.encoders.cache import FeatureCache
    from cirlab.training.stage1 import run_stage1
    from cirlab.training.stage1_config import read_stage1_config
    from cirlab.training.stage1_tasks import attribute_labels, image_category

    ds = make_dataset(tmp_path / "tiny", n=16)
    cache = FeatureCache(tmp_path / "cache")
    align = run_stage1(ds, tmp_path / "align", cache, "efficientnet_lite0", "minilm",
                       {**read_stage1_config("align"), "train": {"epochs": 30, "batch_size": 8, "lr": 1e-3,
                                                                 "select_best": False}}, progress=False)
    assert align.tasks == {"retrieval": 1.0} and align.alignment["train"]["images"] == 8
    before, after = align.alignment["train"]["before"], align.alignment["train"]["after"]
    assert after[1] > before[1] and after[1] >= 75 and after[5] >= before[5]  # each caption finds its image
    assert align.alignment["val"]["images"] == 4
    from cirlab.api import Pipeline

    pipe = Pipeline.load(tmp_path / "align" / "stage1.pt", tmp_path / "cache")
    assert pipe.text_search  # the aligned projections answer text-only queries
    q = pipe.compose(None, "shape number 3")
    assert q.shape == (512,) and abs(float(np.linalg.norm(q)) - 1) < 1e-4
    gallery = pipe.encode_gallery(ds / "images", progress=False)
    assert len(pipe.search(gallery, None, "shape number 3", 4)) == 4
    # CAFF's domain tasks on images that carry attributes and a category
    records = [json.loads(x) for x in (ds / "images.jsonl").read_text().splitlines()]
    for k, r in enumerate(records):
        r["attributes"] = {"base": f"shape family {k % 3}", "objects": [{"colour": ["red", "blue"][k % 2]}]}
    (ds / "images.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert attribute_labels(records[1]["attributes"]) == {"base=shape family 1", "colour=blue"}
    assert image_category(records[1]) == "shape family 1"
    caff = run_stage1(ds, tmp_path / "caff", cache, "efficientnet_lite0", "minilm",
                      {**read_stage1_config("caff"), "tune": "image", "image_blocks": 1,
                       "train": {"epochs": 2, "batch_size": 8}}, progress=False)
    assert caff.tasks == {"retrieval": 1.0, "attributes": 1.0, "category": 1.0} and not caff.skipped
    assert all(np.isfinite(r["loss"]) for r in caff.train.history)
    plain = make_dataset(tmp_path / "plain", n=8)
    res = run_stage1(plain, tmp_path / "p", cache, "efficientnet_lite0", "minilm",
                     {"tune": "none", "tasks": {"composed": 1.0, "attributes": 1.0, "category": 1.0},
                      "train": {"epochs": 1, "batch_size": 4}}, progress=False)
    assert res.tasks == {"composed": 1.0} and set(res.skipped) == {"attributes", "category"}
    with pytest.raises(CirlabError, match="neither a file nor a preset"):
        read_stage1_config("nope")


@pytest.mark.slow
def test_alignment_from_an_image_caption_file_and_dqu_captions_with_it(tmp_path):
    """Stage 1 on image-caption pairs alone (no triplets); the aligned model then serves as dqu's
    retrieval captioner: dqu picks, for an image, the phrase the aligned model ranks first."""
    import json

    from cirlab.data.triplets import Dataset
    from cirlab.encoders.cache import FeatureCache
    from cirlab.experiment.workspace import Workspace, train_method
    from cirlab.training.stage1 import run_stage1
    from cirlab.training.stage1_config import read_stage1_config

    ds = make_dataset(tmp_path / "tiny", n=16)
    records = [json.loads(x) for x in (ds / "images.jsonl").read_text().splitlines()]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"image": r["file"], "caption": r["caption"]}) + "\n" for r in records)
                     + json.dumps({"image": "not-there.png", "caption": "x"}) + "\n")
    data = Dataset.open(pairs, ds / "images")
    assert data.meta["captions_only"] and data.meta["unknown_images"] == 1 and len(data.images) == 16
    assert {r["split"] for r in data.images} == {"train", "val"}
    cache = FeatureCache(tmp_path / "cache")
    res = run_stage1(pairs, tmp_path / "align", cache, "efficientnet_lite0", "minilm",
                     {**read_stage1_config("align"), "tasks": {"composed": 1.0, "retrieval": 1.0},
                      "train": {"epochs": 20, "batch_size": 8, "lr": 1e-3}}, progress=False, images=ds / "images")
    assert res.tasks == {"retrieval": 1.0} and "composed" in res.skipped  # no triplets: composed is skipped
    assert res.alignment["train"]["after"][1] > res.alignment["train"]["before"][1]
    ws = Workspace.open(ds, cache, progress=False)
    model, _, _ = train_method(ws, "dqu", {"model": {"captions": "captioner", "captioner_model": str(tmp_path / "align")},
                                           "train": {"epochs": 1, "batch_size": 8}}, progress=False, text_head=False)
    assert len(model.captioner_bias) == 512 and model.vocabulary == sorted(r["caption"] for r in records[:8])
    from cirlab.checkpoint import load_checkpoint

    aligned, _ = load_checkpoint(tmp_path / "align" / "stage1.pt", ws.image_encoder, ws.text_encoder)
    pooled = torch.from_numpy(ws.images.views["pooled"][ws.images.rows(["img0", "img5", "img9"])]).float()
    vocab = model.vocabulary
    texts = torch.from_numpy(ws.text_encoder.encode_texts(vocab)["pooled"]).float()
    with torch.no_grad():
        best = (aligned.project_image(pooled) @ aligned.project_text(texts).t()).argmax(dim=1).tolist()
    assert model.caption(pooled) == [vocab[b] for b in best]
    with pytest.raises(CirlabError, match="no 'train' triplets to train a fusion on"):
        train_method(Workspace.open(data, cache, progress=False), "sum", progress=False)


def test_stage1_settings_are_typed_with_their_help_and_merge_over_the_defaults():
    """Stage 1's settings are a dataclass whose fields carry the defaults and the help its flags show, as
    TrainConfig's do; a preset overrides some of them, its train options merged over stage 1's."""
    from dataclasses import fields

    from cirlab.cli import build_parser
    from cirlab.training.stage1_config import STAGE1_TRAIN, Stage1Config, read_stage1_config, stage1_config

    default = Stage1Config()
    assert default.tune == "both" and default.train.lr == STAGE1_TRAIN["lr"] and default.train.logit_scale == 100.0
    assert all(f.metadata["help"] for f in fields(Stage1Config))
    ft = stage1_config(read_stage1_config("clip_ft"))
    assert ft.image_blocks == "all" and ft.train.lr == 2e-6 and ft.train.epochs == STAGE1_TRAIN["epochs"]
    assert ft.tasks == default.tasks and stage1_config(ft) is ft
    assert Stage1Config.from_dict(ft.to_dict()) == ft  # what stage1.json records reads back as the same settings
    help_text = " ".join(build_parser()._subparsers._group_actions[0].choices["train"].format_help().split())
    for f in Stage1Config.flags():
        assert f"--{Stage1Config.flag_name(f)}" in help_text and " ".join(f.metadata["help"].split()[:6]) in help_text
    args = build_parser().parse_args(["train", "--data", "d", "--out", "o", "--stage", "1", "--image-augment",
                                      "scale=0.2", "--image-blocks", "all", "--gradient-checkpointing"])
    assert (args.image_augment, args.image_blocks, args.gradient_checkpointing, args.augment) == \
        ("scale=0.2", "all", True, False)
    with pytest.raises(CirlabError, match="unknown training option"):
        stage1_config({"train": {"lrate": 1.0}})


def test_a_zero_shot_stage_1_reads_no_triplet_and_no_other_split(tmp_path):
    """The zero-shot protocol (docs/zero-shot.md): stage 1 sees the training split's images and their captions, and
    nothing else (no triplet, no modification text, no attribute, no val or test image or caption); asking it for
    triplets is an error. A copy of the data set with every triplet file removed trains the same model, bit for
    bit, and the checkpoint says what the run read."""
    import shutil

    import torch

    from cirlab.checkpoint import read_checkpoint
    from cirlab.data.triplets import Dataset
    from cirlab.encoders import build_image_encoder, build_text_encoder
    from cirlab.encoders.cache import FeatureCache
    from cirlab.training.stage1 import run_stage1
    from cirlab.training.stage1_config import read_stage1_config

    folder = make_dataset(tmp_path / "tiny", n=16)
    full = Dataset(folder)
    zs = full.zero_shot()
    train = set(full.gallery("train").ids)
    assert set(zs.by_id) == train and zs.splits == [] and zs.meta["zero_shot"]["source"] == "tiny"
    assert all(set(r) <= {"id", "file", "split", "caption"} for r in zs.images)
    assert zs.captions == {i: c for i, c in full.captions.items() if i in train}
    assert {r["split"] for r in zs.images} <= {"train", "val"}
    with pytest.raises(CirlabError, match="no split 'train'"):
        zs.triplets("train")
    bare = tmp_path / "bare"
    shutil.copytree(folder, bare)
    for name in full.meta["splits"].values():
        (bare / name).unlink()
    cfg = {**read_stage1_config("align"), "train": {"epochs": 2, "batch_size": 4, "lr": 1e-3}}
    # built once before both runs: an encoder's first construction in a process draws from the seeded generator
    build_image_encoder("efficientnet_lite0"), build_text_encoder("minilm")
    runs = [run_stage1(Dataset(f).zero_shot(), tmp_path / f"run-{n}", FeatureCache(tmp_path / f"cache-{n}"),
                       "efficientnet_lite0", "minilm", cfg, progress=False) for n, f in enumerate((folder, bare))]
    a, b = (read_checkpoint(r.out / "stage1.pt") for r in runs)
    assert a["state_dict"].keys() == b["state_dict"].keys()
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    assert a["meta"]["stage1"]["zero_shot"]["reads"] == "the 'train' images and their captions"
    assert runs[0].tasks == {"retrieval": 1.0} and runs[0].alignment["train"]["images"] > 0


def test_the_zero_shot_flag_is_for_stage_1_only(tmp_path, capsys):
    from cirlab.cli import main

    assert main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "m.pt"), "--zero-shot"]) == 2
    assert "--zero-shot trains stage 1 only (it reads no triplets): use --stage 1" in capsys.readouterr().err
