"""Slide throughput: synthetic reads at several resolutions, TIFF writing and reading.

A read benchmark reads a fixed raster of 256 x 256 output patches (64 of
them, 4.2 Mpx of output), so times compare across resolutions; a coarser
``mpp`` covers more of the slide per patch.
"""

from __future__ import annotations

from pathlib import Path

from benchmarks.common import SLIDE_MPP, OneShot, Scratch, grid, require

PATCH = 256
PATCHES_PER_SIDE = 8  # 64 patches per read benchmark
READ_SLIDE = 32768  # large enough for the coarsest raster to stay inside the slide


def _boxes(mpp: float) -> list[tuple[int, int, int, int]]:
    """Level-0 boxes of an 8 x 8 raster of patches read at ``mpp``, half overlapping."""
    side = round(PATCH * mpp / SLIDE_MPP)
    step = side // 2
    return [
        (1024 + j * step, 1024 + i * step, side, side)
        for i in range(PATCHES_PER_SIDE)
        for j in range(PATCHES_PER_SIDE)
    ]


def _synthetic(size: int, tissue: float = 0.6) -> object:
    cls = require("harness.slides", "SyntheticSlide")
    return cls(size, size, mpp=SLIDE_MPP, seed=0, tissue_fraction=tissue)


class SyntheticRead:
    """``SyntheticSlide.read`` of 64 patches of 256 x 256 at a processing resolution."""

    params = (grid(0.5, 1.0, 2.0),)
    param_names = ("mpp",)
    timeout = 120

    def setup(self, mpp: float) -> None:
        """Describe a large slide (nothing is rendered until read)."""
        self.slide = _synthetic(READ_SLIDE)
        self.boxes = _boxes(mpp)

    def time_read_patches(self, mpp: float) -> None:
        """Render every patch."""
        for box in self.boxes:
            self.slide.read(box, mpp)  # type: ignore[attr-defined]


class TiffWrite(OneShot):
    """``write_tiff`` of a whole synthetic slide, pyramid included, per codec."""

    params = (grid(2048, slow=(8192,)), grid("jpeg", "deflate"))
    param_names = ("size", "compression")
    timeout = 600

    def setup(self, size: int, compression: str) -> None:
        """Describe the slide."""
        self.scratch = Scratch()  # first: asv calls teardown after a skip too
        self.write = require("harness.slides", "write_tiff")
        self.slide = _synthetic(size)

    def teardown(self, size: int, compression: str) -> None:
        """Delete the file."""
        self.scratch.close()

    def time_write_tiff(self, size: int, compression: str) -> None:
        """Render, encode and write every tile of every level."""
        path = self.scratch.path("slide.tif")
        path.unlink(missing_ok=True)
        self.write(self.slide, path, compression=compression, progress=False)

    def track_file_megabytes(self, size: int, compression: str) -> float:
        """Size of the written file."""
        path = self.scratch.path("slide.tif")
        path.unlink(missing_ok=True)
        self.write(self.slide, path, compression=compression, progress=False)
        return path.stat().st_size / 1e6

    track_file_megabytes.unit = "MB"  # type: ignore[attr-defined]


class TiffRead:
    """``TiffSlide.read`` of the same 64 patches from a JPEG pyramidal TIFF (tile cache on)."""

    params = (grid(0.5, 1.0, 2.0),)
    param_names = ("mpp",)
    timeout = 300

    def setup_cache(self) -> str | None:
        """Write one 8192 x 8192 JPEG TIFF for every read benchmark (None: no writer here)."""
        try:
            write = require("harness.slides", "write_tiff")
        except NotImplementedError:
            return None  # asv counts a raising setup_cache as a failure, not a skip
        # asv runs setup_cache and the benchmarks in one temporary directory it removes.
        path = Path("bench-slide.tif").resolve()
        write(_synthetic(8192), path, compression="jpeg", progress=False)
        return str(path)

    setup_cache.timeout = 600  # type: ignore[attr-defined]

    def setup(self, path: str | None, mpp: float) -> None:
        """Open the file (fresh tile cache per benchmark process)."""
        if path is None:
            raise NotImplementedError("no TIFF writer at this commit")
        cls = require("harness.slides", "TiffSlide")
        self.slide = cls(path)
        self.boxes = _boxes(mpp)

    def time_read_patches(self, path: str | None, mpp: float) -> None:
        """Decode (or hit the cache for) every tile the patches touch."""
        for box in self.boxes:
            self.slide.read(box, mpp)  # type: ignore[attr-defined]
