"""The benchmark loaders on the real annotation files (shared/data/benchmarks) with placeholder images:
query and gallery counts match the files, every protocol switch does what it says, missing images
are reported and their queries skipped."""

import io
import json
import os
from pathlib import Path

import pytest
from PIL import Image

from cirlab.data.cirr import load_cirr
from cirlab.data.fashioniq import load_fashioniq
from cirlab.data.public import correct_spelling, join_captions
from cirlab.data.shoes import load_shoes
from cirlab.errors import CirlabError

# the published annotation files (33 MB, not in the repository): beside the checkout, or where
# $CIRLAB_BENCHMARKS points
ROOT = Path(os.environ.get("CIRLAB_BENCHMARKS", Path(__file__).resolve().parents[2] / "shared" / "data" / "benchmarks"))
pytestmark = pytest.mark.skipif(not ROOT.is_dir(), reason=f"no benchmark annotation files at {ROOT} (set CIRLAB_BENCHMARKS)")


def placeholder() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (2, 2), (128, 128, 128)).save(buf, "PNG")
    return buf.getvalue()


def fill(folder: Path, relative_paths) -> None:
    data = placeholder()
    for rel in relative_paths:
        p = folder / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)


def test_fashioniq_counts_switches_and_missing_images(tmp_path):
    ann = ROOT / "fashioniq"
    records = json.loads((ann / "captions" / "cap.dress.val.json").read_text())
    split = json.loads((ann / "image_splits" / "split.dress.val.json").read_text())
    needed = set(split) | {n for r in records for n in (r["candidate"], r["target"])}
    fill(tmp_path / "images", [f"{n}.png" for n in needed])
    fiq = load_fashioniq(ann, tmp_path / "images", "dress")
    assert len(fiq.queries) == len(records) == 2017 and len(fiq.gallery) == len(split) == 3817
    assert fiq.ks == (10, 50) and not fiq.exclude_reference and not fiq.missing
    r0 = records[0]
    assert fiq.queries[0].text == join_captions(*r0["captions"]) == "Is shiny and silver with shorter sleeves and fit and flare"
    union = load_fashioniq(ann, tmp_path / "images", "dress", gallery="val_union")
    assert len(union.gallery) == len({n for r in records for n in (r["candidate"], r["target"])}) < 3817
    separate = load_fashioniq(ann, tmp_path / "images", "dress", join="separate")
    assert len(separate.queries) == sum(len([c for c in r["captions"] if c.strip()]) for r in records)
    fixed = load_fashioniq(ann, tmp_path / "images", "dress", spelling=ROOT / "dqu_cir_aux" / "FashionIQ" / "captions")
    assert fixed.protocol["spelling"] and sum(a.text != b.text for a, b in zip(fiq.queries, fixed.queries)) > 0
    (tmp_path / "images" / f"{r0['target']}.png").unlink()
    gone = load_fashioniq(ann, tmp_path / "images", "dress")
    assert gone.missing == [r0["target"]] and gone.skipped == sum(r["target"] == r0["target"] or r["candidate"] == r0["target"]
                                                                   for r in records)
    assert len(gone.queries) == 2017 - gone.skipped and "1 images missing" in gone.summary()
    assert gone.write_missing(tmp_path / "missing.txt").read_text() == r0["target"] + "\n"
    with pytest.raises(CirlabError, match="targets are hidden"):
        load_fashioniq(ann, tmp_path / "images", "dress", split="test")
    with pytest.raises(CirlabError, match="gallery 'all' unknown"):
        load_fashioniq(ann, tmp_path / "images", "dress", gallery="all")


def test_cirr_val_and_test1(tmp_path):
    ann = ROOT / "cirr"
    for split in ("val", "test1"):
        rel = json.loads((ann / "image_splits" / f"split.rc2.{split}.json").read_text())
        fill(tmp_path / "img", rel.values())
    val = load_cirr(ann, tmp_path / "img", "val")
    assert len(val.queries) == 4181 and len(val.gallery) == 2297 and val.exclude_reference
    assert all(len(q.members) == 6 and len(q.targets) == 1 and q.pair_id is not None for q in val.queries)
    assert val.ks == (1, 5, 10, 50)
    test = load_cirr(ann, tmp_path / "img", "test1")
    assert len(test.queries) == 4148 and len(test.gallery) == 2315 and all(not q.targets for q in test.queries)


def test_shoes(tmp_path):
    ann = ROOT / "shoes"
    names = (ann / "eval_im_names.txt").read_text().split()
    fill(tmp_path / "shoes", [f"womens_x/{n}" for n in names])  # found one folder down as well
    shoes = load_shoes(ann, tmp_path / "shoes")
    assert len(shoes.gallery) == 4658 and len(shoes.queries) == 1761 and shoes.ks == (1, 10, 50)
    assert shoes.exclude_reference and not shoes.missing


def test_spelling_and_join_helpers():
    assert correct_spelling("longer sleevs, Vneck", {"sleevs": "sleeves", "vneck": "v neck"}) == "longer sleeves, v neck"
    assert join_captions("is red.", " has no sleeves?") == "Is red and has no sleeves"


def test_bad_folders_are_one_line_errors(tmp_path):
    with pytest.raises(CirlabError, match="annotation file .* not found"):
        load_cirr(tmp_path, tmp_path)
    with pytest.raises(CirlabError, match="image folder .* does not exist"):
        load_shoes(ROOT / "shoes", tmp_path / "nope")


