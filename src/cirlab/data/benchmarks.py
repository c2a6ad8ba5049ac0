"""Loaders for the public CIR benchmarks' own annotation files (users bring the images).

Each loader reads the annotation folder as its authors publish it, finds the images under an
image root, and returns a ``BenchmarkSplit``: the queries, the gallery, the image files, and the
protocol switches it used, each named. Images that are missing are reported (count and ids)
and the queries that need them are skipped and counted, never a crash.

- FashionIQ (dress / shirt / toptee): gallery ``original`` (every image of the category's split,
  as in the original paper and CLIP4Cir) or ``val_union`` (only the images of the split's
  queries); caption join ``and`` (the two captions as one sentence, "A and b", CLIP4Cir style) or
  ``separate`` (each caption its own query); optional spelling correction with DQU-CIR's
  dictionaries. The reference stays in the gallery's ranking (the benchmark's usual protocol)
  unless ``exclude_reference``. Reported: R@10, R@50.
- CIRR: val (or test1, whose targets are hidden) over the split's images, the reference removed
  from its ranking; each query keeps its ``img_set.members`` for Recall_subset@K. Reported:
  R@1/5/10/50, Rsubset@1/2/3, and (R@5 + Rsubset@1) / 2.
- Shoes: the triplets whose reference and target are both in ``eval_im_names.txt``, over those
  images, the reference excluded. Reported: R@1/10/50.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from cirlab.errors import CirlabError

FASHIONIQ_CATEGORIES = ("dress", "shirt", "toptee")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


@dataclass
class BenchmarkQuery:
    reference: str
    text: str
    targets: list[str]  # empty where the benchmark hides them (test splits)
    pair_id: int | None = None
    members: list[str] | None = None  # CIRR's image set of six


@dataclass
class BenchmarkSplit:
    name: str
    queries: list[BenchmarkQuery]
    gallery: list[str]
    paths: dict[str, Path]
    exclude_reference: bool
    ks: tuple[int, ...]
    protocol: dict = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)  # image ids without a file
    skipped: int = 0  # queries dropped because an image they need is missing

    def summary(self) -> str:
        return (f"{self.name}: {len(self.queries)} queries over {len(self.gallery)} gallery images"
                + (f"; {len(self.missing)} images missing, {self.skipped} queries skipped" if self.missing else ""))

    def write_missing(self, path: str | Path) -> Path | None:
        """The ids of missing images, one a line (None when nothing is missing)."""
        if not self.missing:
            return None
        path = Path(path)
        path.write_text("\n".join(sorted(self.missing)) + "\n")
        return path


def _read_json(path: Path):
    if not path.is_file():
        raise CirlabError(f"annotation file {path} not found: pass the benchmark's annotation folder as it is published")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CirlabError(f"{path} is not valid JSON ({e.msg} at line {e.lineno})") from None


def _find(image_root: Path, names: set[str], relative: dict[str, str] | None = None) -> tuple[dict[str, Path], list[str]]:
    """Files of image ids: ``root/<relative path>`` where the benchmark gives one, else ``root/<id><suffix>``
    (suffix as given, or any image suffix), searched in the root and one level of subfolders."""
    if not image_root.is_dir():
        raise CirlabError(f"image folder {image_root} does not exist; pass the folder that holds the benchmark's images")
    found: dict[str, Path] = {}
    index: dict[str, Path] = {}
    for p in list(image_root.iterdir()) + [q for d in image_root.iterdir() if d.is_dir() for q in d.iterdir()]:
        if p.is_file():
            index.setdefault(p.name, p)
            index.setdefault(p.stem, p)
    for name in names:
        if relative and name in relative:
            p = (image_root / relative[name]).resolve()
            if p.is_file():
                found[name] = p
                continue
        hit = index.get(name) or next((index[name + s] for s in IMAGE_SUFFIXES if name + s in index), None)
        if hit is not None:
            found[name] = hit
    return found, sorted(names - set(found))


def _keep_present(queries: list[BenchmarkQuery], gallery: list[str], found: dict[str, Path]):
    kept = [q for q in queries if q.reference in found and all(t in found for t in q.targets)]
    return kept, [g for g in gallery if g in found], len(queries) - len(kept)


def correct_spelling(text: str, dictionary: dict[str, str]) -> str:
    """Replace whole words found in a correction dictionary (DQU-CIR's FashionIQ / Shoes ones)."""
    return re.sub(r"[A-Za-z]+", lambda m: dictionary.get(m.group(0).lower(), m.group(0)), text)


def join_captions(first: str, second: str) -> str:
    """FashionIQ's two relative captions as one sentence: the first capitalised, joined by 'and'."""
    a, b = first.strip(".?, "), second.strip(".?, ")
    return f"{a[:1].upper() + a[1:]} and {b}"


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
    records = _read_json(ann / "captions" / f"cap.{category}.{split}.json")
    if records and "target" not in records[0]:
        raise CirlabError(f"FashionIQ {split} targets are hidden (the evaluation server has them); evaluate on val")
    fix = {}
    if spelling:
        path = Path(spelling)
        path = path / f"correction_dict_{category}.json" if path.is_dir() else path
        fix = {k.lower(): v for k, v in _read_json(path).items()}
    queries = []
    for r in records:
        caps = [correct_spelling(c, fix) if fix else c for c in r["captions"]]
        texts = [join_captions(*caps[:2])] if join == "and" else [c.strip() for c in caps if c.strip()]
        queries += [BenchmarkQuery(r["candidate"], t, [r["target"]]) for t in texts]
    if gallery == "original":
        names = list(_read_json(ann / "image_splits" / f"split.{category}.{split}.json"))
    else:
        names = sorted({n for r in records for n in (r["candidate"], r["target"])})
    found, missing = _find(root, set(names) | {n for q in queries for n in (q.reference, *q.targets)})
    kept, names, skipped = _keep_present(queries, names, found)
    return BenchmarkSplit(f"fashioniq-{category}-{split}", kept, names, found, exclude_reference, (10, 50),
                          {"gallery": gallery, "join": join, "spelling": bool(fix), "exclude_reference": exclude_reference},
                          missing, skipped)


def load_cirr(annotations: str | Path, images: str | Path, split: str = "val") -> BenchmarkSplit:
    ann, root = Path(annotations), Path(images)
    if split not in ("val", "test1"):
        raise CirlabError(f"CIRR split {split!r}: cirlab evaluates 'val' and exports 'test1' (train captions are not published here)")
    records = _read_json(ann / "captions" / f"cap.rc2.{split}.json")
    relative = _read_json(ann / "image_splits" / f"split.rc2.{split}.json")
    queries = [BenchmarkQuery(r["reference"], r["caption"], [r["target_hard"]] if "target_hard" in r else [],
                              int(r["pairid"]), list(r["img_set"]["members"])) for r in records]
    names = sorted(relative)
    found, missing = _find(root, set(names), relative)
    kept, names, skipped = _keep_present(queries, names, found)
    return BenchmarkSplit(f"cirr-{split}", kept, names, found, True, (1, 5, 10, 50),
                          {"exclude_reference": True, "subset": "img_set.members"}, missing, skipped)


def load_shoes(annotations: str | Path, images: str | Path, spelling: str | Path | None = None) -> BenchmarkSplit:
    ann, root = Path(annotations), Path(images)
    records = _read_json(ann / "relative_captions_shoes.json")
    eval_path = ann / "eval_im_names.txt"
    if not eval_path.is_file():
        raise CirlabError(f"{eval_path} not found: the Shoes annotation folder holds eval_im_names.txt")
    names = eval_path.read_text().split()
    evalset = set(names)
    fix = {k.lower(): v for k, v in _read_json(Path(spelling)).items()} if spelling else {}
    queries = [BenchmarkQuery(r["ReferenceImageName"], correct_spelling(r["RelativeCaption"], fix) if fix
                              else r["RelativeCaption"], [r["ImageName"]])
               for r in records if r["ImageName"] in evalset and r["ReferenceImageName"] in evalset]
    found, missing = _find(root, evalset)
    kept, names, skipped = _keep_present(queries, names, found)
    return BenchmarkSplit("shoes-test", kept, names, found, True, (1, 10, 50),
                          {"exclude_reference": True, "spelling": bool(fix)}, missing, skipped)
