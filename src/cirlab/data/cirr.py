"""CIRR from its published annotation folder.

val (or test1, whose targets are hidden) over the split's images, the reference removed from its
ranking; each query keeps its ``img_set.members`` for Recall_subset@K. Reported: R@1/5/10/50,
Rsubset@1/2/3, and (R@5 + Rsubset@1) / 2.
"""

from __future__ import annotations

from pathlib import Path

from cirlab.data.public import BenchmarkQuery, BenchmarkSplit, find_images, keep_present, read_json
from cirlab.errors import CirlabError

def load_cirr(annotations: str | Path, images: str | Path, split: str = "val") -> BenchmarkSplit:
    ann, root = Path(annotations), Path(images)
    if split not in ("val", "test1"):
        raise CirlabError(f"CIRR split {split!r}: cirlab evaluates 'val' and exports 'test1' (train captions are not "
                          "published here)")
    records = read_json(ann / "captions" / f"cap.rc2.{split}.json")
    relative = read_json(ann / "image_splits" / f"split.rc2.{split}.json")
    queries = [BenchmarkQuery(r["reference"], r["caption"], [r["target_hard"]] if "target_hard" in r else [],
                              int(r["pairid"]), list(r["img_set"]["members"])) for r in records]
    names = sorted(relative)
    found, missing = find_images(root, set(names), relative)
    kept, names, skipped = keep_present(queries, names, found)
    return BenchmarkSplit(f"cirr-{split}", kept, names, found, True, (1, 5, 10, 50),
                          {"exclude_reference": True, "subset": "img_set.members"}, missing, skipped)
