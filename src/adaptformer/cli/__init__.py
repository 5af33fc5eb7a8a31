"""Command line: ``adaptformer <command> ...``. User errors print ``error: <one line>`` and exit with status 2."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ..errors import AdaptFormerError
from ..runtime.allocator import tune_allocator
from ..version import __version__
from .commands import COMMANDS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="adaptformer", description=__doc__)
    parser.add_argument("--version", action="version", version=f"adaptformer {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, add_arguments, run) in COMMANDS.items():
        child = sub.add_parser(name, help=help_text, description=help_text)
        add_arguments(child)
        child.set_defaults(run=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        tune_allocator()  # before any tensor: large activations reused, not page-faulted in again per forward
        parser = build_parser()  # imports the method plugins: the flags of their options are built here
    except AdaptFormerError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except AdaptFormerError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
