import json

import pytest

from cirlab.data.emojiedit import FACTORS, build_emojiedit, parse_name
from cirlab.data.triplets import Dataset
from cirlab.errors import CirlabError


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("ee")
    counts = build_emojiedit(root / "a", seed=0)
    return root, counts


def test_parse_names():
    assert parse_name("man_red_hair_dark_skin_tone") == {"family": "person", "gender": "man", "hair": "red_hair",
                                                         "base": "person", "tone": "dark"}
    assert parse_name("woman_running_facing_right") == {"family": "person", "gender": "woman", "base": "running",
                                                        "facing": "right"}
    assert parse_name("green_heart") == {"family": "colour", "base": "heart", "colour": "green"}
    assert parse_name("up-left_arrow")["direction"] == "up-left"
    assert parse_name("kiss_man_man_light_skin_tone_dark_skin_tone") is None


def test_splits_are_deterministic(built, tmp_path):
    root, _ = built
    build_emojiedit(tmp_path / "b", seed=0)
    for f in ("train.jsonl", "val.jsonl", "test.jsonl", "images.jsonl"):
        assert (root / "a" / f).read_text() == (tmp_path / "b" / f).read_text()
    build_emojiedit(tmp_path / "c", seed=1)
    assert (root / "a" / "test.jsonl").read_text() != (tmp_path / "c" / "test.jsonl").read_text()


def test_splits_are_disjoint_by_base_and_closed(built):
    root, counts = built
    ds = Dataset(root / "a")
    split_of = {r["id"]: r["split"] for r in ds.images}
    bases = {s: {r["attributes"]["base"] for r in ds.images if r["split"] == s} for s in ("train", "val", "test")}
    assert not bases["train"] & bases["test"] and not bases["train"] & bases["val"] and not bases["val"] & bases["test"]
    for split in ds.splits:
        ts = ds.triplets(split)
        assert len(ts) == sum(counts["triplets"][split].values()) > 0
        for t in ts:
            assert split_of[t.reference] == split and all(split_of[x] == split for x in t.targets)
            assert (ds.image_dir / ds.by_id[t.reference]["file"]).is_file()


def test_each_triplet_is_a_one_factor_edit(built):
    ds = Dataset(built[0] / "a")
    for t in ds.triplets("test") + ds.triplets("train")[:2000]:
        a = ds.by_id[t.reference]["attributes"]
        for target in t.targets:
            b = ds.by_id[target]["attributes"]
            assert a["base"] == b["base"]
            diff = [k for k in FACTORS if a.get(k) != b.get(k)]
            assert diff == [t.attributes["edit"]], (t, a, b)


def test_datasheet_counts(built):
    _, counts = built
    assert sum(counts["images"].values()) > 1500
    assert {"tone", "gender", "hair", "colour", "direction", "facing"} <= set(counts["triplets"]["train"])
    assert counts["triplets"]["test"]["tone"] > 1000
    meta = json.loads((built[0] / "a" / "dataset.json").read_text())
    assert "CC-BY 4.0" in meta["license"]


