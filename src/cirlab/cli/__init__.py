"""The one command line: ``cirlab COMMAND``. Each command is a module of this package with an
``add_parser`` and a ``run``: a thin call into the library, as clip-retrieval's commands are. User
mistakes print one line (``cirlab: error: ...``) and exit 2."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from cirlab import __version__, settings
from cirlab.cli import bench, data, demo, encode, evaluate, index, methods, search, serve, train
from cirlab.errors import CirlabError

COMMANDS = (demo, data, encode, train, evaluate, search, index, bench, serve, methods)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cirlab", description="Composed image retrieval: a reference image plus a "
                                "modification text -> ranked gallery images. Train, evaluate and search.")
    p.add_argument("--version", action="version", version=f"cirlab {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    return p


def compute_settings(args: argparse.Namespace) -> None:
    """Where and how this command's networks run: ``--device``, ``--runtime`` and ``--precision`` are checked
    now (a wrong one is refused before any work) and hold for every encoder and model the command builds."""
    from cirlab.devices import resolve_device, resolve_precision
    from cirlab.encoders.runtime import resolve_runtime

    if getattr(args, "device", None):
        os.environ["CIRLAB_DEVICE"] = str(resolve_device(args.device))
    if getattr(args, "runtime", None):
        os.environ["CIRLAB_RUNTIME"] = resolve_runtime(args.runtime, resolve_device(None))
    if getattr(args, "precision", None):
        resolve_precision(args.precision, resolve_device(None))
        os.environ["CIRLAB_PRECISION"] = args.precision


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="cirlab: warning: %(message)s")
    settings.offline()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        compute_settings(args)
        return args.func(args)
    except CirlabError as e:
        print(f"cirlab: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cirlab: interrupted", file=sys.stderr)
        return 130
