"""The triplet format, galleries and datasets on disk.

A triplet file is JSONL, one query a line::

    {"reference": "1f468", "text": "make it a woman", "targets": ["1f469"], "attributes": {...}}

``reference`` and ``targets`` are image ids of the dataset (a path relative to its image
folder, without suffix). A dataset folder holds ``dataset.json`` (name, image folder, split
files), ``images.jsonl`` (one record per image: id, file, split, caption, attributes) and the
split triplet files.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from cirlab.errors import CirlabError
from cirlab.files import atomic_write_text
from cirlab.images import list_images


@dataclass
class Triplet:
    """One composed query: reference image id, modification text, the ids that satisfy it."""

    reference: str
    text: str
    targets: list[str]
    attributes: dict = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({"reference": self.reference, "text": self.text, "targets": self.targets,
                           "attributes": self.attributes}, ensure_ascii=False)


def read_triplets(path: str | Path) -> list[Triplet]:
    path = Path(path)
    if not path.is_file():
        raise CirlabError(f"triplet file {path} does not exist")
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
            targets = d["targets"] if "targets" in d else [d["target"]]
            out.append(Triplet(str(d["reference"]), str(d["text"]), [str(t) for t in targets], d.get("attributes", {})))
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise CirlabError(f"{path}:{n}: not a triplet line ({type(e).__name__}: {e}); "
                              'expected {"reference": ..., "text": ..., "targets": [...]}') from None
    return out


def write_triplets(path: str | Path, triplets: Iterable[Triplet]) -> int:
    lines = [t.to_json() for t in triplets]
    atomic_write_text(Path(path), "\n".join(lines) + ("\n" if lines else ""))
    return len(lines)


@dataclass
class Gallery:
    """Images that can be retrieved: ids in a fixed order and their files."""

    ids: list[str]
    paths: list[Path]

    def __post_init__(self) -> None:
        self.position = {i: n for n, i in enumerate(self.ids)}

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def from_folder(cls, folder: str | Path) -> "Gallery":
        """Every image under ``folder``; its id is the relative path without suffix."""
        folder = Path(folder)
        paths = list_images(folder)
        if not paths:
            raise CirlabError(f"gallery folder {folder} holds no jpg/png/webp images")
        ids = [p.relative_to(folder).with_suffix("").as_posix() for p in paths]
        if len(set(ids)) != len(ids):  # a.jpg beside a.png: keep suffixes to stay unique
            ids = [p.relative_to(folder).as_posix() for p in paths]
        return cls(ids, paths)

    def subset(self, keep: Iterable[str]) -> "Gallery":
        keep = set(keep)
        pairs = [(i, p) for i, p in zip(self.ids, self.paths) if i in keep]
        return Gallery([i for i, _ in pairs], [p for _, p in pairs])


def record_splits(record: dict) -> list[str]:
    """The splits an image record belongs to: ``"split"`` is one name, or a list where a benchmark
    shares an image between splits (FashionIQ's shirt and toptee val images)."""
    split = record.get("split")
    return list(split) if isinstance(split, list) else [split]


def held_out(image_id: str, share: float) -> bool:
    """Whether an image falls in the held-out ``share`` (by a hash of its id: the same on every run)."""
    return int(hashlib.sha1(image_id.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < share


class Dataset:
    """A dataset folder: image records, split triplets and the gallery of each split."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        manifest = self.root / "dataset.json"
        if not manifest.is_file():
            raise CirlabError(f"{self.root} is not a cirlab dataset (no dataset.json); build one with "
                              "'cirlab data make emojiedit'")
        self.meta = json.loads(manifest.read_text())
        self.name = self.meta["name"]
        self.image_dir = self.root / self.meta.get("images", "images")
        self.images = [json.loads(x) for x in (self.root / "images.jsonl").read_text().splitlines() if x.strip()]
        self.by_id = {r["id"]: r for r in self.images}

    @classmethod
    def from_triplets(cls, triplets: str | Path, images: str | Path | None = None) -> "Dataset":
        """A one-split dataset from a triplet JSONL file and an image folder (ids are paths relative
        to it without suffix; default: the ``images`` folder beside the file, else the file's folder)."""
        triplets = Path(triplets)
        if not triplets.is_file():
            raise CirlabError(f"triplet file {triplets} does not exist")
        if images is None:
            images = triplets.parent / "images" if (triplets.parent / "images").is_dir() else triplets.parent
        gallery = Gallery.from_folder(images)
        ds = cls.__new__(cls)
        ds.root = triplets.parent
        ds.meta = {"name": triplets.stem, "splits": {"train": str(triplets.resolve())}}
        ds.name = triplets.stem
        ds.image_dir = Path(images)
        ds.images = [{"id": i, "file": p.relative_to(images).as_posix(), "split": "train"}
                     for i, p in zip(gallery.ids, gallery.paths)]
        ds.by_id = {r["id"]: r for r in ds.images}
        return ds

    @classmethod
    def from_captions(cls, path: str | Path, images: str | Path | None = None, val_share: float = 0.1) -> "Dataset":
        """Image-caption pairs without triplets (``{"image": ..., "caption": ...}`` lines; ``image`` is a path
        relative to the image folder, with or without suffix), for image-text alignment in stage 1.
        A seeded ``val_share`` of the images (by a hash of the id) is held out as ``val``."""
        path = Path(path)
        images = Path(images) if images is not None else (path.parent / "images" if (path.parent / "images").is_dir()
                                                          else path.parent)
        gallery = Gallery.from_folder(images)
        by_id = {**{p.relative_to(images).as_posix(): i for i, p in zip(gallery.ids, gallery.paths)},
                 **{i: i for i in gallery.ids}}
        records, unknown = {}, 0
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
                key, caption = str(d["image"]), str(d["caption"])
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise CirlabError(f"{path}:{n}: not an image-caption line ({type(e).__name__}); "
                                  'expected {"image": "relative/path.jpg", "caption": "..."}') from None
            i = by_id.get(key) or by_id.get(Path(key).with_suffix("").as_posix())
            if i is None:
                unknown += 1
                continue
            split = "val" if held_out(i, val_share) else "train"
            records.setdefault(i, {"id": i, "file": gallery.paths[gallery.position[i]].relative_to(images).as_posix(),
                                   "split": split, "caption": caption})
        if not records:
            raise CirlabError(f"none of the images named in {path} is under {images}; give the folder its ids are relative to")
        ds = cls.__new__(cls)
        ds.root, ds.image_dir, ds.name = path.parent, images, path.stem
        ds.meta = {"name": path.stem, "splits": {}, "captions_only": True, "unknown_images": unknown}
        ds.images = list(records.values())
        ds.by_id = records
        return ds

    def zero_shot(self, train_split: str = "train", val_share: float = 0.1, captions: bool = True) -> "Dataset":
        """What a zero-shot run may read of this data set: the images of its training split and their captions,
        as an image-caption data set (``val_share`` of them, by a hash of the id, held out as ``val``). No
        triplet, no modification text, no attribute and no image of another split is in it, and asking it for
        triplets is an error; it is made from ``images.jsonl`` alone, so no triplet file is opened. ``captions``:
        refuse a data set with no captioned training image (what learns from images alone passes False)."""
        records = {}
        for r in self.images:
            if train_split in record_splits(r):
                records[r["id"]] = {"id": r["id"], "file": r["file"], "split": "val" if held_out(r["id"], val_share)
                                    else "train", **({"caption": r["caption"]} if r.get("caption") else {})}
        if captions and not any(r.get("caption") for r in records.values()):
            raise CirlabError(f"data set {self.name} has no captioned {train_split!r} images: a zero-shot run learns "
                              "from the training images' captions (images.jsonl 'caption')")
        ds = Dataset.__new__(Dataset)
        ds.root, ds.image_dir, ds.name = self.root, self.image_dir, f"{self.name}-zero-shot"
        ds.meta = {"name": ds.name, "splits": {}, "captions_only": True,
                   "zero_shot": {"source": self.name, "reads": f"the {train_split!r} images and their captions",
                                 "val_share": val_share}}
        ds.images = list(records.values())
        ds.by_id = records
        return ds

    @classmethod
    def open(cls, data: str | Path, images: str | Path | None = None) -> "Dataset":
        """A dataset folder, a triplet JSONL file with its image folder, or an image-caption JSONL file."""
        data = Path(data)
        if data.suffix != ".jsonl":
            return cls(data)
        if not data.is_file():
            raise CirlabError(f"{data} does not exist")
        first = next((x for x in data.read_text().splitlines() if x.strip()), "{}")
        try:
            keys = set(json.loads(first))
        except (json.JSONDecodeError, TypeError):
            keys = set()
        if "caption" in keys and "reference" not in keys:
            return cls.from_captions(data, images)
        return cls.from_triplets(data, images)

    @property
    def splits(self) -> list[str]:
        return list(self.meta["splits"])

    @property
    def identity(self) -> dict:
        """What a model trained on this data set records of it (a reused model must match): the name, the
        generator's version and seed, and the options that change its triplets (phrasings, mirror pairs)."""
        return {"name": self.name, "version": self.meta.get("version"), "seed": self.meta.get("seed"),
                **{k: self.meta[k] for k in ("phrasings", "mirror_pairs") if self.meta.get(k)}}

    @property
    def captions(self) -> dict[str, str]:
        """Image id -> caption, for the images that have one."""
        return {r["id"]: r["caption"] for r in self.images if r.get("caption")}

    @property
    def exclude_reference(self) -> bool:
        """Whether a query's reference is left out of its ranking: the data set's protocol
        (``dataset.json`` ``protocol.exclude_reference``), true unless it says otherwise."""
        return bool(self.meta.get("protocol", {}).get("exclude_reference", True))

    def triplets(self, split: str) -> list[Triplet]:
        if split not in self.meta["splits"]:
            raise CirlabError(f"dataset {self.name} has no split {split!r}; it has {', '.join(self.splits)}")
        return read_triplets(self.root / self.meta["splits"][split])

    def gallery(self, split: str | None = None) -> Gallery:
        """The images of a split (the evaluation gallery), or all images."""
        recs = [r for r in self.images if split is None or split in record_splits(r)]
        return Gallery([r["id"] for r in recs], [self.image_dir / r["file"] for r in recs])
