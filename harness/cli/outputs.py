"""``wsi-harness render`` (and, later, ``export``): look at a finished output."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import argparse


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add this area's sub-commands to ``sub``."""
    r = sub.add_parser("render", help="write a colour PNG overview of an output's label map")
    r.add_argument("output", help="OUT.zarr written by segment")
    r.add_argument("--png", required=True, help="PNG file to write")
    r.add_argument("--max-side", type=int, default=1024)
    r.set_defaults(func=run_render)


def run_render(args: argparse.Namespace) -> int:
    """Write the label overview PNG."""
    from harness.render import label_overview, save_png

    save_png(label_overview(args.output, args.max_side), args.png)
    print(args.png)
    return 0
