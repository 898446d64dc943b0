"""``wsi-harness status OUT.zarr``: is an output complete, and if not, how far along."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import argparse


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add ``status``."""
    p = sub.add_parser(
        "status",
        help="show an output's state: complete, chunks final, patches left, identity",
        description="Read a segmentation output without changing it and report whether it is "
        "complete, how many chunks are final, how many patches a --resume would run, who "
        "holds its lock, and what produced it.",
    )
    p.add_argument("output", help="OUT.zarr written by segment")
    p.add_argument(
        "--fast",
        action="store_true",
        help="skip re-planning (no 'patches left'; reads only the progress records)",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=run_status)  # fmt: skip


def run_status(args: argparse.Namespace) -> int:
    """Print the status; exit 0 whether complete or not (a missing output is an error)."""
    from harness.status import output_status

    status = output_status(args.output, with_patches=not args.fast)
    if args.json:
        print(json.dumps(status.to_dict()))
    else:
        print("\n".join(status.lines()))
    return 0
