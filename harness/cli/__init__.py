"""The ``wsi-harness`` command line.

Each area registers its own sub-commands (``register(subparsers)``) from a
module in this package; this module only dispatches and turns
:class:`~harness.errors.HarnessError` into one ``error:`` line.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback
from typing import TYPE_CHECKING

from harness import __version__
from harness.errors import HarnessError

if TYPE_CHECKING:
    from collections.abc import Sequence

#: Modules that contribute sub-commands, in help order.
_COMMAND_MODULES = ("slides", "segment", "outputs", "measure", "versus")


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, with every area's sub-commands."""
    parser = argparse.ArgumentParser(
        prog="wsi-harness",
        description="Bounded-memory whole-slide segmentation, and the tools to prove it.",
    )
    parser.add_argument("--version", action="version", version=f"wsi-harness {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in _COMMAND_MODULES:
        module = importlib.import_module(f"harness.cli.{name}")
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``wsi-harness`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except HarnessError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: output left marked incomplete", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