def test_fashioniq_and_shoes_made_cirlab_data_sets(tmp_path):
    """The train and evaluation splits written as a cirlab data set: counts as in the files, the
    protocol recorded, DQU-CIR's image captions attached."""
    from cirlab.data.make import make_benchmark_dataset
    from cirlab.data.triplets import Dataset

    ann = ROOT / "fashioniq"
    names = {n for s in ("train", "val") for n in json.loads((ann / "image_splits" / f"split.dress.{s}.json").read_text())}
    fill(tmp_path / "fiq", [f"{n}.png" for n in names])
    counts = make_benchmark_dataset("fashioniq", ann, tmp_path / "fiq", tmp_path / "fiq-ds", ["dress"],
                                    captions=ROOT / "dqu_cir_aux" / "FashionIQ" / "captions")
    train = json.loads((ann / "captions" / "cap.dress.train.json").read_text())
    assert len(train) == 5985
    assert counts["splits"] == {"train": {"triplets": len(train), "gallery": 11452},
                                "val-dress": {"triplets": 2017, "gallery": 3817}}
    assert counts["images"] == 11452 + 3817 and counts["captioned"] == counts["images"]
    ds = Dataset(tmp_path / "fiq-ds")
    assert ds.splits == ["train", "val-dress"] and not ds.exclude_reference and ds.meta["protocol"]["gallery"] == "original"
    assert len(ds.gallery("val-dress")) == 3817 and ds.gallery("val-dress").paths[0].is_file()
    t0 = ds.triplets("train")[0]
    assert t0.reference == train[0]["candidate"] and t0.targets == [train[0]["target"]]
    assert t0.text == join_captions(*train[0]["captions"])

    shoes = ROOT / "shoes"
    fill(tmp_path / "shoes",
         (shoes / "train_im_names.txt").read_text().split() + (shoes / "eval_im_names.txt").read_text().split())
    counts = make_benchmark_dataset("shoes", shoes, tmp_path / "shoes", tmp_path / "shoes-ds")
    rel = json.loads((shoes / "relative_captions_shoes.json").read_text())
    train_names = set((shoes / "train_im_names.txt").read_text().split())
    n_train = sum(r["ImageName"] in train_names and r["ReferenceImageName"] in train_names for r in rel)
    assert counts["splits"]["test"] == {"triplets": 1761, "gallery": 4658}
    assert counts["splits"]["train"] == {"triplets": n_train, "gallery": 10000} and n_train > 8000
    assert counts["captioned"] > 0  # captions_shoes.json, read by default
    assert Dataset(tmp_path / "shoes-ds").exclude_reference
    with pytest.raises(CirlabError, match="train captions are not"):
        make_benchmark_dataset("cirr", ROOT / "cirr", tmp_path, tmp_path / "c")


def test_circo_loader_on_the_real_annotations(tmp_path):
    """CIRCO val and test from the published files, over placeholder images in COCO's layout (its image list and
    unlabeled2017/): every query, its ground truths target first, the reference kept in the gallery; a missing ground
    truth leaves its query with the others, a missing reference skips it; a bare folder of COCO-named files works."""
    from cirlab.data.circo import load_circo

    ann = ROOT / "circo"
    val = json.loads((ann / "annotations" / "val.json").read_text())
    test = json.loads((ann / "annotations" / "test.json").read_text())
    ids = sorted({r["reference_img_id"] for r in val + test} | {g for r in val for g in r["gt_img_ids"]}) + [1, 2, 3]
    coco = tmp_path / "COCO2017_unlabeled"
    (coco / "annotations").mkdir(parents=True)
    (coco / "annotations" / "image_info_unlabeled2017.json").write_text(
        json.dumps({"images": [{"id": i, "file_name": f"{i:012d}.jpg"} for i in ids]}))
    fill(coco / "unlabeled2017", [f"{i:012d}.jpg" for i in ids])
    circo = load_circo(ann, coco, "val")
    assert len(circo.queries) == len(val) == 220 and len(circo.gallery) == len(ids) and not circo.missing
    assert circo.ks == (5, 10, 25, 50) and not circo.exclude_reference and circo.protocol["recall"] == "target"
    q0 = circo.queries[0]
    assert (q0.reference, q0.text, q0.pair_id) == ("271520", "shows two people and has a more colorful background", 0)
    assert q0.targets == ["355099", "528417", "534704"] and q0.reference in circo.gallery
    assert sum(len(q.targets) for q in circo.queries) == sum(len(r["gt_img_ids"]) for r in val)
    held = load_circo(ann / "annotations", coco, "test")
    assert len(held.queries) == len(test) == 800 and all(q.targets == [] for q in held.queries)
    (coco / "unlabeled2017" / "000000528417.jpg").unlink()
    (coco / "unlabeled2017" / f"{val[1]['reference_img_id']:012d}.jpg").unlink()
    gone = load_circo(ann, coco, "val")
    assert sorted(gone.missing) == sorted(["528417", str(val[1]["reference_img_id"])]) and gone.skipped == sum(
        r["reference_img_id"] == val[1]["reference_img_id"] for r in val)
    assert gone.queries[0].targets == ["355099", "534704"]
    bare = load_circo(ann, coco / "unlabeled2017", "val")  # no image list: the files named by COCO id
    assert len(bare.gallery) == len(ids) - 2 and len(bare.queries) == len(gone.queries)
    with pytest.raises(CirlabError, match="use 'val'"):
        load_circo(ann, coco, "train")
