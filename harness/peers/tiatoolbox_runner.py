"""Segment one slide with TIAToolbox's ``SemanticSegmentor``; run with the peer python.

Usage (from the repository root)::

    peer/tiatoolbox/bin/python harness/peers/tiatoolbox_runner.py SLIDE.tiff \\
        --out-dir DIR --model tiny-cnn --patch 256 --stride 128 --mpp 0.5

Runs ``SemanticSegmentor.run(patch_mode=False, output_type="zarr")`` with our
built-in model wrapped by :mod:`harness.peers.tiatoolbox_models`, on the CPU,
with TIAToolbox's defaults for everything not named here (batch 8, no loader
workers, ``memory_threshold`` 80 %). Prints one JSON line (and writes
``DIR/tiatoolbox.json``): the output zarr path, its arrays, and the seconds
spent importing, building and running.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path

# Run as a script by the peer python: make the repository importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("slide", type=Path)
    p.add_argument("--out-dir", type=Path, required=True)
    p.add_argument("--model", default="tiny-cnn")
    p.add_argument("--patch", type=int, default=256)
    p.add_argument("--output-patch", type=int, default=None)
    p.add_argument("--stride", type=int, default=128)
    p.add_argument("--mpp", type=float, default=0.5)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--probabilities", action="store_true", help="also keep probabilities")
    p.add_argument("--auto-mask", action="store_true", help="TIAToolbox's tissue mask")
    p.add_argument("--memory-threshold", type=int, default=None, help="percent; default 80")
    return p.parse_args(argv)


def _ioconfig(args: argparse.Namespace) -> object:
    from tiatoolbox.models.engine.io_config import IOSegmentorConfig

    out = args.output_patch or args.patch
    res = [{"units": "mpp", "resolution": args.mpp}]
    return IOSegmentorConfig(
        input_resolutions=res,
        output_resolutions=res,
        patch_input_shape=(args.patch, args.patch),
        patch_output_shape=(out, out),
        stride_shape=(args.stride, args.stride),
    )


def _describe(path: Path) -> dict[str, object]:
    import zarr

    group = zarr.open_group(str(path), mode="r")
    return {
        name: {"shape": list(arr.shape), "dtype": str(arr.dtype)} for name, arr in group.arrays()
    }


def _check_readable(slide: Path) -> None:
    """Fail early where TIAToolbox 2.1.3 would silently read the slide as a plain image.

    Its ``TIFFWSIReader`` accepts only SVS, OME, BigTIFF or single-page tiled
    TIFFs; any other ``.tif(f)`` becomes a ``VirtualWSIReader`` (whole image
    decoded into RAM, no mpp), before OpenSlide is ever tried.
    """
    import tifffile

    with tifffile.TiffFile(slide) as tif:
        ok = tif.is_bigtiff or tif.is_svs or tif.is_ome or len(tif.pages) == 1
    if not ok:
        sys.exit(
            f"error: TIAToolbox 2.1.3 reads {slide} (classic multi-page TIFF) as a plain "
            "image without mpp; write the slide as BigTIFF"
        )


def main(argv: list[str] | None = None) -> int:
    """Segment ``args.slide`` and report where the output went and how long it took."""
    args = _parse(argv)
    _check_readable(args.slide)
    t0 = time.perf_counter()
    import tiatoolbox
    import torch
    from tiatoolbox.models.engine.semantic_segmentor import SemanticSegmentor

    # Imported by name: the wrapper module is outside mypy's scope (pyproject).
    wrappers = importlib.import_module("harness.peers.tiatoolbox_models")

    t1 = time.perf_counter()
    out = args.output_patch or args.patch
    model = wrappers.build_tiatoolbox_model(args.model, (out, out) if out != args.patch else None)
    engine = SemanticSegmentor(
        model=model, batch_size=args.batch_size, num_workers=args.num_workers, verbose=False
    )
    kwargs: dict[str, object] = {"return_probabilities": args.probabilities}
    if args.memory_threshold is not None:
        kwargs["memory_threshold"] = args.memory_threshold
    t2 = time.perf_counter()
    result = engine.run(
        images=[args.slide],
        patch_mode=False,
        save_dir=args.out_dir,
        overwrite=True,
        output_type="zarr",
        ioconfig=_ioconfig(args),
        device="cpu",
        auto_get_mask=args.auto_mask,
        **kwargs,
    )
    t3 = time.perf_counter()
    output = Path(next(iter(result.values())) if isinstance(result, dict) else result)
    report = {
        "engine": "tiatoolbox",
        "tiatoolbox_version": tiatoolbox.__version__,
        "torch_version": torch.__version__,
        "output": str(output),
        "arrays": _describe(output),
        "import_s": t1 - t0,
        "setup_s": t2 - t1,
        "run_s": t3 - t2,
    }
    (args.out_dir / "tiatoolbox.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
