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
- Fashion200K (TIRG's protocol): ``labels/*_test_detect_all.txt`` (``path<TAB>score<TAB>caption``)
  is the gallery and ``test_queries.txt`` (``source target`` paths) the queries; the text is
  "replace <source word> with <target word>"; a hit is any gallery image whose caption equals the
  target's; the reference is excluded. Reported: R@1/10/50.

``export_dataset`` turns a benchmark's train and evaluation splits into a cirlab data set folder
(the images stay where the user keeps them), so ``cirlab train``, ``cirlab eval --data`` and
``cirlab bench`` run on it with the benchmark's protocol switches recorded in ``dataset.json``.
"""

from __future__ import annotations

import json
import os
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
    captions: dict[str, str] = field(default_factory=dict)  # image captions, where the benchmark has them

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
    """Queries whose reference and at least one target have files (test splits: the reference); a
    target without a file is dropped from a query that has others."""
    kept = []
    for q in queries:
        targets = [t for t in q.targets if t in found]
        if q.reference in found and (targets or not q.targets):
            q.targets = targets
            kept.append(q)
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
        raise CirlabError(f"CIRR split {split!r}: cirlab evaluates 'val' and exports 'test1' (train captions are not "
                          "published here)")
    records = _read_json(ann / "captions" / f"cap.rc2.{split}.json")
    relative = _read_json(ann / "image_splits" / f"split.rc2.{split}.json")
    queries = [BenchmarkQuery(r["reference"], r["caption"], [r["target_hard"]] if "target_hard" in r else [],
                              int(r["pairid"]), list(r["img_set"]["members"])) for r in records]
    names = sorted(relative)
    found, missing = _find(root, set(names), relative)
    kept, names, skipped = _keep_present(queries, names, found)
    return BenchmarkSplit(f"cirr-{split}", kept, names, found, True, (1, 5, 10, 50),
                          {"exclude_reference": True, "subset": "img_set.members"}, missing, skipped)


def load_shoes(annotations: str | Path, images: str | Path, spelling: str | Path | None = None,
               split: str = "test") -> BenchmarkSplit:
    """``test``: the eval image list and its triplets; ``train``: the train list and its triplets."""
    ann, root = Path(annotations), Path(images)
    if split not in ("train", "test"):
        raise CirlabError(f"Shoes split {split!r} unknown; use 'train' or 'test'")
    records = _read_json(ann / "relative_captions_shoes.json")
    eval_path = ann / ("eval_im_names.txt" if split == "test" else "train_im_names.txt")
    if not eval_path.is_file():
        raise CirlabError(f"{eval_path} not found: the Shoes annotation folder holds {eval_path.name}")
    names = eval_path.read_text().split()
    evalset = set(names)
    fix = {k.lower(): v for k, v in _read_json(Path(spelling)).items()} if spelling else {}
    queries = [BenchmarkQuery(r["ReferenceImageName"], correct_spelling(r["RelativeCaption"], fix) if fix
                              else r["RelativeCaption"], [r["ImageName"]])
               for r in records if r["ImageName"] in evalset and r["ReferenceImageName"] in evalset]
    found, missing = _find(root, evalset)
    kept, names, skipped = _keep_present(queries, names, found)
    return BenchmarkSplit(f"shoes-{split}", kept, names, found, True, (1, 10, 50),
                          {"exclude_reference": True, "spelling": bool(fix)}, missing, skipped)


def read_fashion200k_labels(annotations: str | Path, split: str) -> dict[str, str]:
    """Image path -> caption from Fashion200K's ``labels/<category>_<split>_detect_all.txt`` files
    (lines ``path<TAB>detection score<TAB>caption``); the first line of a path wins."""
    folder = Path(annotations) / "labels"
    files = sorted(folder.glob(f"*_{split}_detect_all.txt")) if folder.is_dir() else []
    if not files:
        raise CirlabError(f"no {folder}/*_{split}_detect_all.txt: pass Fashion200K's folder that holds labels/")
    captions: dict[str, str] = {}
    for f in files:
        for n, line in enumerate(f.read_text(errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            parts = line.split("\t")
            if len(parts) < 3:
                raise CirlabError(f"{f}:{n}: expected 'path<TAB>score<TAB>caption', got {line[:60]!r}")
            captions.setdefault(parts[0].strip(), parts[2].strip())
    return captions


def replacement_text(source_caption: str, target_caption: str) -> str:
    """Fashion200K's modification text: the first source word missing from the target replaced by
    the first target word missing from the source ("replace red with blue")."""
    src, tgt = source_caption.split(), target_caption.split()
    old = next((w for w in src if w not in tgt), src[-1] if src else "")
    new = next((w for w in tgt if w not in src), tgt[-1] if tgt else "")
    return f"replace {old} with {new}"


def _strip_suffix(path: str) -> str:
    p = Path(path)
    return p.with_suffix("").as_posix() if p.suffix.lower() in IMAGE_SUFFIXES else p.as_posix()


def load_fashion200k(annotations: str | Path, images: str | Path, split: str = "test", seed: int = 0) -> BenchmarkSplit:
    """``test``: TIRG's test queries over every test image. ``train``: one query per training image
    whose caption differs from another's by one word (TIRG samples these pairs during training;
    here they are drawn once with ``seed``), every image with the target caption a target."""
    ann, root = Path(annotations), Path(images)
    if split not in ("train", "test"):
        raise CirlabError(f"Fashion200K split {split!r} unknown; use 'train' or 'test'")
    captions = read_fashion200k_labels(ann, split)
    ids = {_strip_suffix(p): p for p in captions}
    by_caption: dict[str, list[str]] = {}
    for i, p in ids.items():
        by_caption.setdefault(captions[p], []).append(i)
    queries: list[BenchmarkQuery] = []
    if split == "test":
        qfile = ann / "test_queries.txt"
        if not qfile.is_file():
            raise CirlabError(f"{qfile} not found: Fashion200K's folder holds test_queries.txt")
        for n, line in enumerate(qfile.read_text().splitlines(), 1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 2 or parts[0] not in captions or parts[1] not in captions:
                raise CirlabError(f"{qfile}:{n}: expected two test image paths listed in labels/, got {line[:80]!r}")
            src, tgt = captions[parts[0]], captions[parts[1]]
            queries.append(BenchmarkQuery(_strip_suffix(parts[0]), replacement_text(src, tgt), list(by_caption[tgt])))
    else:
        import random

        rng = random.Random(seed)
        parents: dict[str, list[str]] = {}  # a caption with one word left out -> the captions it comes from
        for c in by_caption:
            words = c.split()
            for j in range(len(words)):
                parents.setdefault(" ".join(words[:j] + words[j + 1:]), []).append(c)
        for c, members in by_caption.items():
            words = c.split()
            others = sorted({o for j in range(len(words))  # the same words reordered is no modification
                             for o in parents.get(" ".join(words[:j] + words[j + 1:]), []) if set(o.split()) != set(words)})
            if not others:
                continue
            for ref in members:
                target = rng.choice(others)
                queries.append(BenchmarkQuery(ref, replacement_text(c, target), list(by_caption[target])))
    names = sorted(ids)
    found, missing = _find(root, set(names), ids)
    kept, names, skipped = _keep_present(queries, names, found)
    return BenchmarkSplit(f"fashion200k-{split}", kept, names, found, True, (1, 10, 50),
                          {"exclude_reference": True, "hit": "same caption as the target"}, missing, skipped,
                          {i: captions[p] for i, p in ids.items() if i in found})


def read_image_captions(path: str | Path) -> dict[str, str]:
    """Per-image captions: a JSON object ``{image name: caption}`` (DQU-CIR's BLIP-2 files), a JSON
    list of ``{"ImageName", "Caption"}`` (Shoes' ``captions_shoes.json``), or a folder of such files."""
    path = Path(path)
    files = sorted(path.glob("*captions*.json")) if path.is_dir() else [path]
    out: dict[str, str] = {}
    for f in files:
        data = _read_json(f)
        if isinstance(data, dict):
            out.update({str(k): str(v) for k, v in data.items()})
        elif isinstance(data, list) and all(isinstance(r, dict) and "ImageName" in r and "Caption" in r for r in data):
            out.update({r["ImageName"]: r["Caption"] for r in data})
        else:
            raise CirlabError(f"{f}: expected {{image: caption}} or a list of {{ImageName, Caption}} records")
    if not out:
        raise CirlabError(f"no image captions found in {path}")
    return out


def export_dataset(out: str | Path, name: str, splits: dict[str, list[BenchmarkSplit]], protocol: dict,
                   captions: dict[str, str] | None = None, source: str = "") -> dict:
    """Write a cirlab data set folder for benchmark splits: ``dataset.json`` (the image root, the split
    files, the protocol), ``images.jsonl`` (each image once, with every split it belongs to and its
    caption where known) and one triplet file per split. The images are not copied."""
    from cirlab.data.triplets import Triplet, write_triplets

    out = Path(out)
    every = [sp for parts in splits.values() for sp in parts]
    paths = {i: p for sp in every for i, p in sp.paths.items()}
    if not paths:
        raise CirlabError("none of the benchmark's images were found under --images; nothing to export")
    captions = {**{k: v for sp in every for k, v in sp.captions.items()}, **(captions or {})}
    root = Path(os.path.commonpath([str(p.parent) for p in paths.values()]))
    records: dict[str, dict] = {}
    files = {}
    out.mkdir(parents=True, exist_ok=True)
    counts = {"images": 0, "splits": {}, "missing": sorted({m for sp in every for m in sp.missing}),
              "skipped": sum(sp.skipped for sp in every)}
    for split, parts in splits.items():
        triplets = []
        for sp in parts:
            for i in [*sp.gallery, *(x for q in sp.queries for x in (q.reference, *q.targets))]:
                rec = records.setdefault(i, {"id": i, "file": paths[i].relative_to(root).as_posix(), "split": []})
                if split not in rec["split"]:
                    rec["split"].append(split)
            triplets += [Triplet(q.reference, q.text, q.targets, {"category": sp.name}) for q in sp.queries]
        files[split] = f"{split}.jsonl"
        counts["splits"][split] = {"triplets": write_triplets(out / files[split], triplets),
                                   "gallery": len({g for sp in parts for g in sp.gallery})}
    with open(out / "images.jsonl", "w") as f:
        for rec in records.values():
            if len(rec["split"]) == 1:
                rec["split"] = rec["split"][0]
            caption = captions.get(rec["id"]) or captions.get(Path(rec["file"]).name) or captions.get(Path(rec["file"]).stem)
            if caption:
                rec["caption"] = caption
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    counts["images"] = len(records)
    counts["captioned"] = sum("caption" in r for r in records.values())
    meta = {"name": name, "version": 1, "source": source, "images": str(root.resolve()), "splits": files,
            "protocol": protocol}
    (out / "dataset.json").write_text(json.dumps(meta, indent=1))
    return counts


def make_benchmark_dataset(benchmark: str, annotations: str | Path, images: str | Path, out: str | Path,
                           categories: list[str] | None = None, spelling: str | Path | None = None,
                           captions: str | Path | None = None, seed: int = 0) -> dict:
    """A benchmark's train split and its evaluation splits as a cirlab data set (``export_dataset``):
    FashionIQ trains on the chosen categories together and evaluates each on its val split
    (``val-dress``...; gallery ``original``, reference kept, captions joined with 'and'); Shoes and
    Fashion200K have ``train`` and ``test``. CIRR's train captions are not published with the
    annotations here, so CIRR is evaluated with ``cirlab eval --benchmark cirr`` only."""
    extra = read_image_captions(captions) if captions else {}
    if benchmark == "fashioniq":
        cats = categories or list(FASHIONIQ_CATEGORIES)
        splits = {"train": [load_fashioniq(annotations, images, c, "train", spelling=spelling) for c in cats]}
        for c in cats:
            splits[f"val-{c}"] = [load_fashioniq(annotations, images, c, "val", spelling=spelling)]
        protocol = {"benchmark": "fashioniq", "exclude_reference": False, "gallery": "original", "join": "and",
                    "spelling": bool(spelling), "ks": [10, 50]}
        name = "fashioniq" if len(cats) == 3 else "fashioniq-" + "+".join(cats)
    elif benchmark == "shoes":
        if not captions and (Path(annotations) / "captions_shoes.json").is_file():
            extra = read_image_captions(Path(annotations) / "captions_shoes.json")
        splits = {s: [load_shoes(annotations, images, spelling, s)] for s in ("train", "test")}
        protocol = {"benchmark": "shoes", "exclude_reference": True, "spelling": bool(spelling), "ks": [1, 10, 50]}
        name = "shoes"
    elif benchmark == "fashion200k":
        splits = {s: [load_fashion200k(annotations, images, s, seed)] for s in ("train", "test")}
        protocol = {"benchmark": "fashion200k", "exclude_reference": True, "hit": "same caption as the target",
                    "train_pairs_seed": seed, "ks": [1, 10, 50]}
        name = "fashion200k"
    elif benchmark == "cirr":
        raise CirlabError("CIRR's train captions are not in the published annotation folder here, so it cannot be "
                          "made a training data set; evaluate a model with 'cirlab eval --benchmark cirr'")
    else:
        raise CirlabError(f"unknown benchmark {benchmark!r}; use fashioniq, shoes or fashion200k")
    return export_dataset(out, name, splits, protocol, extra, source=str(Path(annotations).resolve()))
