"""The one command line: ``cirlab COMMAND``. Each command is a module of this package with an
``add_parser`` and a ``run``: a thin call into the library, as clip-retrieval's commands are. User
mistakes print one line (``cirlab: error: ...``) and exit 2.

Exit codes: 0 done; 1 ``index verify`` / ``index info`` found the index damaged; 2 a mistake to mend (the line
says what); 3 the index (its Qdrant shard) is in use by another process, not damaged; 130 interrupted."""

from __future__ import annotations

import argparse
import logging
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


def place(args: argparse.Namespace) -> None:
    """Where and how this command's networks run, resolved once (a wrong ``--device``, ``--runtime``,
    ``--precision`` or ``--encoder-precision`` is refused before any work) into ``args.placement``, which the
    command passes to every encoder and model it builds. A command that runs no network gets None."""
    from cirlab.devices import Placement

    args.placement = None
    if hasattr(args, "device"):
        args.placement = Placement.resolve(args.device, args.runtime, getattr(args, "precision", None),
                                           getattr(args, "encoder_precision", None))


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="cirlab: warning: %(message)s")
    settings.offline()
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]  # as given: what a launcher of ranks repeats
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        place(args)
        return args.func(args)
    except CirlabError as e:
        print(f"cirlab: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("cirlab: interrupted", file=sys.stderr)
        return 130
