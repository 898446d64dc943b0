"""``wsi-harness floor``: each part of a run measured alone, beside the run end to end."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import argparse


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add ``floor``."""
    from harness.cli.options import add_run_arguments

    p = sub.add_parser(
        "floor",
        help="time read-once, preprocess, forward, merge, finalise and write alone, "
        "against the end-to-end run",
        description="Measure every part of a segmentation alone on this machine (read each "
        "slide pixel once, preprocess, model forward, merge adds, finalise, write), then run "
        "the segmentation itself, and print wall and CPU seconds of each with the ratio of "
        "end to end over their sum (harness.measure.floor).",
    )
    p.add_argument("slide", help="slide path or virtual spec such as synthetic:8192")
    add_run_arguments(p, skip=("overwrite", "resume", "progress"))
    p.add_argument("--scratch", type=Path, default=None,
                   help="folder for the outputs (default: a temporary one, removed)")  # fmt: skip
    p.add_argument("--rounds", type=_rounds, default=1,
                   help="measure the parts and the run N times, interleaved, and report "
                   "medians and each round's ratio (default 1; 3 on a shared machine)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run_floor)


def run_floor(args: argparse.Namespace) -> int:
    """Measure and print the floor report."""
    from harness import policy
    from harness.cli.options import run_config
    from harness.measure.floor import measure_floor

    run = run_config(args)
    policy.apply(run.threads)
    if args.scratch is not None:
        args.scratch.mkdir(parents=True, exist_ok=True)
        report = measure_floor(args.slide, run, args.scratch, args.rounds)
    else:
        with tempfile.TemporaryDirectory(prefix="wsi-floor-") as tmp:
            report = measure_floor(args.slide, run, Path(tmp), args.rounds)
    print(json.dumps(report.to_dict()) if args.json else report.table())
    return 0


def _rounds(text: str) -> int:
    """``--rounds``: a whole number of at least 1."""
    import argparse

    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"--rounds needs a whole number >= 1, got {text!r}")
    return n
