"""``cirlab index build|add|remove|info|verify``: a persistent index of a gallery (``index.store``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from cirlab.cli import common


def add_parser(sub) -> None:
    ix = sub.add_parser("index", help="build, grow, shrink and describe a persistent index of a gallery")
    isub = ix.add_subparsers(dest="action", metavar="ACTION", required=True)
    writer = [common.quiet(), common.model(), common.cache(), common.runtime()]
    ib = isub.add_parser("build", parents=writer, help="embed a folder of images with a model and index it")
    ib.add_argument("gallery", type=Path, help="folder of jpg/png/webp images (searched recursively)")
    ib.add_argument("--out", type=Path, required=True, help="index folder to write")
    ib.add_argument("--backend", default="exact",
                    help="exact (default), knn, kdtree, lsh[:bits=256,candidates=100], faiss:FACTORY[,nprobe=N,ef=N] "
                         "(e.g. faiss:HNSW32, faiss:IVF1024,PQ64), kmeans_svm[:k=15,probe=1], "
                         "qdrant[:path=DIR | url=http://HOST:6333,collection=NAME]")
    ib.add_argument("--metadata", type=Path, default=None,
                    help="JSONL, CSV or Parquet file of per-image records keyed by id, path or file (name, caption, "
                         "category...: shown by the API and web page, and filterable); without it, a data set's "
                         "images.jsonl in the gallery folder or its parent is attached")
    ia = isub.add_parser("add", parents=writer, help="add images (files or folders) to an index")
    ia.add_argument("dir", type=Path, help="index folder")
    ia.add_argument("paths", nargs="+", type=Path, help="images or folders of images")
    ir = isub.add_parser("remove", help="remove images by id")
    ir.add_argument("dir", type=Path, help="index folder")
    ir.add_argument("ids", nargs="+", help="ids to remove (see 'cirlab search --index ... --json')")
    ii = isub.add_parser("info", help="number of vectors, dimension, backend, model, and an integrity check")
    ii.add_argument("dir", type=Path, help="index folder")
    iv = isub.add_parser("verify", help="check every file of the live version against the manifest's sizes and "
                                        "checksums; exit 1 if the index is damaged")
    iv.add_argument("dir", type=Path, help="index folder")
    ix.set_defaults(func=run)


def run(a: argparse.Namespace) -> int:
    from cirlab.api import Pipeline
    from cirlab.data.triplets import Gallery
    from cirlab.index import describe_index, save_index, update_index, verify_index
    from cirlab.index.metadata import dataset_metadata, read_metadata

    if a.action == "verify":
        problems = verify_index(a.dir)
        print("\n".join(problems) if problems else f"{a.dir}: sound (every file matches its size and checksum)")
        return 1 if problems else 0
    if a.action == "info":
        text, problems = describe_index(a.dir)
        print(text)
        return 1 if problems else 0
    if a.action == "remove":
        with update_index(a.dir) as index:
            removed = index.remove(a.ids)
        print(f"removed {removed} of {len(a.ids)} id(s); {len(index)} vectors remain")
        return 0
    pipe = Pipeline.load(a.model, a.cache)
    if a.action == "build":
        found = (a.metadata, read_metadata(a.metadata)) if a.metadata else dataset_metadata(a.gallery)
        index, failed = pipe.index_gallery(Gallery.from_folder(a.gallery), a.backend, progress=not a.quiet,
                                           metadata=found[1] if found else None, root=a.gallery)
        if found:
            matched = sum(len(m) > 1 for m in index.metadata)
            print(f"attached metadata from {found[0]} to {matched} of {len(index)} images")
        save_index(index, a.out, {**pipe.identity, "gallery": str(Path(a.gallery).resolve())})
        print(f"indexed {len(index)} images ({len(failed)} unreadable) with {index.spec} into {a.out}")
        return 0
    n = pipe.add_to_index(a.dir, a.paths, progress=not a.quiet)
    print(f"added {n['added']} image(s) ({n['new']} new, {n['unreadable']} unreadable); {n['total']} vectors")
    return 0
