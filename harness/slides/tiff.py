"""Pyramidal tiled TIFF: a streaming writer and a lazy reader.

Layout written by :func:`write_tiff`: one tiled RGB page per pyramid level,
level 0 first, each level half the size of the previous one (rounded up), as
successive top-level pages (OpenSlide ignores levels stored as SubIFDs).
Every page carries XResolution / YResolution in pixels per centimetre with
ResolutionUnit = CENTIMETER, from which tifffile, OpenSlide and TIAToolbox
read the microns per pixel. Level ``k`` holds ``slide.read(box, mpp * 2**k)``
of the matching level-0 boxes, so each level is rendered by the source itself
(for a :class:`~harness.slides.synthetic.SyntheticSlide`: generated, not
downsampled) and the writer never holds more than one tile.

:class:`TiffSlide` reads such files (and other tiled or stripped RGB(A) uint8
TIFFs: pyramids as successive pages or SubIFDs). It decodes each tile with
tifffile's own per-page decoder from bytes it reads with ``os.pread``, which
keeps the whole-file handle out of the hot path and is safe to share across
threads; a byte-bounded LRU cache keeps decoded tiles. This is faster than
tifffile's zarr store, which adds an async zarr layer per chunk and has no
cache of decoded tiles. RGBA pages are composited on white and returned as RGB.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import tifffile
from tqdm import tqdm

from harness.errors import ConfigError, SlideError
from harness.slides._cache import TileCache
from harness.slides._resample import composite_on_white, level_window, read_resampled
from harness.slides.base import PAD_VALUE, Box, output_size, put

if TYPE_CHECKING:
    from collections.abc import Iterator

    from numpy.typing import NDArray

    from harness.slides.base import Slide

COMPRESSIONS = ("jpeg", "deflate", "none")
_MIN_LEVEL_SIDE = 1024  # auto pyramids stop once a level's longer side is at most this
_UNIT_MICRONS = {"CENTIMETER": 1e4, "INCH": 25400.0, "MILLIMETER": 1e3, "MICROMETER": 1.0}


def auto_levels(shape: tuple[int, int]) -> int:
    """Levels so that the smallest has its longer side at most 1024 pixels."""
    side, levels = max(shape), 1
    while side > _MIN_LEVEL_SIDE:
        side, levels = -(-side // 2), levels + 1
    return levels


def write_tiff(
    slide: Slide,
    path: str | os.PathLike[str],
    tile: int = 256,
    compression: str = "jpeg",
    levels: int | None = None,
    quality: int = 90,
    progress: bool = True,
    bigtiff: bool = True,
) -> Path:
    """Write ``slide`` to a pyramidal tiled TIFF, tile by tile, in O(tile) memory.

    Parameters
    ----------
    slide
        Any :class:`~harness.slides.base.Slide`; level ``k`` is read at ``mpp * 2**k``.
    path
        Output file; written to ``<path>.partial`` first and renamed when complete.
    tile
        Tile side in pixels, a multiple of 16.
    compression
        ``"jpeg"`` (lossy, RGB, ``quality``), ``"deflate"`` or ``"none"`` (lossless).
    levels
        Pyramid levels including level 0; default :func:`auto_levels`.
    quality
        JPEG quality, 1-100.
    progress
        Show a tqdm progress bar over all tiles.
    bigtiff
        Write BigTIFF (64-bit offsets). On by default: tifffile and OpenSlide read
        both kinds, but TIAToolbox 2.1.3 opens a classic TIFF under 2 GiB as one
        flat image without mpp. ``False`` writes classic TIFF when it fits.

    Returns
    -------
    Path
        ``path``.
    """
    _check_write_args(tile, compression, levels, quality)
    out = Path(path)
    n_levels = levels or auto_levels(slide.shape)
    dims = [_level_dims(slide.shape, 2**k) for k in range(n_levels)]
    total = sum(-(-h // tile) * -(-w // tile) for h, w in dims)
    partial = out.with_name(out.name + ".partial")
    raw = slide.shape[0] * slide.shape[1] * 3 * 4 // 3
    try:
        with (
            tqdm(total=total, unit="tile", disable=not progress, desc=out.name) as bar,
            tifffile.TiffWriter(partial, bigtiff=bigtiff or raw > 2**31) as writer,
        ):
            for k, (h, w) in enumerate(dims):
                tiles = _level_tiles(slide, 2**k, (h, w), tile, bar)
                writer.write(
                    tiles, **_page_args(slide.mpp * 2**k, (h, w), tile, k, compression, quality)
                )
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    partial.replace(out)
    return out


def _check_write_args(tile: int, compression: str, levels: int | None, quality: int) -> None:
    if tile < 16 or tile % 16:
        raise ConfigError(f"tile must be a positive multiple of 16 pixels, got {tile}")
    if compression not in COMPRESSIONS:
        raise ConfigError(
            f"compression must be one of {', '.join(COMPRESSIONS)}, got {compression!r}"
        )
    if levels is not None and not 1 <= levels <= 32:
        raise ConfigError(f"levels must be in [1, 32], got {levels}")
    if not 1 <= quality <= 100:
        raise ConfigError(f"JPEG quality must be in [1, 100], got {quality}")


def _level_dims(shape: tuple[int, int], d: int) -> tuple[int, int]:
    return -(-shape[0] // d), -(-shape[1] // d)


def _level_tiles(
    slide: Slide, d: int, dims: tuple[int, int], tile: int, bar: tqdm[Any]
) -> Iterator[NDArray[np.uint8]]:
    """Tiles of level ``d`` in row-major order, each read from the source on demand."""
    mpp = None if d == 1 else slide.mpp * d
    span = tile * d
    for ty in range(-(-dims[0] // tile)):
        for tx in range(-(-dims[1] // tile)):
            tile_pixels = slide.read((tx * span, ty * span, span, span), mpp)
            # counted before the yield: tifffile stops after a level's last tile
            # without resuming the generator, so an update after it never ran
            bar.update(1)
            yield tile_pixels


def _page_args(
    mpp: float, dims: tuple[int, int], tile: int, level: int, compression: str, quality: int
) -> dict[str, Any]:
    codecs: dict[str, dict[str, Any]] = {
        "jpeg": {"compression": "jpeg", "compressionargs": {"level": quality}},
        "deflate": {"compression": "zlib", "compressionargs": {"level": 6}, "predictor": 2},
        "none": {},
    }
    codec = codecs[compression]
    return {
        "shape": (*dims, 3),
        "dtype": np.uint8,
        "tile": (tile, tile),
        "photometric": "rgb",
        "resolution": (1e4 / mpp, 1e4 / mpp),
        "resolutionunit": "CENTIMETER",
        "subfiletype": 1 if level else 0,  # reduced-resolution image
        "metadata": None,
        "maxworkers": 1,  # the source renders in this thread; encoding keeps pace
        **codec,
    }


@dataclass(frozen=True)
class _Level:
    """Geometry of one stored level."""

    shape: tuple[int, int]
    segment: tuple[int, int]  # tile (or strip) height and width
    grid: tuple[int, int]  # segments down and across
    offsets: tuple[int, ...]
    bytecounts: tuple[int, ...]


class TiffSlide:
    """The :class:`~harness.slides.base.Slide` protocol over a (pyramidal) TIFF file.

    Parameters
    ----------
    path
        The TIFF file.
    mpp
        Microns per pixel, overriding (or supplying missing) resolution metadata.
    cache_bytes
        Capacity of the decoded-tile LRU cache; :meth:`fit_cache` shrinks it to
        what a run revisits (two rows of 512 px tiles across a 28k px strip, the
        widest at the default budget from 32k slides up, need 84 MiB).

    Notes
    -----
    Reads resample as documented in :mod:`harness.slides._resample` (area for
    integer ratios to a stored level, nearest otherwise). The object pickles
    as its arguments and reopens the file in a new process, or after a fork.
    """

    def __init__(
        self, path: str | os.PathLike[str], mpp: float | None = None, cache_bytes: int = 128 << 20
    ) -> None:
        self._path = Path(path)
        self._mpp_arg = mpp
        self._cache_bytes = int(cache_bytes)
        self.cache = TileCache(self._cache_bytes)
        self._open()

    def _open(self) -> None:
        tif, pages = _open_tiff(self._path)
        try:
            self._levels = tuple(_level_of(p) for p in pages)
            _check_complete(self._path, self._levels)
            self._mpp = _page_mpp(self._path, pages[0], self._mpp_arg)
        except BaseException:
            tif.close()
            raise
        self._tif, self._pages = tif, pages
        self._rgba = pages[0].samplesperpixel == 4
        self._pid = os.getpid()
        self._fd = os.open(self._path, os.O_RDONLY)

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self._path, "mpp": self._mpp_arg, "cache_bytes": self.cache.max_bytes}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"], state["mpp"], state["cache_bytes"])  # type: ignore[misc]

    def __del__(self) -> None:
        self.close()

    def close(self) -> None:
        """Release the file handles (a later read reopens them)."""
        fd = getattr(self, "_fd", -1)
        if fd >= 0:
            # After a fork these are this process's own copies: closing them is safe.
            os.close(fd)
            self._tif.close()
        self._fd = -1

    def __repr__(self) -> str:
        return f"TiffSlide({str(self._path)!r}, mpp={self._mpp}, levels={len(self._levels)})"

    @property
    def path(self) -> Path:
        """The file."""
        return self._path

    @property
    def shape(self) -> tuple[int, int]:
        """Level-0 ``(height, width)`` in pixels."""
        return self._levels[0].shape

    @property
    def mpp(self) -> float:
        """Microns per pixel at level 0."""
        return self._mpp

    @property
    def downsamples(self) -> tuple[float, ...]:
        """Downsample of each stored level (mean of the two axes, as OpenSlide reports it)."""
        h0, w0 = self.shape
        return tuple((h0 / lv.shape[0] + w0 / lv.shape[1]) / 2 for lv in self._levels)

    @property
    def level_shapes(self) -> tuple[tuple[int, int], ...]:
        """``(height, width)`` of each stored level."""
        return tuple(lv.shape for lv in self._levels)

    def cache_need(self, band_hw: tuple[int, int]) -> int:
        """Cache bytes for reads sweeping ``band_hw`` (level-0 px) to decode each tile once.

        Rounds the band out to whole level-0 tiles plus one tile each way (a
        bound for every lower level too), never above the ``cache_bytes`` the
        slide was opened with.
        """
        th, tw = self._levels[0].segment
        rows = (-(-band_hw[0] // th) + 1) * th
        cols = (-(-band_hw[1] // tw) + 1) * tw
        return min(rows * cols * 3, self._cache_bytes)

    def resize_cache(self, max_bytes: int) -> None:
        """Set the tile cache capacity (at most the ``cache_bytes`` opened with)."""
        self.cache.resize(min(int(max_bytes), self._cache_bytes))

    def fit_cache(self, band_hw: tuple[int, int]) -> int:
        """Resize the cache to :meth:`cache_need` of ``band_hw``; return the new capacity."""
        need = self.cache_need(band_hw)
        self.resize_cache(need)
        return need

    def read(self, box: Box, mpp: float | None = None) -> NDArray[np.uint8]:
        """Read ``box`` at ``mpp`` from the best level; white outside the slide."""
        self._own_handles()
        return read_resampled(self._read_level, self.downsamples, self._mpp, box, mpp)

    def read_into(self, box: Box, mpp: float | None, out: NDArray[np.uint8]) -> None:
        """:meth:`read` into ``out``: a level's tiles copied there when nothing resamples."""
        window = level_window(self.downsamples, self._mpp, box, mpp)
        if window is None or out.shape != (*output_size(box, self._mpp, mpp), 3):
            put(out, self.read(box, mpp), box, mpp)
            return
        self._own_handles()
        level, x, y = window
        self._read_level(level, x, y, out.shape[1], out.shape[0], out)

    def _own_handles(self) -> None:
        """Reopen the file in a forked (or closed) slide: never share another process's fd."""
        if self._pid != os.getpid() or self._fd < 0:
            self.close()
            self._open()

    def _read_level(
        self, level: int, x: int, y: int, w: int, h: int, out: NDArray[np.uint8] | None = None
    ) -> NDArray[np.uint8]:
        lv = self._levels[level]
        sh, sw = lv.segment
        y0, y1 = max(y, 0), min(y + h, lv.shape[0])
        x0, x1 = max(x, 0), min(x + w, lv.shape[1])
        if out is None:
            out = np.full((h, w, 3), PAD_VALUE, dtype=np.uint8)
        elif (y0, y1, x0, x1) != (y, y + h, x, x + w):  # part of it is off the level: glass
            out[...] = PAD_VALUE
        for ty in range(y0 // sh, -(-y1 // sh)):
            for tx in range(x0 // sw, -(-x1 // sw)):
                seg = self.cache.get((level, ty, tx), partial(self._decode, level, ty, tx))
                top, left = ty * sh, tx * sw
                ys, ye = max(y0, top), min(y1, top + seg.shape[0])
                xs, xe = max(x0, left), min(x1, left + seg.shape[1])
                out[ys - y : ye - y, xs - x : xe - x] = seg[
                    ys - top : ye - top, xs - left : xe - left
                ]
        return out

    def _decode(self, level: int, ty: int, tx: int) -> NDArray[np.uint8]:
        lv, page = self._levels[level], self._pages[level]
        index = ty * lv.grid[1] + tx
        count = lv.bytecounts[index]
        if count == 0:  # an empty segment: nothing was stored there
            return np.full((*lv.segment, 3), PAD_VALUE, dtype=np.uint8)
        data = os.pread(self._fd, count, lv.offsets[index])
        try:
            seg, _, _ = page.decode(data, index, jpegtables=page.jpegtables)
        except Exception as exc:  # codec errors come as many types; all mean a bad tile
            raise SlideError(
                f"{self._path}: cannot decode tile {index} of level {level}: {exc}"
            ) from exc
        if seg is None:
            return np.full((*lv.segment, 3), PAD_VALUE, dtype=np.uint8)
        seg = np.asarray(seg).reshape(seg.shape[-3:])
        return composite_on_white(seg) if self._rgba else seg


def _open_tiff(path: Path) -> tuple[tifffile.TiffFile, list[tifffile.TiffPage]]:
    if not path.is_file():
        raise SlideError(f"slide file not found: {path}")
    try:
        tif = tifffile.TiffFile(path)
    except tifffile.TiffFileError as exc:
        raise SlideError(f"{path} is not a readable TIFF file ({exc})") from exc
    except (OSError, ValueError, EOFError) as exc:
        raise SlideError(f"{path}: cannot parse TIFF structure ({exc})") from exc
    try:
        pages = _pyramid_pages(tif)
        _check_pixels(path, pages[0])
    except BaseException:
        tif.close()
        raise
    return tif, pages


def _pyramid_pages(tif: tifffile.TiffFile) -> list[tifffile.TiffPage]:
    """Level pages: tifffile's series levels (SubIFDs, SVS), or successive smaller tiled pages."""
    series = tif.series[0] if tif.series else None
    if series is not None and len(series.levels) > 1:
        return [lv.keyframe for lv in series.levels]
    first = tif.pages.first
    pages = [first]
    for page in tif.pages[1:]:
        if not isinstance(page, tifffile.TiffPage) or not page.is_tiled:
            continue
        if page.imagewidth < pages[-1].imagewidth and page.samplesperpixel == first.samplesperpixel:
            pages.append(page)
    return pages


def _check_pixels(path: Path, page: tifffile.TiffPage) -> None:
    photometric = getattr(page.photometric, "name", str(page.photometric))
    ok = (
        page.dtype == np.uint8
        and page.samplesperpixel in (3, 4)
        and photometric in ("RGB", "YCBCR")
        and page.planarconfig == 1
    )
    if not ok:
        raise SlideError(
            f"{path}: expected RGB or RGBA uint8 pixels (interleaved), got {page.samplesperpixel} "
            f"sample(s) of {page.dtype}, photometric {photometric}"
        )


def _level_of(page: tifffile.TiffPage) -> _Level:
    h, w = int(page.imagelength), int(page.imagewidth)
    if page.is_tiled:
        seg = (int(page.tilelength), int(page.tilewidth))
    else:
        seg = (min(int(page.rowsperstrip), h), w)
    return _Level(
        shape=(h, w),
        segment=seg,
        grid=(-(-h // seg[0]), -(-w // seg[1])),
        offsets=tuple(int(o) for o in page.dataoffsets),
        bytecounts=tuple(int(c) for c in page.databytecounts),
    )


def _check_complete(path: Path, levels: tuple[_Level, ...]) -> None:
    size = path.stat().st_size
    for i, lv in enumerate(levels):
        if len(lv.offsets) < lv.grid[0] * lv.grid[1]:
            raise SlideError(f"{path}: level {i} lists fewer tiles than its size needs")
        end = max(o + c for o, c in zip(lv.offsets, lv.bytecounts, strict=True))
        if end > size:
            raise SlideError(
                f"{path} is truncated: level {i} needs {end} bytes, the file has {size}"
            )


def _page_mpp(path: Path, page: tifffile.TiffPage, override: float | None) -> float:
    if override is not None:
        if not override > 0:
            raise ConfigError(f"mpp must be positive, got {override}")
        return float(override)
    unit = getattr(page.resolutionunit, "name", "NONE")
    xres = page.resolution[0] if page.resolution else 0.0
    if unit in _UNIT_MICRONS and xres > 0:
        return _UNIT_MICRONS[unit] / float(xres)
    match = re.search(r"MPP\s*=\s*([0-9.]+)", str(page.description))  # Aperio SVS
    if match and float(match.group(1)) > 0:
        return float(match.group(1))
    raise SlideError(
        f"{path} has no resolution metadata (XResolution with a physical ResolutionUnit); "
        "pass mpp= to say how many microns a pixel is"
    )
