"""``cirlab serve``: the HTTP API and the web page over an index (``serve.app``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from cirlab.cli import common
from cirlab.errors import CirlabError


def add_parser(sub) -> None:
    sv = sub.add_parser("serve", parents=[common.model(), common.spelling(), common.zero_shot(), common.cache(), common.runtime(),
                                            common.rerank()],
                        help="the HTTP API and web page over an index (FastAPI + uvicorn)",
                        description="Serve composed search over an index: POST /search, GET /images/{id}, GET /gallery, "
                                    "GET /health, GET /info, /docs, and the page at /. POST /gallery and DELETE "
                                    "/gallery/{id} need the bearer token in $CIRLAB_API_TOKEN (unset: they are off).")
    sv.add_argument("--index", type=Path, required=True, help="an index folder made by 'cirlab index build'")
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s, this machine only)")
    sv.add_argument("--port", type=int, default=8000, help="port (default: %(default)s)")
    sv.add_argument("--max-upload-mb", type=float, default=10.0, help="largest upload in MB (default: %(default)s)")
    sv.add_argument("--batch-window-ms", type=float, default=5.0,
                    help="how long concurrent searches are gathered into one encoder batch (default: %(default)s; "
                         "a lone client never waits)")
    sv.add_argument("--max-batch", type=int, default=32, help="most searches in one batch (default: %(default)s)")
    sv.set_defaults(func=run)


def run(a: argparse.Namespace) -> int:
    from cirlab.optional import need

    for module in ("fastapi", "uvicorn", "swagger_ui_bundle"):
        need(module, "serve", "cirlab serve")
    from cirlab.serve.app import serve

    if not 1 <= a.port <= 65535:
        raise CirlabError(f"--port must be between 1 and 65535, got {a.port}")
    if a.max_upload_mb <= 0:
        raise CirlabError(f"--max-upload-mb must be positive, got {a.max_upload_mb}")
    if a.batch_window_ms < 0 or a.max_batch < 1:
        raise CirlabError(f"--batch-window-ms must be 0 or more and --max-batch at least 1, got {a.batch_window_ms} "
                          f"and {a.max_batch}")
    pipe = common.pipeline(a)
    serve(str(a.index), pipe, a.host, a.port, a.max_upload_mb, a.batch_window_ms, a.max_batch,
          common.served_reranker(a, pipe))
    return 0
