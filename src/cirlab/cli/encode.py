"""``cirlab encode GALLERY``: fill the feature cache for a folder (``data.features.image_table``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from cirlab.cli import common
from cirlab.errors import CirlabError


def add_parser(sub) -> None:
    e = sub.add_parser("encode", parents=[common.image_encoder(), common.quiet(), common.cache(), common.runtime()],
                       help="encode a folder of images into the feature cache")
    e.add_argument("gallery", type=Path, help="folder of jpg/png/webp images")
    e.add_argument("--views", nargs="+", default=["pooled"],
                   choices=["pooled", "tokens", "local", "levels", "colour", "thumbnail"],
                   help="views to cache: the pooled vector, region tokens, the local map (before the last stage), "
                        "intermediate levels, colour statistics, a 32 px thumbnail")
    e.add_argument("--fit-vocabulary", action="store_true",
                   help="sift_bovw: learn the visual vocabulary (k-means over SIFT descriptors) from this folder "
                        "first, then encode; prints the spec that names it")
    e.set_defaults(func=run)


def run(a: argparse.Namespace) -> int:
    from cirlab.data.features import image_table
    from cirlab.data.triplets import Gallery
    from cirlab.encoders import build_image_encoder

    enc = build_image_encoder(a.image_encoder, a.placement)
    gallery = Gallery.from_folder(a.gallery)
    cache = common.feature_cache(a)
    if a.fit_vocabulary:
        if not hasattr(enc, "fit"):
            raise CirlabError(f"{a.image_encoder} learns nothing from images; --fit-vocabulary is for sift_bovw")
        enc = enc.fit(gallery.paths, cache.root, progress=not a.quiet, refit=True)
        print(f"visual vocabulary of {enc.k} words fitted on {len(gallery)} images: {enc.vocab_path}\n"
              f"use it with --image-encoder {enc.spec}")
    elif not getattr(enc, "fitted", True):
        raise CirlabError(f"{a.image_encoder} has no visual vocabulary yet: add --fit-vocabulary to learn one "
                          "from this folder, or name one with vocab=PATH")
    table, failed = image_table(cache, enc, gallery, tuple(a.views), not a.quiet)
    print(f"{len(table)} images encoded or read from the cache by {enc.id}; {len(failed)} unreadable")
    return 0
