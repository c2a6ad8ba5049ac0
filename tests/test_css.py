"""The CSS-like generator: seeded, canonical scene identity, smallest unique descriptions, credit for
every scene that satisfies an underspecified add, novel compositions kept out of training, images."""

import itertools
import json
import random

import numpy as np
import pytest
from PIL import Image

from cirlab.data.css import (COLOURS, Obj, build_css, caption, describe, draw, satisfies_add, scene_id, signature,
                             unique_description)
from cirlab.data.triplets import Dataset


@pytest.fixture(scope="module")
def css(tmp_path_factory):
    out = tmp_path_factory.mktemp("css") / "css"
    counts = build_css(out, size=300, seed=3, image_size=96)
    return out, counts


def read(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def objs(record):
    return tuple(sorted(Obj(**o) for o in record["attributes"]["objects"]))


def test_scene_identity_is_canonical():
    a = (Obj(0, "circle", "red", "small"), Obj(4, "triangle", "blue", "large"))
    assert signature(a) == signature(a[::-1]) == "top-left:small:red:circle|center-center:large:blue:triangle"
    assert scene_id(a) == scene_id(tuple(reversed(a))) != scene_id(a[:1])
    assert caption(a) == "a small red circle at top-left, a large blue triangle at center-center"


def test_the_description_is_the_smallest_that_singles_the_object_out():
    red = Obj(0, "circle", "red", "small")
    blue = Obj(1, "circle", "blue", "small")
    big_red = Obj(2, "rectangle", "red", "large")
    rng = random.Random(0)
    picks = {tuple(unique_description((red, blue), red, rng).items()) for _ in range(20)}
    assert picks == {(("colour", "red"),), (("cell", 0),)}  # both one-word descriptions are used
    # colour, shape and size alone are ambiguous now: only the cell is unique by itself
    assert unique_description((red, blue, big_red), red, rng) == {"cell": 0}
    assert describe({"cell": 8, "colour": "gray"}) == "bottom-right gray object"
    assert describe({"colour": "brown", "shape": "circle"}) == "brown circle"
    gen = random.Random(1)
    for _ in range(200):  # random scenes: the description fits exactly one object, and nothing smaller does
        cells = gen.sample(range(9), gen.randint(1, 5))
        scene = tuple(sorted(Obj(c, gen.choice(["circle", "triangle"]), gen.choice(["red", "blue"]),
                                 gen.choice(["small", "large"])) for c in cells))
        obj = gen.choice(scene)
        d = unique_description(scene, obj, gen)
        assert [o for o in scene if o.has(d)] == [obj]
        for n in range(len(d)):
            for keys in itertools.combinations(("colour", "shape", "size", "cell"), n):
                assert len([o for o in scene if o.has({k: getattr(obj, k) for k in keys})]) > 1


def test_satisfies_add():
    src = (Obj(0, "circle", "red", "small"),)
    assert satisfies_add(src, src + (Obj(5, "circle", "brown", "large"),), {"colour": "brown"})
    assert not satisfies_add(src, src + (Obj(5, "circle", "cyan", "large"),), {"colour": "brown"})
    assert not satisfies_add(src, (Obj(1, "circle", "red", "small"), Obj(5, "circle", "brown", "large")),
                             {"colour": "brown"})  # the source object moved: not an add
    assert satisfies_add(src, src + (Obj(2, "triangle", "brown", "small"),), {"cell": 2})


def test_the_generator_is_seeded(css, tmp_path):
    out, _ = css
    again = tmp_path / "again"
    build_css(again, size=300, seed=3, image_size=96)
    for name in ("train.jsonl", "test.jsonl", "images.jsonl"):
        assert (again / name).read_text() == (out / name).read_text()
    other = tmp_path / "other"
    build_css(other, size=300, seed=4, image_size=96)
    assert (other / "test.jsonl").read_text() != (out / "test.jsonl").read_text()


def test_targets_are_every_gallery_scene_that_satisfies_the_text(css):
    out, counts = css
    images = {r["id"]: r for r in read(out / "images.jsonl")}
    ds = Dataset.open(out)
    assert {s: len(ds.triplets(s)) for s in ("train", "val", "test")} == {"train": 210, "val": 30, "test": 60}
    underspecified = 0
    for split in ("train", "val", "test"):
        gallery = [i for i, r in images.items() if r["split"] == split]
        for t in ds.triplets(split):
            assert images[t.reference]["split"] == split and t.targets
            source = objs(images[t.reference])
            if t.attributes["edit"] != "add":
                assert len(t.targets) == 1
                continue
            words = t.text.split()[1:]
            cell = words[-1] if words[-2:-1] == ["to"] else None
            words = words[:-2] if cell else words
            attrs = {"shape": words[-1]} if words[-1] != "object" else {}
            for w in words[:-1]:
                attrs["colour" if w in COLOURS else "size"] = w
            if cell:
                from cirlab.data.css import CELLS
                attrs["cell"] = CELLS.index(cell)
            want = sorted(g for g in gallery if satisfies_add(source, objs(images[g]), attrs))
            assert t.targets == want, t.text
            underspecified += len(t.targets) > 1
    assert underspecified == sum(counts["underspecified"].values()) > 0


def test_novel_compositions_never_reach_training(css):
    out, counts = css
    meta = json.loads((out / "dataset.json").read_text())
    held = {tuple(p.split()) for p in meta["held_out_pairs"]}  # "red circle" -> (colour, shape)
    assert len(held) == 6
    for r in read(out / "images.jsonl"):
        pairs = {(o["colour"], o["shape"]) for o in r["attributes"]["objects"]}
        if r["split"] != "test":
            assert not pairs & held, r
    for split in ("train", "val"):
        for t in read(out / f"{split}.jsonl"):
            assert not any(f"{c} {s}" in t["text"] for c, s in held)
    test = read(out / "test.jsonl")
    assert counts["novel"] == sum(t["attributes"]["composition"] == "novel" for t in test) > 0


def test_images_at_both_resolutions(css):
    out, _ = css
    r = read(out / "images.jsonl")[0]
    small = np.asarray(Image.open(out / "images64" / r["file"]))
    large = Image.open(out / "images" / r["file"])
    assert small.shape == (64, 64, 3) and large.size == (96, 96)
    for o in r["attributes"]["objects"]:
        row, col = divmod(o["cell"], 3)
        assert tuple(small[16 + 16 * row, 16 + 16 * col]) == COLOURS[o["colour"]]
    big = np.asarray(draw((Obj(4, "circle", "red", "large"),), 224))
    edge = {tuple(p) for p in big.reshape(-1, 3)}
    assert len(edge) > 3  # antialiased: blended edge colours between red and white


def test_named_configurations_fix_the_split_sizes():
    from cirlab.data.css import CONFIGS, split_sizes
    from cirlab.errors import CirlabError

    assert split_sizes(4000) == CONFIGS["small"] == {"train": 2800, "val": 400, "test": 800}
    assert split_sizes(config="large") == {"train": 16000, "val": 1000, "test": 8000}
    with pytest.raises(CirlabError, match="unknown css configuration 'huge'; choose one of: small, large"):
        split_sizes(config="huge")
    with pytest.raises(CirlabError, match="at least 10 triplets"):
        split_sizes(5)


def test_the_paraphrase_bank_shares_no_text_with_training(css):
    """No CSS-like paraphrase can be a generated text: none reads as the generator's grammar (``add ...``,
    ``remove ...``, ``make ...``), none is a text of any split; each query gets five distinct phrasings that keep its
    object, place and value."""
    from cirlab.data.paraphrase import bank, paraphrased

    ds = Dataset(css[0])
    every = {t.text for s in ds.splits for t in ds.triplets(s)}
    sets = paraphrased("css", ds.triplets("test"))
    assert len(sets) == 5 and all(len(v) >= 5 for v in bank()["css"].values())
    for n, t in enumerate(ds.triplets("test")):
        texts = [s[n].text for s in sets]
        assert len(set(texts)) == 5 and not set(texts) & every, texts
        assert not any(x.startswith(("add ", "remove ", "make ")) for x in texts), texts
        words = t.text.split(" ", 1)[1].replace(" to ", " at ")
        assert all(w in texts[0] for w in words.split() if w != "a"), (t.text, texts[0])


def test_wider_phrasings_reword_the_same_scenes_and_keep_the_bank_apart(css, tmp_path):
    """``phrasings=2``: the same scenes, references and targets as version 1, each text drawn from the wider grammar
    with the generator's own text kept as ``canonical``; no text of any split is a text of the paraphrase bank,
    whose phrasings of each query are those of version 1."""
    from cirlab.data.paraphrase import bank_texts, paraphrased

    build_css(tmp_path / "wide", size=300, seed=3, image_size=96, phrasings=2)
    plain, wide = Dataset(css[0]), Dataset(tmp_path / "wide")
    assert (tmp_path / "wide" / "images.jsonl").read_text() == (css[0] / "images.jsonl").read_text()
    texts = set()
    for split in plain.splits:
        a, b = plain.triplets(split), wide.triplets(split)
        assert [(t.reference, t.targets) for t in a] == [(t.reference, t.targets) for t in b]
        assert [t.text for t in a] == [t.attributes["canonical"] for t in b]
        assert sum(t.text != t.attributes["canonical"] for t in b) == len(b)
        texts |= {t.text for t in b}
    assert len(texts) > len({t.text for s in plain.splits for t in plain.triplets(s)})
    assert not texts & bank_texts("css", [t for s in wide.splits for t in wide.triplets(s)])
    assert [[t.text for t in ts] for ts in paraphrased("css", wide.triplets("test"))] == \
        [[t.text for t in ts] for ts in paraphrased("css", plain.triplets("test"))]


def test_simulated_sessions_run_end_to_end_on_a_trained_model(css, tmp_path):
    """``eval.multiturn.run_sessions`` on a small CSS-like set with a trained ``sum``: every turn is the data set's
    grammar, a session stops when its target reaches rank 1, the success curves only rise, and the same seed gives
    the same sessions."""
    from cirlab.encoders.cache import FeatureCache
    from cirlab.eval.multiturn import run_sessions
    from cirlab.experiment.workspace import Workspace, train_method

    ws = Workspace.open(css[0], FeatureCache(tmp_path / "cache"), progress=False)
    model, _, _ = train_method(ws, "sum", {"train": {"epochs": 2}}, progress=False, text_head=False)
    runs = [run_sessions(ws, model, "test", sessions=24, turns=4, mode=mode, shown=3, seed=1)
            for mode in ("mean", "mean", "text")]
    got = runs[0]
    assert got.ranks == runs[1].ranks and len(got.ranks) == 24
    for ranks in got.ranks:
        assert 1 <= len(ranks) <= 4 and all(r > 0 for r in ranks[:-1])
        assert len(ranks) == 4 or ranks[-1] == 0  # a session ends early only at rank 1
    s = got.summary()
    curve = [s[f"R@1 by {t}"] for t in range(1, 5)]
    assert curve == sorted(curve) and all(s[f"R@10 by {t}"] >= s[f"R@1 by {t}"] for t in range(1, 5))
    assert len(got.edits) == sum(len(r) for r in got.ranks)
    assert {k for k, _ in got.edits} <= {"add", "remove", "change-colour", "change-size", "change-shape"}
    texts = [t.text for name, ts in ws.triplets.items() if "~turn" in name for t in ts]
    assert texts and all(t.startswith(("add ", "remove ", "make ")) for t in texts if " and " not in t)