def test_a_held_out_art_style_keeps_the_bases_texts_and_splits(built, tmp_path, monkeypatch):
    """Twemoji for training, Fluent Emoji (flat) held out: the test split is drawn only in the held-out
    style, over the same held-out bases and texts as the Twemoji test split, whose queries become
    test-twemoji; every triplet stays within one style; no held-out-style image is in train or val."""
    import numpy as np
    from PIL import Image

    from cirlab.errors import CirlabError

    counts = build_emojiedit(tmp_path / "styles", seed=0, styles=["twemoji"], test_style="fluent-flat")
    ds, plain = Dataset.open(tmp_path / "styles"), Dataset.open(built[0] / "a")
    style_of = {r["id"]: r["style"] for r in ds.images}
    assert {style_of[i] for i in ds.gallery("train").ids + ds.gallery("val").ids} == {"twemoji"}
    assert {style_of[i] for i in ds.gallery("test").ids} == {"fluent-flat"}
    assert [(t.reference, t.text, t.targets) for t in ds.triplets("test-twemoji")] == \
        [("twemoji_" + t.reference, t.text, ["twemoji_" + x for x in t.targets]) for t in plain.triplets("test")]
    held_out = ds.triplets("test")
    assert 0.9 * len(plain.triplets("test")) < len(held_out) <= len(plain.triplets("test"))
    bases, plain_bases = {t.attributes["base"] for t in held_out}, {t.attributes["base"] for t in plain.triplets("test")}
    assert bases <= plain_bases and len(bases) >= 0.8 * len(plain_bases)  # Fluent lacks a few (wrestling, ...)
    plain_texts = {(t.reference, t.text) for t in plain.triplets("test")}
    assert all((t.reference.removeprefix("fluent-flat_"), t.text) in plain_texts for t in held_out)
    assert all(style_of[x] == style_of[t.reference] for s in ds.splits for t in ds.triplets(s) for x in t.targets)
    assert counts["missing_per_style"]["fluent-flat"] == len(plain.gallery("test").ids) - len(ds.gallery("test").ids)
    a = np.asarray(Image.open(tmp_path / "styles" / "images" / "fluent-flat_1f385.png"), np.float32)
    b = np.asarray(Image.open(tmp_path / "styles" / "images" / "twemoji_1f385.png"), np.float32)
    assert a.shape == b.shape == (72, 72, 3) and (a < 200).any(axis=2).mean() > 0.2  # drawn, not blank
    assert np.abs(a - b).mean() > 20  # another artwork of the same emoji
    with pytest.raises(CirlabError, match="also a training style"):
        build_emojiedit(tmp_path / "x", styles=["fluent-flat"], test_style="fluent-flat")
    monkeypatch.setenv("CIRLAB_NPM", str(tmp_path / "nowhere"))
    import cirlab.data.emojiedit as ee
    ee.fluent_names.cache_clear()
    with pytest.raises(CirlabError, match="npm install --prefix"):
        build_emojiedit(tmp_path / "y", styles=["fluent-color"])
    ee.fluent_names.cache_clear()


@pytest.fixture(scope="module")
def mirrored(tmp_path_factory):
    """The build with mirror pairs in train (``--mirror-pairs``): its folder and counts."""
    root = tmp_path_factory.mktemp("mirrored") / "m"
    return root, build_emojiedit(root, seed=0, mirror_pairs=True)


def test_mirror_pairs_add_synthetic_facing_edits_to_training_only(built, mirrored):
    """Each added training image is its source mirrored, with a facing edit each way; validation and test (and
    every original training triplet) are as before, byte for byte."""
    import numpy as np
    from PIL import Image

    root, counts = built
    m, extra = mirrored
    for split in ("val", "test"):
        assert (root / "a" / f"{split}.jsonl").read_text() == (m / f"{split}.jsonl").read_text()
    before = (root / "a" / "train.jsonl").read_text().splitlines()
    after = (m / "train.jsonl").read_text().splitlines()
    assert after[:len(before)] == before
    added = [json.loads(line) for line in after[len(before):]]
    assert len(added) == extra["triplets"]["train"]["facing"] - counts["triplets"]["train"]["facing"] > 1000
    ds = Dataset(m)
    facing_bases = {r["attributes"]["base"] for r in ds.images if r["attributes"].get("facing") and
                    not r["attributes"].get("synthetic")}
    for t in added[:50]:
        a, b = ds.by_id[t["reference"]], ds.by_id[t["targets"][0]]
        assert t["attributes"]["edit"] == "facing" and a["split"] == b["split"] == "train"
        assert a["attributes"]["base"] not in facing_bases
        source, mirror = (a, b) if b["id"].endswith("-mirror") else (b, a)
        assert mirror["id"] == source["id"] + "-mirror" and ("right" in t["text"]) == (mirror is b)
        pixels = [np.asarray(Image.open(ds.image_dir / x["file"]).convert("RGB")) for x in (source, mirror)]
        np.testing.assert_array_equal(pixels[0][:, ::-1], pixels[1])


