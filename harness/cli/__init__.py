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
from typing import TYPE_CHECKING, NoReturn

from harness import __version__, policy
from harness.errors import HarnessError, use_cli_hints
from harness.interrupt import Interrupted

if TYPE_CHECKING:
    from collections.abc import Sequence

INTERNAL_ERROR = 70
"""Exit status of a bug in the harness (sysexits' EX_SOFTWARE), never of bad input."""

#: Modules that contribute sub-commands, in help order.
_COMMAND_MODULES = ("slides", "segment", "cohort", "status", "outputs", "measure", "floor",
                    "versus")  # fmt: skip


class OneLineParser(argparse.ArgumentParser):
    """Usage errors as one ``error:`` line naming the option (``--help`` has the usage)."""

    def error(self, message: str) -> NoReturn:
        """Print ``error: <prog>: <message>`` and exit 2."""
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, with every area's sub-commands."""
    parser = OneLineParser(
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
    # This process is ours: OpenMP's idle policy must be set before torch loads it,
    # and hints name flags (--resume), not Python arguments (resume=True).
    policy.prepare_environment()
    use_cli_hints()
    try:
        return _main(argv)
    finally:
        use_cli_hints(False)  # main() called from Python (tests) leaves no trace


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error already printed
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    try:
        return int(args.func(args) or 0)
    except Interrupted as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except HarnessError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted before any output was written", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug in the harness: still one line, the traceback on request
        if args.debug:
            traceback.print_exc()
        print(f"error: internal error ({type(exc).__name__}: {exc}); please report it with "
              "the output of --debug", file=sys.stderr)  # fmt: skip
        return INTERNAL_ERROR


if __name__ == "__main__":
    sys.exit(main())
