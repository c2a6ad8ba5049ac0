"""``cirlab data make NAME``: build a data set (``data.make.make_dataset``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cirlab.errors import CirlabError


def add_parser(sub) -> None:
    d = sub.add_parser("data", help="build a data set")
    dsub = d.add_subparsers(dest="action", metavar="ACTION", required=True)
    m = dsub.add_parser("make", help="generate a data set into a folder")
    m.add_argument("name", help="emojiedit (Twemoji edits), css (TIRG-style scenes of shapes), or a public "
                                "benchmark made a cirlab data set from its files: fashioniq, shoes, fashion200k")
    m.add_argument("--out", type=Path, required=True, help="output folder")
    m.add_argument("--seed", type=int, default=0, help="split and phrasing seed (default: %(default)s)")
    m.add_argument("--size", type=int, default=4000, help="css: number of triplets, 70/10/20 train/val/test "
                                                          "(default: %(default)s)")
    m.add_argument("--config", default=None, metavar="NAME",
                   help="css: a named configuration instead of --size: small (2,800/400/800 triplets) or large "
                        "(16,000/1,000/8,000, a test gallery of over 10,000 scenes)")
    m.add_argument("--image-size", type=int, default=224, help="css: pixels of images/ (images64/ is always 64; "
                                                               "default: %(default)s)")
    m.add_argument("--style", action="append", default=None, metavar="STYLE",
                   help="emojiedit: the art set the images are drawn in (repeat for several): twemoji (default), "
                        "fluent-flat, fluent-color, fluent-high-contrast (Fluent Emoji), noto (Noto Emoji, another "
                        "artist; 'make styles' installs both)")
    m.add_argument("--test-style", default=None, metavar="STYLE",
                   help="emojiedit: an art set held out of training: the test split is drawn in it alone, and "
                        "the same queries in each --style set form the split test-<style>")
    m.add_argument("--mirror-pairs", nargs="?", const="train", default=None, metavar="SPLITS",
                   help="emojiedit: add synthetic facing edits (each image and its mirror, both ways; bases with "
                        "real facing variants left out) to these splits: 'train' (the default when the flag is "
                        "given alone) or 'train,val', so that choosing the best epoch sees facing edits too; the "
                        "test split is never mirrored")
    m.add_argument("--phrasings", type=int, default=1, metavar="N",
                   help="emojiedit / css: the version of the phrasing grammar the texts are drawn from: 1, the "
                        "generator's own few (default), or 2, with a terse, declarative, 'should', notation, "
                        "negation and longer phrasing of every edit (the same scenes and edits)")
    m.add_argument("--annotations", type=Path, default=None, help="benchmarks: the annotation folder, as published")
    m.add_argument("--images", type=Path, default=None, help="benchmarks: the folder holding its images "
                                                             "(they are referenced, not copied)")
    m.add_argument("--category", action="append", choices=["dress", "shirt", "toptee"], default=None,
                   help="fashioniq: train on these categories (repeat; default: all three); each gets a "
                        "val-<category> split")
    m.add_argument("--spelling", type=Path, default=None, help="fashioniq / shoes: a spelling-correction dictionary "
                                                               "(file, or DQU-CIR's folder for fashioniq)")
    m.add_argument("--captions", type=Path, default=None,
                   help="benchmarks: per-image captions (DQU-CIR's BLIP-2 files, a file or a folder) for the text "
                        "head and dqu; shoes reads captions_shoes.json and fashion200k its labels by default")
    m.set_defaults(func=run)


def run(a: argparse.Namespace) -> int:
    from cirlab.data.make import FROM_FILES, make_dataset

    if a.name in FROM_FILES and (a.annotations is None or a.images is None):
        raise CirlabError(f"'data make {a.name}' needs --annotations DIR (as published) and --images DIR")
    counts = make_dataset(a.name, a.out, a.seed, a.size, a.config, a.image_size, a.annotations, a.images, a.category,
                          a.spelling, a.captions, a.style, a.test_style,
                          [s.strip() for s in a.mirror_pairs.split(",")] if a.mirror_pairs else False, a.phrasings)
    print(json.dumps(counts, indent=2))
    return 0
