"""``cirlab data make NAME``: every data set cirlab builds, behind one function."""

from __future__ import annotations

from pathlib import Path

from cirlab.data.fashion200k import load_fashion200k
from cirlab.data.fashioniq import FASHIONIQ_CATEGORIES, load_fashioniq
from cirlab.data.public import export_dataset, read_image_captions
from cirlab.data.shoes import load_shoes
from cirlab.errors import CirlabError
from cirlab.files import atomic_write_text

BUILT = ("emojiedit", "css")  # drawn here, offline
FROM_FILES = ("fashioniq", "shoes", "fashion200k", "cirr")  # made from a public benchmark's published files


def make_dataset(name: str, out: str | Path, seed: int = 0, size: int = 4000, config: str | None = None,
                 image_size: int = 224, annotations: str | Path | None = None, images: str | Path | None = None,
                 categories: list[str] | None = None, spelling: str | Path | None = None,
                 captions: str | Path | None = None, styles: list[str] | None = None,
                 test_style: str | None = None, mirror_pairs: bool | list[str] = False, phrasings: int = 1) -> dict:
    """Build data set ``name`` into ``out`` and return its counts. EmojiEdit and CSS-like are drawn here
    (``size`` / ``config`` / ``image_size``: CSS-like's; ``styles`` / ``test_style``: EmojiEdit's art sets,
    ``mirror_pairs``: its synthetic facing edits, for training (True) or for the splits named; ``phrasings``: the
    version of their phrasing grammar, :mod:`cirlab.data.phrasing`);
    a public benchmark becomes a cirlab data set that points at the user's ``images``, its missing image
    ids listed in ``out/missing.txt``."""
    if (styles or test_style or mirror_pairs) and name != "emojiedit":
        raise CirlabError(f"art styles and mirror pairs are EmojiEdit's; data set {name} is drawn in one way")
    if phrasings != 1 and name not in ("emojiedit", "css"):
        raise CirlabError(f"--phrasings is for the data sets cirlab draws (emojiedit, css); {name}'s texts are its "
                          "annotators'")
    if name == "emojiedit":
        from cirlab.data.emojiedit import build_emojiedit

        return build_emojiedit(out, seed=seed, styles=styles, test_style=test_style, mirror_pairs=mirror_pairs,
                               phrasings=phrasings)
    if name == "css":
        from cirlab.data.css import build_css

        return build_css(out, size=size, seed=seed, image_size=image_size, config=config, phrasings=phrasings)
    if name in FROM_FILES:
        if annotations is None or images is None:
            raise CirlabError(f"data set {name} is made from its annotation folder (as published) and its images "
                              "folder: give both")
        counts = make_benchmark_dataset(name, annotations, images, out, categories, spelling, captions, seed)
        if counts["missing"]:
            atomic_write_text(Path(out) / "missing.txt", "\n".join(counts["missing"]) + "\n")
            counts["missing"] = f"{len(counts['missing'])} image ids, listed in {Path(out) / 'missing.txt'}"
        return counts
    raise CirlabError(f"unknown data set {name!r}; this version builds: {', '.join(BUILT)}, and from a benchmark's "
                      f"files: {', '.join(FROM_FILES[:3])}")


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
