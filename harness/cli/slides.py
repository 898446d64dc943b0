"""``wsi-harness synth`` and ``wsi-harness info``: make and inspect slides."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.errors import ConfigError, SlideError

if TYPE_CHECKING:
    import argparse


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add this area's sub-commands to ``sub``."""
    from harness.cli.options import DefaultsFormatter

    synth = sub.add_parser(
        "synth",
        formatter_class=DefaultsFormatter,
        help="write a synthetic H&E slide to a pyramidal TIFF",
        description="Render a procedural H&E slide tile by tile into a pyramidal tiled TIFF.",
    )
    synth.add_argument("out", type=Path, metavar="OUT.tiff", help="TIFF file to write")
    synth.add_argument("--size", type=int, default=16384, help="width in pixels")
    synth.add_argument("--height", type=int, default=None, help="height (default: --size)")
    synth.add_argument("--mpp", type=float, default=0.5, help="microns per pixel")
    synth.add_argument("--seed", type=int, default=0, help="seed of the tissue layout")
    synth.add_argument("--tissue", type=float, default=0.4, help="tissue fraction")
    synth.add_argument("--artefacts", default="0", help="0, 1 or names joined by + (pen+fold+blur)")
    synth.add_argument("--compression", choices=("jpeg", "deflate", "none"), default="jpeg",
                       help="tile compression")  # fmt: skip
    synth.add_argument("--quality", type=int, default=90, help="JPEG quality, 1-100")
    synth.add_argument("--tile", type=int, default=256, help="TIFF tile side, a multiple of 16")
    synth.add_argument("--levels", type=int, default=None, help="pyramid levels (default: auto)")
    synth.add_argument(
        "--classic", action="store_true", help="classic TIFF instead of BigTIFF when it fits"
    )
    synth.add_argument("--overwrite", action="store_true", help="replace an existing OUT.tiff")
    synth.add_argument("--no-progress", action="store_true", help="no progress bar")
    synth.set_defaults(func=_synth)

    info = sub.add_parser(
        "info",
        formatter_class=DefaultsFormatter,
        help="describe a slide (file or synthetic: spec)",
        description="Print dimensions, mpp, pyramid levels and reader of a slide.",
    )
    info.add_argument("slide", metavar="SLIDE", help="a file or a synthetic:WIDTHxHEIGHT spec")
    info.add_argument("--mpp", type=float, default=None,
                      help="override the slide's mpp (default: its metadata)")  # fmt: skip
    info.add_argument("--thumbnail", type=Path, default=None, metavar="OUT.png",
                      help="also write a thumbnail PNG (default: none)")  # fmt: skip
    info.add_argument("--json", action="store_true", help="print JSON instead of text")
    info.set_defaults(func=_info)


def _synth(args: argparse.Namespace) -> int:
    from harness.slides import SyntheticSlide, parse_artefacts, write_tiff

    height = args.size if args.height is None else args.height
    _check_destination(args.out, args.overwrite)
    try:
        artefacts = parse_artefacts(args.artefacts)
    except ValueError as exc:
        raise ConfigError(f"--artefacts: {exc}") from exc
    slide = SyntheticSlide(height, args.size, args.mpp, args.seed, args.tissue, artefacts)
    start = time.perf_counter()
    path = write_tiff(
        slide,
        args.out,
        tile=args.tile,
        compression=args.compression,
        levels=args.levels,
        quality=args.quality,
        progress=not args.no_progress,
        bigtiff=not args.classic,
    )
    seconds = time.perf_counter() - start
    mpx = slide.shape[0] * slide.shape[1] / 1e6
    print(f"wrote {path} ({height} x {args.size} px, {mpx / seconds:.1f} Mpx/s of level 0)")
    return 0


def _check_destination(out: Path, overwrite: bool) -> None:
    """Refuse, in one line, a TIFF that would replace a file or land nowhere."""
    if out.is_dir():
        raise ConfigError(f"{out} is a folder; give a file name such as {out / 'slide.tiff'}")
    if out.exists() and not overwrite:
        raise ConfigError(f"{out} exists; pass --overwrite to replace it")
    parent = out.parent if str(out.parent) else Path()
    if not parent.is_dir():
        raise ConfigError(f"folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise ConfigError(f"folder {parent} is not writable")


def _info(args: argparse.Namespace) -> int:
    from harness.slides import open_slide, thumbnail

    slide = open_slide(args.slide, mpp=args.mpp)
    h, w = slide.shape
    shapes = getattr(slide, "level_shapes", ((h, w),))
    record = {
        "slide": args.slide,
        "reader": type(slide).__name__,
        "width": w,
        "height": h,
        "mpp": slide.mpp,
        "levels": len(slide.downsamples),
        "downsamples": list(slide.downsamples),
        "level_shapes": [list(s) for s in shapes],
    }
    if args.thumbnail is not None:
        record["thumbnail"] = str(_save_thumbnail(thumbnail(slide), args.thumbnail))
    if args.json:
        print(json.dumps(record, indent=2))
    else:
        for key, value in record.items():
            print(f"{key:13s} {value}")
    return 0


def _save_thumbnail(image: Any, path: Path) -> Path:
    from PIL import Image

    try:
        Image.fromarray(image).save(path)
    except (OSError, ValueError) as exc:
        kind = ConfigError if isinstance(exc, ValueError) else SlideError
        raise kind(f"cannot write thumbnail {path}: {exc}") from exc
    return path
