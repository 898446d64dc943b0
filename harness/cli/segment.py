"""``wsi-harness segment`` and ``wsi-harness compare``."""

from __future__ import annotations

import gc
import json
import os
import sys
from typing import TYPE_CHECKING, Any

from harness.units import format_bytes, parse_bytes

if TYPE_CHECKING:
    import argparse


def add_segment_args(p: argparse.ArgumentParser) -> None:
    """Arguments shared by ``segment`` and the commands that wrap it (``profile``)."""
    p.add_argument("--model", default="passthrough", help="built-in name or TorchScript file")
    p.add_argument("--patch", type=int, default=256, help="input patch side (pixels at --mpp)")
    p.add_argument("--output-patch", type=int, default=None, help="model output side")
    p.add_argument("--stride", type=int, default=128)
    p.add_argument("--mpp", type=float, default=0.5, help="processing resolution (µm/px)")
    p.add_argument("--chunk", type=int, default=256, help="output chunk side")
    p.add_argument("--blend", choices=("mean", "gaussian"), default="mean")
    p.add_argument("--order", choices=("strips", "raster"), default="strips")
    p.add_argument("--budget", default="256MB", help="merge buffer budget (256MB, 1GiB, ...)")
    p.add_argument("--mask", default="none", help="none, auto, or a mask image path")
    p.add_argument("--engine", choices=("streaming", "dense"), default="streaming")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--workers", type=int, default=0, help="DataLoader reader processes")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("--dtype", choices=("float32", "float16"), default="float32")
    p.add_argument(
        "--labels-only", action="store_true", help="write the label map, not the probabilities"
    )
    p.add_argument("--spill-dir", default=None, help="scratch folder for raster-order spills")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true", help="print the result record as JSON")


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add ``segment`` and ``compare``."""
    p = sub.add_parser("segment", help="segment a slide into a zarr probability/label map")
    p.add_argument("slide", help="slide path or virtual spec such as synthetic:8192")
    p.add_argument("--out", required=True, help="output zarr group (OUT.zarr)")
    add_segment_args(p)
    p.set_defaults(func=run_segment)
    c = sub.add_parser("compare", help="compare two outputs; exit 1 beyond tolerance")
    c.add_argument("a")
    c.add_argument("b")
    c.add_argument("--atol", type=float, default=0.0)
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=run_compare)


def run_segment(args: argparse.Namespace) -> int:
    """Build the config from ``args`` and run :func:`harness.segment.segment`."""
    # Before torch loads its OpenMP runtime: idle OpenMP threads then sleep instead of
    # spinning, leaving the cores to the reader, merger and writer between model calls.
    # Measured at 8192² with tiny-cnn on 2 cores: 20 CPU-s instead of 27, wall -7 %.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from harness.plan import PlanConfig
    from harness.segment import segment

    # Nothing imported so far (torch alone is about a million objects) will become
    # garbage: keep it out of every cyclic collection, the one at exit included.
    # Measured: 0.5-0.6 s less per run, most of it interpreter shutdown.
    gc.freeze()
    config = PlanConfig(
        patch=args.patch, stride=args.stride, mpp=args.mpp, output_patch=args.output_patch,
        chunk=args.chunk, blend=args.blend, order=args.order,
    )  # fmt: skip
    result = segment(
        args.slide, args.model, config, args.out, engine=args.engine,
        budget=parse_bytes(args.budget), mask=args.mask, batch_size=args.batch_size,
        workers=args.workers, device=args.device, overwrite=args.overwrite,
        progress=not args.no_progress, dtype=args.dtype, spill_dir=args.spill_dir,
        threads=args.threads, probabilities=not args.labels_only,
    )  # fmt: skip
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        memory = (
            f"dense canvas {format_bytes(result.peak_live_bytes)}"
            if result.engine == "dense"
            else f"peak live {format_bytes(result.peak_live_bytes)} of "
            f"{format_bytes(result.budget_bytes)}, spilled {format_bytes(result.spill_bytes)}"
        )
        print(
            f"{result.output}: {result.patches} patches, {result.chunks_written} chunks in "
            f"{result.wall_s:.1f} s ({result.megapixels_per_s:.1f} Mpx/s); {memory}",
            file=sys.stderr,
        )
    return 0


def run_compare(args: argparse.Namespace) -> int:
    """Print the comparison; exit 1 when outputs differ beyond ``--atol``."""
    from harness.compare import compare_outputs

    cmp = compare_outputs(args.a, args.b)
    if args.json:
        print(json.dumps(cmp.to_dict()))
    else:
        probs = (
            f"max abs difference {cmp.max_abs_diff:.3g}"
            if cmp.probabilities_compared
            else "labels only (an output has no probabilities)"
        )
        print(
            f"{probs} (bitwise equal: {cmp.bitwise_equal}), "
            f"coverage mismatch {cmp.coverage_mismatch_px} px, "
            f"label agreement {100 * cmp.label_agreement:.4f} %"
        )
    return 0 if cmp.within(args.atol) else 1
