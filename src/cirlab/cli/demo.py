"""``cirlab demo``: the whole pipeline on EmojiEdit (what ``make demo`` runs)."""

from __future__ import annotations

import argparse
from pathlib import Path

from cirlab.cli import common


def add_parser(sub) -> None:
    d = sub.add_parser("demo", parents=[common.quiet(), common.runtime()],
                       help="build EmojiEdit, encode, train, evaluate, show example queries")
    d.add_argument("--data", type=Path, default=Path("data/emojiedit-demo"),
                   help="where the data set is built, EmojiEdit with mirror pairs in train and val, if it is not "
                        "there yet (default: %(default)s)")
    d.add_argument("--out", type=Path, default=Path("demo_out"), help="where the report goes (default: %(default)s)")
    d.add_argument("--seed", type=int, default=0, help="data set seed (default: %(default)s)")
    d.set_defaults(func=run)


def run(a: argparse.Namespace) -> int:
    from cirlab.demo import run_demo

    run_demo(a.data, a.out, seed=a.seed, progress=not a.quiet, placement=a.placement)
    return 0
