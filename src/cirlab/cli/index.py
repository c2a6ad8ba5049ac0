"""``cirlab index build|add|remove|info|verify``: a persistent index of a gallery (``index.store``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from cirlab.cli import common


def add_parser(sub) -> None:
    ix = sub.add_parser("index", help="build, grow, shrink and describe a persistent index of a gallery")
    isub = ix.add_subparsers(dest="action", metavar="ACTION", required=True)
    writer = [common.quiet(), common.model(), common.zero_shot(), common.cache(), common.runtime()]
    ib = isub.add_parser("build", parents=writer, help="embed a folder of images with a model and index it")
    ib.add_argument("gallery", type=Path, help="folder of jpg/png/webp images (searched recursively)")
    ib.add_argument("--out", type=Path, required=True, help="index folder to write")
    ib.add_argument("--backend", default="exact",
                    help="exact (default), knn, kdtree, lsh[:bits=256,candidates=100], faiss:FACTORY[,nprobe=N,ef=N] "
                         "(e.g. faiss:HNSW32, faiss:IVF1024,PQ64), kmeans_svm[:k=15,probe=1], "
                         "qdrant[:path=DIR | url=http://HOST:6333][,collection=NAME] (Qdrant Edge embedded, or a server)")
    ib.add_argument("--metadata", type=Path, default=None,
                    help="JSONL, CSV or Parquet file of per-image records keyed by id, path or file (name, caption, "
                         "category...: shown by the API and web page, and filterable); without it, a data set's "
                         "images.jsonl in the gallery folder or its parent is attached")
    ib.add_argument("--engine", choices=["local", "ray"], default="local",
                    help="local (this process, through the feature cache) or ray (a pool of encoder actors on Ray Data; "
                         "pip install 'cirlab[ray]')")
    ib.add_argument("--address", default=None, help="with --engine ray: a Ray cluster to join (default: start Ray here)")
    ib.add_argument("--workers", type=int, default=None, help="with --engine ray: encoder actors (default: one per CPU)")
    ib.add_argument("--shard-size", type=int, default=4096,
                    help="images per shard under OUT/embeddings (a restarted build skips finished shards)")
    ia = isub.add_parser("add", parents=writer, help="add images (files or folders) to an index")
    ia.add_argument("dir", type=Path, help="index folder")
    ia.add_argument("paths", nargs="+", type=Path, help="images or folders of images")
    ir = isub.add_parser("remove", help="remove images by id")
    ir.add_argument("dir", type=Path, help="index folder")
    ir.add_argument("ids", nargs="+", help="ids to remove (see 'cirlab search --index ... --json')")
    ii = isub.add_parser("info", help="number of vectors, dimension, backend, model, and an integrity check")
    ii.add_argument("dir", type=Path, help="index folder")
    iv = isub.add_parser("verify", help="check every file of the live version against the manifest's sizes and "
                                        "checksums; exit 1 if the index is damaged, 3 if another process holds it")
    iv.add_argument("dir", type=Path, help="index folder")
    ix.set_defaults(func=run)


def run(a: argparse.Namespace) -> int:
    from cirlab.index import check_index, describe_index
    from cirlab.indexing import add_images, build_gallery_index, gallery_ids, remove_images

    if a.action == "verify":  # exit 0 sound, 1 damaged, 3 in use by another process (cirlab.cli's codes)
        integrity = check_index(a.dir)
        print("\n".join(integrity.problems) if integrity.problems else f"{a.dir}: {integrity.line()}")
        return integrity.exit_code
    if a.action == "info":
        text, integrity = describe_index(a.dir)
        print(text)
        return integrity.exit_code
    if a.action == "remove":
        change = remove_images(a.dir, a.ids)
        print(f"removed {change.removed} of {len(a.ids)} id(s); {change.total} vectors remain")
        return 0
    pipe = common.pipeline(a)
    if a.action == "build":
        index, report, source = build_gallery_index(pipe, a.gallery, a.out, a.backend, a.engine, a.address, a.workers,
                                                    a.shard_size, a.metadata, progress=not a.quiet)
        if source:
            print(f"attached metadata from {source} to {sum(len(m) > 1 for m in index.metadata)} of {len(index)} images")
        if report.resumed:
            print(f"resumed: {report.resumed} images were already in {a.out}/embeddings")
        for path, why in report.failed[:5]:
            print(f"unreadable: {path}: {why}")
        print(f"indexed {len(index)} images ({len(report.failed)} unreadable) with {index.spec} into {a.out} "
              f"({a.engine} engine: " + ", ".join(f"{k} {v:.1f} s" for k, v in report.seconds.items()) + ")")
        return 0
    change = add_images(pipe, a.dir, gallery_ids(a.dir, a.paths), progress=not a.quiet)
    twice = f", {len(change.duplicates)} given twice and stored once" if change.duplicates else ""
    print(f"added {len(change.added)} image(s) ({change.new} new, {len(change.unreadable)} unreadable{twice}); "
          f"{change.total} vectors")
    return 0