def test_mirror_pairs_in_val_leave_train_and_test_as_they_were(built, mirrored, tmp_path):
    """``mirror_pairs=["train", "val"]``: the train split is that of the train-only build and test that of the plain
    build, byte for byte; val keeps its real triplets first and gains facing edits between its own images and their
    mirrors; the test split is refused."""
    root, counts = built
    m, only = mirrored
    both = build_emojiedit(tmp_path / "v", seed=0, mirror_pairs=["val", "train"])
    assert (m / "train.jsonl").read_text() == (tmp_path / "v" / "train.jsonl").read_text()
    assert (root / "a" / "test.jsonl").read_text() == (tmp_path / "v" / "test.jsonl").read_text()
    before = (root / "a" / "val.jsonl").read_text().splitlines()
    after = (tmp_path / "v" / "val.jsonl").read_text().splitlines()
    assert after[:len(before)] == before and counts["triplets"]["val"].get("facing", 0) == 0
    assert len(after) - len(before) == both["triplets"]["val"]["facing"] > 100
    assert only["triplets"]["val"] == counts["triplets"]["val"]
    ds = Dataset(tmp_path / "v")
    for t in map(json.loads, after[len(before):]):
        a, b = ds.by_id[t["reference"]], ds.by_id[t["targets"][0]]
        assert t["attributes"]["edit"] == "facing" and a["split"] == b["split"] == "val"
        assert {a["id"], b["id"]} == {a["id"].removesuffix("-mirror"), a["id"].removesuffix("-mirror") + "-mirror"}
    assert ds.meta["mirror_pairs"] == ["train", "val"]
    with pytest.raises(CirlabError, match="test split keeps the real facing edits"):
        build_emojiedit(tmp_path / "x", seed=0, mirror_pairs=["test"])


def test_the_paraphrase_bank_shares_no_text_with_training(built):
    """Every EmojiEdit paraphrase, for every value an edit can take, differs from every training phrasing of every
    edit in every version of the phrasing grammar; each test query gets five distinct phrasings of its own edit."""
    from cirlab.data.emojiedit import COLOURS, DIRECTIONS, GENDERS, HAIR, TONES, describe, edit_words
    from cirlab.data.paraphrase import bank, paraphrased

    values = {"tone": (*TONES, None), "gender": (*GENDERS, None), "hair": (*HAIR, None), "colour": (*COLOURS, None),
              "direction": (*DIRECTIONS, None), "facing": ("left", "right", None)}  # None: the factor is absent
    from cirlab.data.phrasing import versions

    training = {p for f, vs in values.items() for v in vs for version in versions() for p in describe(f, v, version)}
    assert len(training) > 2 * len({p for f, vs in values.items() for v in vs for p in describe(f, v)})
    ds = Dataset(built[0] / "a")
    assert {t.text for s in ("train", "val") for t in ds.triplets(s)} <= training
    every = {p.replace("{v}", words) for f, vs in values.items() for v in vs
             for family, words in [edit_words(f, v)]
             for p in bank()["emojiedit"][family]}
    assert len(every) > 100 and not every & training
    assert all(len(v) >= 5 for v in bank()["emojiedit"].values())
    sets = paraphrased("emojiedit", ds.triplets("test"))
    assert len(sets) == 5 and all(len(s) == len(ds.triplets("test")) for s in sets)
    for n, t in enumerate(ds.triplets("test")[:200]):
        texts = [s[n].text for s in sets]
        assert len(set(texts)) == 5 and not set(texts) & training and sets[0][n].targets == t.targets


