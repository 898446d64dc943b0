"""The synthetic slide's fixed parts: its colour table, its layout and its sample geometry.

Split from :mod:`harness.slides.synthetic` (which renders pixels from them): the lookup
table from class and texture level to RGB, the noise octaves and thresholds derived from
the slide's size, mpp and seed (:func:`layout`), and the helpers that turn output pixels
into level-0 sample positions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from harness.palette import PALETTE
from harness.slides._noise import Octave, field

if TYPE_CHECKING:
    from numpy.typing import NDArray

LEVELS = 32  # texture levels per colour _ramp
FOLD = 4  # class offset of folded tissue in the lookup table
HOLE_FRACTION = 0.12
TILE = 512  # period in pixels of the finest (tileable) texture octave
ABSENT = np.float32(-1.0e4)  # centre offset that puts a missing nucleus out of reach


def _ramp(mean: tuple[int, int, int], spread: tuple[int, int, int]) -> NDArray[np.float64]:
    t = np.linspace(1.0, -1.0, LEVELS)[:, None]
    return np.asarray(mean, dtype=np.float64) + t * np.asarray(spread, dtype=np.float64)


def _build_lut() -> NDArray[np.uint8]:
    """Colour of each ``class * LEVELS + texture level``; 8 classes (4 plain, 4 folded)."""
    bg, stroma, nuclei = PALETTE.values()
    ramps = [
        _ramp(bg, (5, 5, 4)),
        _ramp(stroma, (24, 40, 30)),
        _ramp(nuclei, (30, 28, 28)),
        _ramp((45, 135, 95), (20, 25, 20)),  # green pen ink
        _ramp(bg, (5, 5, 4)),
        _ramp((200, 105, 160), (20, 30, 24)),  # folded stroma: darker, still nearest stroma
        _ramp((62, 30, 110), (20, 20, 20)),
        _ramp((45, 135, 95), (20, 25, 20)),
    ]
    return np.clip(np.rint(np.concatenate(ramps)), 0, 255).astype(np.uint8)


LUT = _build_lut()


@dataclass(frozen=True)
class Layout:
    """Everything derived from the slide parameters: noise octaves and thresholds."""

    tissue: tuple[Octave, ...]
    holes: tuple[Octave, ...]
    texture: tuple[Octave, ...]
    grain: Octave
    density: tuple[Octave, ...]
    cell: int
    edge: tuple[float, float]
    tissue_threshold: float
    hole_threshold: float


def layout(height: int, width: int, mpp: float, seed: int, fraction: float) -> Layout:
    big = min(max(min(height, width) / 3.0, 512.0), 12000.0)
    um = 1.0 / mpp  # level-0 pixels per micron
    tissue = (Octave(big, 1.0, 1), Octave(big / 3.2, 0.45, 2))
    holes = (Octave(90 * um, 1.0, 3), Octave(30 * um, 0.5, 4))
    top = LEVELS - 1e-3
    texture = (Octave(30 * um, 0.45 * top, 5), Octave(8 * um, 0.3 * top, 6))
    wrap = max(4, round(TILE * mpp / 3.0))  # about 3 µm lattice, exactly tileable
    grain = Octave(TILE / wrap, 0.25 * top, 7, wrap=wrap)
    edge = (max(1.0, 0.06 * height), max(1.0, 0.06 * width))
    n = 128
    v, u = axis(0, n, height / n), axis(0, n, width / n)
    t = field(seed, tissue, u, v, 1.0) * edge_fade(v, height, edge[0])[:, None]
    t *= edge_fade(u, width, edge[1])[None, :]
    hs = axis(0, 192, 10 * um)
    h = field(seed, holes, hs, hs, 1.0)
    keep = min(0.98, fraction / (1.0 - HOLE_FRACTION))
    return Layout(
        tissue=tissue,
        holes=holes,
        texture=texture,
        grain=grain,
        density=(Octave(150 * um, 1.0, 8),),
        cell=max(4, round(8 * um)),
        edge=edge,
        tissue_threshold=float(np.quantile(t, 1.0 - keep)),
        hole_threshold=float(np.quantile(h, 1.0 - HOLE_FRACTION)),
    )


def edge_fade(coords: NDArray[np.float64], size: int, margin: float) -> NDArray[np.float32]:
    """Fade from 0 at the slide border to 1 at ``margin`` pixels inside it."""
    d = np.minimum(coords + 0.5, size - 0.5 - coords) / margin
    t = np.clip(d, 0.0, 1.0)
    return (t * t * (3.0 - 2.0 * t)).astype(np.float32)


def axis(start: float, n: int, step: float) -> NDArray[np.float64]:
    """Level-0 sample positions of ``n`` output pixels starting at ``start``."""
    return np.asarray(start + (np.arange(n) + 0.5) * step - 0.5, dtype=np.float64)


def inside(coords: NDArray[np.float64], size: int) -> slice:
    """The run of sample positions that fall inside ``[0, size)`` pixels."""
    lo = int(np.searchsorted(coords, -0.5, side="left"))
    hi = int(np.searchsorted(coords, size - 0.5, side="left"))
    return slice(lo, max(lo, hi))


def window(tile: NDArray[np.float32], y: int, x: int, h: int, w: int) -> NDArray[np.float32]:
    """``h x w`` window at ``(y, x)`` of the periodic texture ``tile`` (one period tiled 2 x 2)."""
    period = tile.shape[0] // 2
    y0, x0 = y % period, x % period
    if h <= period and w <= period:
        return tile[y0 : y0 + h, x0 : x0 + w]
    rows, cols = np.arange(y0, y0 + h) % period, np.arange(x0, x0 + w) % period
    return np.asarray(tile.take(rows, axis=0).take(cols, axis=1), dtype=np.float32)
