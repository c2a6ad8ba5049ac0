"""CIRCO (Baldrati et al., ICCV 2023) from its published annotation folder and the COCO 2017 unlabeled images.

``val`` holds 220 queries, each with several ground truths (``gt_img_ids``, the target first); ``test`` holds 800
whose ground truths the authors' evaluation server keeps. The gallery is the COCO 2017 unlabeled set (about 120k
images): the images ``annotations/image_info_unlabeled2017.json`` lists where the image root holds it (COCO's own
layout), else every image file under the root whose name is a COCO id (``000000271520.jpg``). The reference stays
in the gallery, as the authors' evaluation ranks every image. Reported: mAP@5/10/25/50 over each query's ground
truths (its AP@K divided by min(K, its ground truths)) and Recall@K on the target image alone. The test split's
submission file is :func:`cirlab.eval.protocols.circo_submission`.

The annotations are CC BY-NC 4.0 (credit: "Zero-Shot Composed Image Retrieval with Textual Inversion", Baldrati,
Agnolucci, Bertini, Del Bimbo, ICCV 2023).
"""

from __future__ import annotations

import json
from pathlib import Path

from cirlab.data.public import (IMAGE_SUFFIXES, BenchmarkQuery, BenchmarkSplit, find_images, keep_present, nearby_files,
                                read_json)
from cirlab.errors import CirlabError

CIRCO_KS = (5, 10, 25, 50)
COCO_INFO = Path("annotations") / "image_info_unlabeled2017.json"


def load_circo(annotations: str | Path, images: str | Path, split: str = "val") -> BenchmarkSplit:
    """A CIRCO split: ``annotations`` is the CIRCO folder (or its ``annotations`` folder), ``images`` the COCO 2017
    unlabeled root (with ``unlabeled2017/`` and its image list) or a folder of its images."""
    if split not in ("val", "test"):
        raise CirlabError(f"CIRCO split {split!r}: use 'val' (ground truths published) or 'test' (a submission file "
                          "for the authors' server)")
    ann, root = Path(annotations), Path(images)
    file = ann / f"{split}.json" if (ann / f"{split}.json").is_file() else ann / "annotations" / f"{split}.json"
    records = read_json(file)
    if not isinstance(records, list) or not all(isinstance(r, dict) and "reference_img_id" in r for r in records):
        raise CirlabError(f"{file} is not a CIRCO annotation file (a list of queries with reference_img_id)")
    queries = [BenchmarkQuery(str(r["reference_img_id"]), r["relative_caption"],
                              [str(x) for x in r.get("gt_img_ids", [])], int(r["id"])) for r in records]
    relative = coco_files(root)
    needed = set(relative) | {q.reference for q in queries} | {t for q in queries for t in q.targets}
    found, missing = find_images(root, needed, relative)
    kept, gallery, skipped = keep_present(queries, sorted(relative, key=int), found)
    protocol = {"exclude_reference": False, "gallery": "COCO 2017 unlabeled", "mAP": "over gt_img_ids",
                "recall": "target"}
    return BenchmarkSplit(f"circo-{split}", kept, gallery, found, False, CIRCO_KS, protocol, missing, skipped)


def coco_files(root: Path) -> dict[str, str]:
    """COCO id -> image path relative to ``root``: from COCO's image list where the root holds it, else every image
    file in the root or one folder down whose name is a number."""
    if not root.is_dir():
        raise CirlabError(f"image folder {root} does not exist; pass the COCO 2017 unlabeled folder (with "
                          "unlabeled2017/ and annotations/image_info_unlabeled2017.json)")
    info = root / COCO_INFO
    if info.is_file():
        try:
            listed = json.loads(info.read_text())["images"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise CirlabError(f"{info} is not COCO's image list (a JSON object with 'images')") from None
        folder = "unlabeled2017/" if (root / "unlabeled2017").is_dir() else ""
        return {str(int(x["id"])): folder + x["file_name"] for x in listed}
    return {str(int(p.stem)): str(p.relative_to(root)) for p in nearby_files(root)
            if p.suffix.lower() in IMAGE_SUFFIXES and p.stem.isdigit()}
