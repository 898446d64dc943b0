"""Placement and drawing of the synthetic slide's artefacts (pen, fold, blur).

Each artefact is a small frozen record placed once from the seed; drawing is a
pure function of sample positions, so artefacts keep the slide's guarantee
that overlapping reads agree bitwise.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from numpy.typing import NDArray

#: ``render(x, y, w, h, step)``: unblurred RGB of ``h x w`` samples from ``(x, y)``.
Render = Callable[[float, float, int, int, float], "NDArray[np.uint8]"]


@dataclass(frozen=True)
class Pen:
    """A wavy ink stroke ``y = y0 + amp sin(2 pi (x - x0) / period + phase)``, ``x0 <= x <= x1``."""

    x0: float
    x1: float
    y0: float
    amp: float
    period: float
    phase: float
    half_width: float


@dataclass(frozen=True)
class Fold:
    """A straight band of folded tissue through ``(cx, cy)`` at angle ``theta``."""

    cx: float
    cy: float
    theta: float
    half_width: float


@dataclass(frozen=True)
class Blur:
    """An out-of-focus rectangle ``[x0, x1) x [y0, y1)``; box-blur radius in level-0 pixels."""

    x0: float
    y0: float
    x1: float
    y1: float
    radius: float


@dataclass(frozen=True)
class Placement:
    """The enabled artefacts (``None`` where disabled)."""

    pen: Pen | None = None
    fold: Fold | None = None
    blur: Blur | None = None


def place(
    shape: tuple[int, int], seed: int, names: tuple[str, ...], coarse: NDArray[np.float32]
) -> Placement:
    """Place the artefacts in ``names``; fold and blur go to tissue-rich spots of ``coarse``."""
    h, w = shape
    side = min(h, w)
    rng = np.random.default_rng([seed, 0xA27E])
    peaks = _peaks(coarse, shape)
    pen = Pen(
        x0=0.08 * w,
        x1=0.55 * w,
        y0=0.1 * h,
        amp=0.04 * h,
        period=0.25 * w,
        phase=float(rng.uniform(0, 2 * math.pi)),
        half_width=max(2.0, 0.004 * side),
    )
    fold = Fold(peaks[1][1], peaks[1][0], float(rng.uniform(0, math.pi)), max(3.0, 0.015 * side))
    half = max(16.0, 0.06 * side)
    cy = min(max(peaks[0][0], half + 12), h - half - 12)
    cx = min(max(peaks[0][1], half + 12), w - half - 12)
    blur = Blur(cx - half, cy - half, cx + half, cy + half, radius=3.0)
    return Placement(
        pen=pen if "pen" in names else None,
        fold=fold if "fold" in names else None,
        blur=blur if "blur" in names else None,
    )


def _peaks(coarse: NDArray[np.float32], shape: tuple[int, int]) -> list[tuple[float, float]]:
    """Level-0 ``(y, x)`` of the highest grid value and of the highest one far from it."""
    n = coarse.shape[0]
    first = np.unravel_index(int(np.argmax(coarse)), coarse.shape)
    far = coarse.copy()
    yy, xx = np.mgrid[0:n, 0:n]
    far[(yy - first[0]) ** 2 + (xx - first[1]) ** 2 < (n // 5) ** 2] = -1.0
    second = np.unravel_index(int(np.argmax(far)), far.shape)
    scale = (shape[0] / n, shape[1] / n)
    return [((p[0] + 0.5) * scale[0], (p[1] + 0.5) * scale[1]) for p in (first, second)]


def add_pen(
    cls: NDArray[np.uint8],
    pen: Pen,
    u: NDArray[np.float64],
    v: NDArray[np.float64],
    ink: np.uint8,
) -> None:
    """Overwrite ``cls`` with ``ink`` under the stroke (samples at columns ``u``, rows ``v``)."""
    reach = pen.amp + pen.half_width
    if u[-1] < pen.x0 or u[0] > pen.x1 or v[-1] < pen.y0 - reach or v[0] > pen.y0 + reach:
        return
    curve = pen.y0 + pen.amp * np.sin(2 * math.pi * (u - pen.x0) / pen.period + pen.phase)
    on = np.abs(v[:, None] - curve[None, :]) < pen.half_width
    on &= ((u >= pen.x0) & (u <= pen.x1))[None, :]
    cls[on] = ink


def add_fold(
    cls: NDArray[np.uint8],
    tissue: NDArray[np.bool_],
    fold: Fold,
    u: NDArray[np.float64],
    v: NDArray[np.float64],
    offset: np.uint8,
) -> None:
    """Add ``offset`` to the class of tissue samples inside the fold band."""
    a = (u - fold.cx) * math.sin(fold.theta)
    b = (fold.cy - v) * math.cos(fold.theta)
    if a.min() + b.min() >= fold.half_width or a.max() + b.max() <= -fold.half_width:
        return
    on = np.abs(b[:, None] + a[None, :]) < fold.half_width
    on &= tissue
    cls[on] += offset


def apply_blur(
    out: NDArray[np.uint8], blur: Blur, origin: tuple[int, int], step: float, render: Render
) -> None:
    """Replace the part of ``out`` inside the blur rectangle by its blurred rendering.

    The blur is a box filter of radius ``r`` applied twice per axis, in exact
    integer arithmetic, over a rendering that extends ``2 r`` samples beyond
    the rectangle: the result at a sample depends only on its neighbours, so
    overlapping reads still agree bitwise.
    """
    r = round(blur.radius / step)
    rows = _span(origin[1], step, blur.y0, blur.y1, out.shape[0])
    cols = _span(origin[0], step, blur.x0, blur.x1, out.shape[1])
    if r < 1 or rows[0] >= rows[1] or cols[0] >= cols[1]:
        return
    x = origin[0] + (cols[0] - 2 * r) * step
    y = origin[1] + (rows[0] - 2 * r) * step
    region = render(x, y, cols[1] - cols[0] + 4 * r, rows[1] - rows[0] + 4 * r, step)
    acc = region.astype(np.int64)
    for axis in (0, 0, 1, 1):
        acc = _box_sum(acc, r, axis)
    scale = (2 * r + 1) ** 4
    out[rows[0] : rows[1], cols[0] : cols[1]] = (acc + scale // 2) // scale


def _span(start: int, step: float, lo: float, hi: float, n: int) -> tuple[int, int]:
    """Output indices ``[i0, i1)`` whose sample positions lie in ``[lo, hi)``."""
    i0 = math.ceil((lo + 0.5 - start) / step - 0.5)
    i1 = math.ceil((hi + 0.5 - start) / step - 0.5)
    return max(0, i0), min(n, i1)


def _box_sum(a: NDArray[np.int64], r: int, axis: int) -> NDArray[np.int64]:
    """Sums over windows of ``2 r + 1`` along ``axis`` ('valid' mode: ``2 r`` shorter)."""
    moved = np.moveaxis(a, axis, 0)
    c = np.cumsum(moved, axis=0)
    c = np.concatenate([np.zeros_like(c[:1]), c])
    return np.moveaxis(c[2 * r + 1 :] - c[: -2 * r - 1], 0, axis)
