"""``wsi-harness segment`` and ``wsi-harness compare``."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

from harness.units import format_bytes

if TYPE_CHECKING:
    import argparse


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add ``segment`` and ``compare``."""
    from harness.cli.options import add_cluster_arguments, add_run_arguments

    p = sub.add_parser(
        "segment",
        help="segment a slide into a zarr probability/label map",
        description="Segment a slide (any OpenSlide format, a pyramidal TIFF or a synthetic: "
        "spec) into OUT.zarr in bounded memory. The default model, hne-colour, segments H&E "
        "into background / stroma / nuclei; pass --model for another.",
    )
    p.add_argument("slide", help="slide path or virtual spec such as synthetic:8192")
    p.add_argument("--out", required=True, help="output zarr group (OUT.zarr)")
    add_run_arguments(p)
    add_cluster_arguments(p)
    p.add_argument(
        "--export",
        action="append",
        choices=EXPORTS,
        default=None,
        help="also export the finished output beside it: ome-zarr (OUT.ome.zarr) "
        "or geojson (OUT.geojson.gz); repeatable (default: none)",
    )
    p.add_argument("--json", action="store_true", help="print the result record as JSON")
    p.set_defaults(func=run_segment)  # fmt: skip
    c = sub.add_parser(
        "compare", help="compare two outputs; exit 1 beyond tolerance",
        description="Compare two complete outputs tile by tile: the largest probability "
        "difference, bitwise equality, coverage and label agreement. Where an output holds "
        "labels only, only labels and coverage are compared (and the report says so). "
        "Exit 0 within --atol, 1 beyond it, 2 on bad input.",
    )  # fmt: skip
    c.add_argument("a", metavar="A.zarr", help="an output")
    c.add_argument("b", metavar="B.zarr", help="the output to compare it with")
    c.add_argument("--atol", type=_tolerance, default=0.0,
                   help="largest absolute probability difference that still counts as equal "
                        "(a finite number >= 0; default 0: bitwise)")  # fmt: skip
    c.add_argument("--json", action="store_true", help="print the comparison as JSON")
    c.set_defaults(func=run_compare)


def _tolerance(text: str) -> float:
    """``--atol``: a finite number >= 0 (NaN would make every comparison pass)."""
    import argparse
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, not {text}")
    return value


def run_segment(args: argparse.Namespace) -> int:
    """Build the :class:`~harness.config.RunConfig` from ``args`` and run :func:`segment`."""
    from harness import policy
    from harness.cli.options import cluster_from, run_config
    from harness.segment import segment

    run = run_config(args)
    policy.apply(run.threads)
    with cluster_from(args, run) as client:
        result = segment(args.slide, out=args.out, run=run, client=client)
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        print(_describe(result), file=sys.stderr)
    if args.export:
        _export(args.out, args.export, overwrite=run.overwrite, progress=run.progress)
    return 0


EXPORTS = ("ome-zarr", "geojson")


def export_paths(out: str, formats: list[str]) -> dict[str, str]:
    """Where ``segment --export`` writes each format: beside ``OUT.zarr``."""
    stem = out[: -len(".zarr")] if out.endswith(".zarr") else out
    names = {"ome-zarr": f"{stem}.ome.zarr", "geojson": f"{stem}.geojson.gz"}
    return {f: names[f] for f in dict.fromkeys(formats)}


def _export(out: str, formats: list[str], overwrite: bool, progress: bool) -> None:
    """Run ``wsi-harness export`` on the finished output: one pass for every format."""
    from harness.cli import build_parser

    argv = ["export", out]
    for fmt, dest in export_paths(out, formats).items():
        argv += [f"--{fmt}", dest]
    argv += (["--overwrite"] if overwrite else []) + ([] if progress else ["--no-progress"])
    ns = build_parser().parse_args(argv)
    ns.func(ns)


def _describe(result: Any) -> str:
    if result.already_complete:
        return f"{result.output}: already complete, nothing to do"
    memory = (
        f"dense canvas {format_bytes(result.peak_live_bytes)}"
        if result.engine == "dense"
        else f"merge peak {format_bytes(result.peak_live_bytes)} of "
        f"{format_bytes(result.budget.get('merge', result.budget_bytes))}, "
        f"spilled {format_bytes(result.spill_bytes)}"
    )
    resumed = f", resumed: {result.patches_done} patches already done" if result.resumed else ""
    notes = "; ".join((*result.budget.get("notes", ()), *_heap_notes(result.heap)))
    return (
        f"{result.output}: {result.patches} patches, {result.chunks_written} chunks in "
        f"{result.wall_s:.1f} s ({result.megapixels_per_s:.1f} Mpx/s){resumed}; {memory}"
        + (f"; {notes}" if notes else "")
    )


def _heap_notes(heap: dict[str, int]) -> list[str]:
    """A warning where live memory, which no trim returns, rose past the budget's heap limit.

    How often the trimmer trimmed to hold the budget is in ``--json`` (``heap``) only.
    """
    over = heap.get("live_over_limit_bytes", 0)
    return [f"live memory rose {format_bytes(over)} past the budget's heap limit: raise --budget"
            ] if over else []  # fmt: skip


def run_compare(args: argparse.Namespace) -> int:
    """Print the comparison; exit 1 when outputs differ beyond ``--atol``."""
    from harness.compare import compare_outputs

    cmp = compare_outputs(args.a, args.b)
    print(json.dumps(cmp.to_dict()) if args.json else cmp.describe())
    return 0 if cmp.within(args.atol) else 1
