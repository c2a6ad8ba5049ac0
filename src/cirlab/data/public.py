"""The public CIR benchmarks' shared parts: the query and split types every loader returns, finding the
images under the user's image root, and exporting loaded splits as a cirlab data set folder.

Each loader (``data/fashioniq.py``, ``data/cirr.py``, ``data/shoes.py``, ``data/fashion200k.py``)
reads the annotation folder as its authors publish it, finds the images under an image root, and
returns a ``BenchmarkSplit``: the queries, the gallery, the image files, and the protocol switches
it used, each named. Images that are missing are reported (count and ids) and the queries that
need them are skipped and counted, never a crash.

``export_dataset`` turns a benchmark's train and evaluation splits into a cirlab data set folder
(the images stay where the user keeps them), so ``cirlab train``, ``cirlab eval --data`` and
``cirlab bench`` run on it with the benchmark's protocol switches recorded in ``dataset.json``;
``data.make.make_dataset`` does it for each benchmark.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from cirlab.errors import CirlabError
from cirlab.files import atomic_write_text

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
        atomic_write_text(path, "\n".join(sorted(self.missing)) + "\n")
        return path


def read_json(path: Path):
    if not path.is_file():
        raise CirlabError(f"annotation file {path} not found: pass the benchmark's annotation folder as it is published")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CirlabError(f"{path} is not valid JSON ({e.msg} at line {e.lineno})") from None


def nearby_files(root: Path) -> list[Path]:
    """The files in ``root`` and one level of subfolders: where the loaders look for a benchmark's images."""
    return [p for p in list(root.iterdir()) + [q for d in root.iterdir() if d.is_dir() for q in d.iterdir()]
            if p.is_file()]


def find_images(image_root: Path, names: set[str], relative: dict[str, str] | None = None) -> tuple[dict[str, Path], list[str]]:
    """Files of image ids: ``root/<relative path>`` where the benchmark gives one, else ``root/<id><suffix>``
    (suffix as given, or any image suffix), searched in the root and one level of subfolders."""
    if not image_root.is_dir():
        raise CirlabError(f"image folder {image_root} does not exist; pass the folder that holds the benchmark's images")
    found: dict[str, Path] = {}
    index: dict[str, Path] = {}
    for p in nearby_files(image_root):
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


def keep_present(queries: list[BenchmarkQuery], gallery: list[str], found: dict[str, Path]):
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


def read_image_captions(path: str | Path) -> dict[str, str]:
    """Per-image captions: a JSON object ``{image name: caption}`` (DQU-CIR's BLIP-2 files), a JSON
    list of ``{"ImageName", "Caption"}`` (Shoes' ``captions_shoes.json``), or a folder of such files."""
    path = Path(path)
    files = sorted(path.glob("*captions*.json")) if path.is_dir() else [path]
    out: dict[str, str] = {}
    for f in files:
        data = read_json(f)
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
        raise CirlabError("none of the benchmark's images were found under the image folder; nothing to export")
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
    atomic_write_text(out / "dataset.json", json.dumps(meta, indent=1))
    return counts
