"""``wsi-harness render`` and ``export``: look at a finished output, or hand it to a viewer."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from harness.cli.options import DefaultsFormatter
from harness.errors import ConfigError

if TYPE_CHECKING:
    import argparse

    from harness.output.export import SourceInfo, TileConsumer

_FMT = DefaultsFormatter


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add this area's sub-commands to ``sub``."""
    _register_render(sub)
    _register_export(sub)


def _register_render(sub: argparse._SubParsersAction[Any]) -> None:
    r = sub.add_parser(
        "render", formatter_class=_FMT,
        help="write a PNG of an output: label map, overlay on the slide, or class heatmap",
        description="Write a PNG (--png, required) of an output written by segment: its "
        "label map in the class colours with a legend, the labels blended over the slide "
        "(--overlay) or one class's probability with a colour bar (--heatmap CLASS), "
        "downsampled so its longest side is at most --max-side pixels.",
    )  # fmt: skip
    r.add_argument("output", help="OUT.zarr written by segment")
    r.add_argument("--png", required=True, help="PNG file to write (its folder must exist)")
    r.add_argument("--max-side", type=int, default=1024, help="longest side of the map, pixels")
    view = r.add_mutually_exclusive_group()
    view.add_argument(
        "--overlay", action="store_true",
        help="blend the labels over the slide (re-read from the source the output records)",
    )  # fmt: skip
    view.add_argument(
        "--heatmap", metavar="CLASS", default=None,
        help="draw one class's probability with a colour bar instead of the labels",
    )  # fmt: skip
    r.add_argument("--alpha", type=float, default=0.45, help="label opacity of --overlay")
    r.add_argument("--no-legend", action="store_true", help="leave out the class legend")
    r.set_defaults(func=run_render)


def run_render(args: argparse.Namespace) -> int:
    """Write the requested view as PNG."""
    from harness import render

    render.check_png_path(args.png)
    if args.max_side < 1:
        raise ConfigError(f"--max-side must be >= 1 pixel, got {args.max_side}")
    if args.heatmap is not None:
        print(render.heatmap(args.output, args.heatmap, args.png, args.max_side))
        return 0
    if args.overlay:
        view = render.overlay_view(args.output, args.max_side, args.alpha)
    else:
        view = render.label_view(args.output, args.max_side)
    image = view.image if args.no_legend else render.add_legend(view.image, view.legend)
    print(render.save_png(image, args.png))
    return 0


def _register_export(sub: argparse._SubParsersAction[Any]) -> None:
    e = sub.add_parser(
        "export", formatter_class=_FMT,
        help="write a complete output as OME-Zarr (napari, QuPath) and/or GeoJSON (QuPath), "
        "in one pass over the store",
        description="Export a complete output to OME-Zarr (--ome-zarr, for napari and "
        "QuPath) and/or GeoJSON (--geojson, QuPath objects), reading the store once for "
        "every format asked; at least one of them is required.",
    )  # fmt: skip
    e.add_argument("output", help="OUT.zarr written by segment (must be complete)")
    e.add_argument("--ome-zarr", metavar="A.ome.zarr", default=None, help="OME-Zarr to write")
    e.add_argument(
        "--ome-version", choices=("0.5", "0.4"), default="0.5",
        help="NGFF version: 0.5 (zarr v3, sharded) or 0.4 (zarr v2, for QuPath)",
    )  # fmt: skip
    e.add_argument(
        "--parent-image", choices=("auto", "slide", "blank"), default="auto",
        help="parent image of a labels-only output's label image: the slide re-read from "
        "its recorded source, a blank placeholder, or auto (the slide when it opens)",
    )  # fmt: skip
    e.add_argument("--geojson", metavar="B.geojson[.gz]", default=None, help="GeoJSON to write")
    e.add_argument(
        "--object-type", choices=("annotation", "detection"), default="annotation",
        help="QuPath object type of each GeoJSON feature",
    )  # fmt: skip
    e.add_argument(
        "--min-area", type=float, default=0.0,
        help="drop GeoJSON regions smaller than this, level-0 pixels² (0: keep all)",
    )  # fmt: skip
    e.add_argument(
        "--simplify", type=float, default=0.0,
        help="GeoJSON simplification tolerance, level-0 pixels (0: exact outlines)",
    )  # fmt: skip
    e.add_argument("--overwrite", action="store_true", help="replace existing exports")
    e.add_argument("--no-progress", action="store_true", help="no progress bar")
    e.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    """Build every requested format's consumer, then read the store once for all of them."""
    from harness.output.export import DEFAULT_TILE, export, source_info

    if args.ome_zarr is None and args.geojson is None:
        raise ConfigError("nothing to export: give --ome-zarr and/or --geojson")
    if args.ome_zarr is not None and args.geojson is not None and args.ome_zarr == args.geojson:
        raise ConfigError("--ome-zarr and --geojson name the same path")
    info = source_info(args.output)  # refuses an incomplete output
    consumers = _consumers(args, info)
    export(args.output, consumers, tile=_tile(info, consumers, DEFAULT_TILE),
           progress=not args.no_progress)  # fmt: skip
    for c in consumers:
        print(c.dest)
    return 0


def _tile(info: SourceInfo, consumers: list[TileConsumer], default: int) -> int:
    """Export tile side: whole OME-Zarr write blocks *and* whole source chunks.

    Tiles aligned to the exporter's blocks hand each block over complete, so
    nothing waits in memory for the next tile row.
    """
    blocks = [c.block for c in consumers if c.block]
    if not blocks:
        return default
    return math.lcm(*blocks, *info.chunk)


def _consumers(args: argparse.Namespace, info: SourceInfo) -> list[TileConsumer]:
    consumers: list[TileConsumer] = []
    try:
        if args.ome_zarr is not None:
            from harness.output.ome_zarr import OmeZarrExporter

            consumers.append(
                OmeZarrExporter(
                    info,
                    args.ome_zarr,
                    version=args.ome_version,
                    parent=args.parent_image,
                    overwrite=args.overwrite,
                )
            )
        if args.geojson is not None:
            from harness.output.geojson import GeoJsonExporter  # type: ignore[import-not-found,unused-ignore]

            consumers.append(
                GeoJsonExporter(
                    info,
                    args.geojson,
                    object_type=args.object_type,
                    min_area=args.min_area,
                    simplify=args.simplify,
                    overwrite=args.overwrite,
                )
            )
    except BaseException:
        for c in consumers:
            c.abort()
        raise
    return consumers
