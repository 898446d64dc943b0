"""Level choice and resampling shared by the file-backed readers.

Sampling convention (the same as :class:`~harness.slides.synthetic.SyntheticSlide`):
output pixel ``j`` of a read of box ``(x, y, w, h)`` at scale ``s = mpp / slide.mpp``
is centred on level-0 position ``x + (j + 0.5) * s - 0.5``.

A read uses the coarsest stored level whose downsample ``d`` does not exceed
``s`` (so it never upsamples a coarse level when a finer one exists), then:

* ``s / d`` an integer ``r``: **area** averaging of ``r x r`` blocks of that
  level (``r = 1`` is a plain copy), rounded half up;
* otherwise: **nearest** neighbour of each output pixel's centre.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from harness.slides.base import Box, output_size

if TYPE_CHECKING:
    from numpy.typing import NDArray

#: ``read_level(level, x, y, w, h)``: pixels of a stored level, white outside it.
LevelReader = Callable[[int, int, int, int, int], "NDArray[np.uint8]"]

_TOLERANCE = 1e-3  # a level within 0.1 % of the requested scale counts as exact


def best_level(downsamples: tuple[float, ...], scale: float) -> int:
    """Index of the coarsest level with downsample at most ``scale`` (level 0 if none)."""
    best = 0
    for i, d in enumerate(downsamples):
        if d <= scale * (1 + _TOLERANCE) and d > downsamples[best]:
            best = i
    return best


def read_resampled(
    read_level: LevelReader,
    downsamples: tuple[float, ...],
    slide_mpp: float,
    box: Box,
    mpp: float | None,
) -> NDArray[np.uint8]:
    """Read ``box`` at ``mpp`` from the best stored level (see the module notes)."""
    x, y, _, _ = box
    oh, ow = output_size(box, slide_mpp, mpp)
    level, d, scale = _level(downsamples, slide_mpp, mpp)
    r = whole_ratio(scale / d)
    if r is not None:
        region = read_level(level, *_origin(box, d), ow * r, oh * r)
        return region if r == 1 else _area(region, r)
    cols = np.floor((x + (np.arange(ow) + 0.5) * scale) / d).astype(np.int64)
    rows = np.floor((y + (np.arange(oh) + 0.5) * scale) / d).astype(np.int64)
    region = read_level(
        level, int(cols[0]), int(rows[0]), int(cols[-1] - cols[0]) + 1, int(rows[-1] - rows[0]) + 1
    )
    return region[np.ix_(rows - rows[0], cols - cols[0])]


def whole_ratio(ratio: float) -> int | None:
    """``ratio`` as a whole number of level pixels per output pixel, or None if it is not one."""
    r = round(ratio)
    return r if r >= 1 and abs(ratio - r) <= _TOLERANCE * ratio else None


def level_window(
    downsamples: tuple[float, ...], slide_mpp: float, box: Box, mpp: float | None
) -> tuple[int, int, int] | None:
    """``(level, x, y)`` when :func:`read_resampled` would return a level's pixels as stored.

    That is a read at one stored level's own scale: its output is the level's
    ``(h, w)`` window at ``(x, y)``, nothing resampled, so a caller may copy the
    window straight into a buffer of its own. None for any other read.
    """
    level, d, scale = _level(downsamples, slide_mpp, mpp)
    if whole_ratio(scale / d) != 1:
        return None
    return (level, *_origin(box, d))


def _level(
    downsamples: tuple[float, ...], slide_mpp: float, mpp: float | None
) -> tuple[int, float, float]:
    """``(level, its downsample, the read's scale)``: the stored level a read at ``mpp`` uses."""
    scale = 1.0 if mpp is None else mpp / slide_mpp
    level = best_level(downsamples, scale)
    return level, downsamples[level], scale


def _origin(box: Box, d: float) -> tuple[int, int]:
    """The level pixel ``(x, y)`` where ``box`` starts on a level of downsample ``d``."""
    return math.floor(box[0] / d + 1e-9), math.floor(box[1] / d + 1e-9)


def _area(region: NDArray[np.uint8], r: int) -> NDArray[np.uint8]:
    """Mean of ``r x r`` blocks, in integers so the result is exact and reproducible."""
    h, w = region.shape[0] // r, region.shape[1] // r
    sums: NDArray[np.uint32] = region.reshape(h, r, w, r, 3).sum(axis=(1, 3), dtype=np.uint32)
    return ((sums + (r * r) // 2) // (r * r)).astype(np.uint8)


def composite_on_white(rgba: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """RGB of straight-alpha RGBA over white glass: ``rgb * a + 255 * (1 - a)``."""
    if rgba.shape[-1] == 3:
        return rgba
    alpha = rgba[..., 3:4].astype(np.uint16)
    if bool((alpha == 255).all()):
        return rgba[..., :3].copy()
    rgb = rgba[..., :3].astype(np.uint16) * alpha + 255 * (255 - alpha)
    return ((rgb + 127) // 255).astype(np.uint8)
