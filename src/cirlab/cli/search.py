"""``cirlab search``: composed search over a folder (an in-memory exact index of it) or a saved index, through
``api.Pipeline.search`` and so the one search (``index.search``)."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from cirlab.cli import common
from cirlab.errors import CirlabError

log = logging.getLogger("cirlab")


def add_parser(sub) -> None:
    s = sub.add_parser("search", parents=[common.model(), common.spelling(), common.zero_shot(), common.cache(), common.runtime(),
                                           common.rerank()],
                       help="composed search over a folder of images or an index")
    where = s.add_mutually_exclusive_group(required=True)
    where.add_argument("--gallery", type=Path, help="folder of jpg/png/webp images (searched recursively)")
    where.add_argument("--index", type=Path, help="an index folder made by 'cirlab index build'")
    s.add_argument("--scoring", default=None,
                   help="paper 000's combined score, e.g. 'cosine=1,euclidean=0.5,hamming=0.2,l1=0,"
                        "candidates=100' (re-ranks the backend's candidates)")
    s.add_argument("--image", type=Path, default=None,
                   help="reference image (left out: a plain text-to-image search through the model's text head)")
    s.add_argument("--text", required=True, help='modification text, e.g. "make it red"')
    s.add_argument("-k", type=int, default=10, help="number of results (default: %(default)s)")
    s.add_argument("--exclude-reference", action="store_true", help="leave the reference image out of the results")
    s.add_argument("--filter", action="append", default=[], metavar="FIELD=VALUE[,VALUE]",
                   help="keep images whose metadata FIELD is VALUE (or one of the VALUEs); repeat for more fields, all "
                        "of which must match (e.g. --filter family=colour). A folder's metadata: --metadata, else a data "
                        "set's images.jsonl in the folder or its parent")
    s.add_argument("--metadata", type=Path, default=None,
                   help="with --gallery: a JSONL, CSV or Parquet file of per-image records keyed by id, path or file "
                        "(what --filter matches and the results name)")
    s.add_argument("--json", action="store_true", help="print JSON for machines")
    s.set_defaults(func=run)


def run(a: argparse.Namespace) -> int:
    from cirlab.api import check_text
    from cirlab.index import CombinedScoring, check_filter, load_index, parse_filter_args
    from cirlab.index.metadata import gallery_metadata

    check_text(a.text)
    where = parse_filter_args(a.filter) or None
    check_filter(where)
    scoring = CombinedScoring.parse(a.scoring) if a.scoring else None
    if a.metadata is not None and a.index is not None:
        raise CirlabError("--metadata is for --gallery: an index keeps the metadata it was built with")
    if a.image is not None and not a.image.is_file():
        raise CirlabError(f"reference image {a.image} does not exist")
    pipe = common.pipeline(a)
    rerank = common.served_reranker(a, pipe)
    if rerank and rerank.candidates < a.k:
        log.warning("re-ranking the top %d: candidates=%d is below -k %d, so it is raised to k", a.k,
                    rerank.candidates, a.k)
    skipped = 0
    if a.index is not None:
        index, _ = load_index(a.index, pipe.model.embed_dim, pipe.identity)
    else:
        gallery = pipe.encode_gallery(a.gallery, progress=not a.json)
        if gallery.failed:
            log.warning("skipped %d unreadable gallery image(s), e.g. %s", len(gallery.failed), gallery.failed[0][1])
        found = gallery_metadata(a.gallery, a.metadata)
        index = gallery.to_index(records=found[1] if found else None, root=a.gallery)
        skipped = len(gallery.failed)
    searched, corrections = pipe.spell(a.text)
    hits = pipe.search(index, a.image, a.text, a.k, exclude_reference=a.exclude_reference, scoring=scoring,
                       filter=where, rerank=rerank)
    if a.json:
        print(json.dumps({"query": {"image": str(a.image) if a.image else None, "text": a.text,
                                    "searched_for": searched, "corrections": corrections},
                          "model": pipe.meta["method"], "results": [h.__dict__ for h in hits], "skipped": skipped}))
    else:
        if corrections:
            print(f"searched for: {searched}  (" + ", ".join(f"{c['from']} -> {c['to']}" for c in corrections) + ")")
        for h in hits:
            print(f"{h.rank:>3}  {h.score:.4f}  {h.path or h.id}" + (f"  ({h.name})" if h.name else ""))
    return 0