def test_wider_phrasings_reword_the_same_edits(built, tmp_path):
    """``phrasings=2`` draws each text from the wider grammar (the generator's own four and six more shapes an
    edit): the same references, targets and edits as version 1, every text one of its edit's version-2 phrasings,
    more ways of speaking than version 1, and the version written in dataset.json."""
    from cirlab.data.emojiedit import describe

    build_emojiedit(tmp_path / "wide", seed=0, phrasings=2)
    wide, plain = Dataset(tmp_path / "wide"), Dataset(built[0] / "a")
    assert json.loads((tmp_path / "wide" / "dataset.json").read_text())["phrasings"] == 2
    for split in ("train", "val", "test"):
        a, b = plain.triplets(split), wide.triplets(split)
        assert [(t.reference, t.targets, t.attributes) for t in a] == [(t.reference, t.targets, t.attributes) for t in b]
        assert all(t.text in describe(t.attributes["edit"], t.attributes["to"], 2) for t in b)
        assert len({t.text for t in b}) > 1.5 * len({t.text for t in a})
    with pytest.raises(CirlabError, match="unknown phrasing version 9; this cirlab has 1, 2"):
        build_emojiedit(tmp_path / "bad", seed=0, phrasings=9)
    assert not (tmp_path / "bad").exists()


def test_no_augmented_training_text_is_a_text_of_the_paraphrase_bank(built):
    """Text augmentation (--text-augment, every kind at once) never gives training a phrasing the paraphrase bank
    measures the held-out queries with. The bank's texts have to be left out explicitly: dropping function words
    alone can turn "a blue one" into "blue", the bank's terse shape."""
    pytest.importorskip("spellchecker")
    from cirlab.data.paraphrase import bank_texts, training_variants
    from cirlab.data.perturb import TextAugment

    ds = Dataset(built[0] / "a")
    train = ds.triplets("train")
    held_out = [t for split in ds.splits if split != "train" for t in ds.triplets(split)]
    measured = bank_texts("emojiedit", held_out)
    texts = {t.text for t in train}
    augment = TextAugment.parse("typos=0.05,frames=0.3,synonyms=0.3,relatives=0.3,order=0.3,drop=0.1,case=0.2,"
                                "variants=8")
    made = {v for seed in range(3) for vs in training_variants(augment, "emojiedit", train, held_out, seed).values()
            for v in vs}
    assert len(made) > 5 * len(texts) and measured and not made & measured


def test_noto_a_new_artist_keeps_the_bases_texts_and_splits_of_the_twemoji_build(built, tmp_path):
    """Noto Emoji (Google's drawings, emoji-datasource-google's PNGs) held out: its test split has the Twemoji
    build's test queries (the same references, texts and targets, a few emoji Noto lacks aside), drawn by
    another artist; train and val stay Twemoji's."""
    import numpy as np
    from PIL import Image

    counts = build_emojiedit(tmp_path / "noto", seed=0, styles=["twemoji"], test_style="noto")
    ds, plain = Dataset.open(tmp_path / "noto"), Dataset.open(built[0] / "a")
    assert [(t.reference, t.text, t.targets) for t in ds.triplets("train")] == \
        [("twemoji_" + t.reference, t.text, ["twemoji_" + x for x in t.targets]) for t in plain.triplets("train")]
    same = {(t.reference, t.text, tuple(t.targets)) for t in plain.triplets("test")}
    held_out = ds.triplets("test")
    assert len(held_out) >= 0.95 * len(same)
    assert all((t.reference.removeprefix("noto_"), t.text, tuple(x.removeprefix("noto_") for x in t.targets)) in same
               for t in held_out)
    assert {r["style"] for r in ds.images if r["id"] in ds.gallery("test").ids} == {"noto"}
    assert counts["missing_per_style"]["noto"] == len(plain.gallery("test").ids) - len(ds.gallery("test").ids)
    assert "Noto Emoji (c) Google, Apache License 2.0" in json.loads((tmp_path / "noto" / "dataset.json").read_text())["license"]
    a = np.asarray(Image.open(tmp_path / "noto" / "images" / "noto_1f385.png"), np.float32)
    b = np.asarray(Image.open(built[0] / "a" / "images" / "1f385.png"), np.float32)
    assert a.shape == b.shape == (72, 72, 3) and (a < 200).any(axis=2).mean() > 0.2  # drawn, not blank
    assert np.abs(a - b).mean() > 20  # another artist's drawing of the same emoji
