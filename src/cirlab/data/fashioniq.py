"""FashionIQ (dress / shirt / toptee) from its published annotation folder.

Gallery ``original`` (every image of the category's split, as in the original paper and CLIP4Cir)
or ``val_union`` (only the images of the split's queries); caption join ``and`` (the two captions as
one sentence, "A and b", CLIP4Cir style) or ``separate`` (each caption its own query); optional
spelling correction with DQU-CIR's dictionaries. The reference stays in the gallery's ranking (the
benchmark's usual protocol) unless ``exclude_reference``. Reported: R@10, R@50.
"""

from __future__ import annotations

from pathlib import Path

from cirlab.data.public import (BenchmarkQuery, BenchmarkSplit, correct_spelling, find_images, join_captions, keep_present,
                                read_json)
from cirlab.errors import CirlabError

FASHIONIQ_CATEGORIES = ("dress", "shirt", "toptee")

def load_fashioniq(annotations: str | Path, images: str | Path, category: str, split: str = "val",
                   gallery: str = "original", join: str = "and", spelling: str | Path | None = None,
                   exclude_reference: bool = False) -> BenchmarkSplit:
    ann, root = Path(annotations), Path(images)
    if category not in FASHIONIQ_CATEGORIES:
        raise CirlabError(f"FashionIQ category {category!r} unknown; use one of {', '.join(FASHIONIQ_CATEGORIES)}")
    if gallery not in ("original", "val_union"):
        raise CirlabError(f"FashionIQ gallery {gallery!r} unknown; use 'original' or 'val_union'")
    if join not in ("and", "separate"):
        raise CirlabError(f"FashionIQ caption join {join!r} unknown; use 'and' or 'separate'")
    records = read_json(ann / "captions" / f"cap.{category}.{split}.json")
    if records and "target" not in records[0]:
        raise CirlabError(f"FashionIQ {split} targets are hidden (the evaluation server has them); evaluate on val")
    fix = {}
    if spelling:
        path = Path(spelling)
        path = path / f"correction_dict_{category}.json" if path.is_dir() else path
        fix = {k.lower(): v for k, v in read_json(path).items()}
    queries = []
    for r in records:
        caps = [correct_spelling(c, fix) if fix else c for c in r["captions"]]
        texts = [join_captions(*caps[:2])] if join == "and" else [c.strip() for c in caps if c.strip()]
        queries += [BenchmarkQuery(r["candidate"], t, [r["target"]]) for t in texts]
    if gallery == "original":
        names = list(read_json(ann / "image_splits" / f"split.{category}.{split}.json"))
    else:
        names = sorted({n for r in records for n in (r["candidate"], r["target"])})
    found, missing = find_images(root, set(names) | {n for q in queries for n in (q.reference, *q.targets)})
    kept, names, skipped = keep_present(queries, names, found)
    return BenchmarkSplit(f"fashioniq-{category}-{split}", kept, names, found, exclude_reference, (10, 50),
                          {"gallery": gallery, "join": join, "spelling": bool(fix), "exclude_reference": exclude_reference},
                          missing, skipped)
