import json

import pytest

from cirlab.data.emojiedit import FACTORS, build_emojiedit, parse_name
from cirlab.data.triplets import Dataset


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
