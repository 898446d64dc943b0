"""Read each slide pixel once: fetch a block, cut every patch that overlaps it from the copy.

With stride = patch / 2 every slide pixel lies in four patches. A reader whose
cost is per call and per pixel -- the synthetic generator (its noise fields cost
the same per pixel whatever asks for them), OpenSlide (about 3.5 ms per
``read_region`` call here) -- then does all its work four times over: at
16384², 9.7 s of patch reads against 2.35 s to generate every pixel once.
:class:`BlockCache` keeps the blocks the reads are sweeping, bounded in bytes
(a :class:`~harness.slides._cache.TileCache`), so each block is made once and
patches become copies.

The block lattice
-----------------
Blocks are :data:`BLOCK_HW` samples at one sampling step ``s = mpp / slide
mpp``, block ``(by, bx)`` starting at level-0 ``(bx * bw * s, by * bh * s)``. A
read is served from blocks only when its samples *are* block samples: ``s`` a
whole number and the box origin a multiple of ``s``. Then every sample
position ``x + (j + 0.5) s - 0.5`` is a small integer or half-integer, exact in
float64, and equal to one block sample's position, so a slide whose pixels are
a function of their position (the synthetic slide's contract; level-0 reads of
a file) gives the same bytes from a block as from a direct read. Any other
read (fractional steps, misaligned origins) returns ``None`` and the caller
reads directly: correct, just not cached.

Block shape (measured, 8192² synthetic, CPU s to generate every pixel once):
256 x 256 0.60, 384 x 384 0.49, 512 x 512 0.53, 256 tall x 512 wide 0.53,
256 x 1024 1.79, 512 x 1024 1.05. Past 512 columns the finest texture octave
(a 512 px periodic tile) stops being a slice and becomes a gather, so blocks
stay at most 512 wide; 256 rows halve the band a cache must hold against
512 x 512 blocks at the same speed.
"""

from __future__ import annotations

import math
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np

from harness.slides._cache import TileCache
from harness.slides.base import output_size

if TYPE_CHECKING:
    from collections.abc import Callable

    from numpy.typing import NDArray

    from harness.slides.base import Box

BLOCK_HW = (256, 512)
"""Block ``(rows, columns)`` in samples (see the module notes for the measurement)."""
DEFAULT_LIMIT = 128 << 20
"""Largest capacity :meth:`BlockCache.resize` grants unless the slide was opened with another."""


class BlockCache:
    """Blocks of one slide, least recently used first out, at most ``max_bytes`` of pixels.

    Parameters
    ----------
    slide_mpp
        The slide's level-0 microns per pixel (to turn a read's mpp into a step).
    max_bytes
        Initial capacity; ``0`` (the default) serves nothing: every read is direct.
    limit
        Ceiling of :meth:`resize`, so a run's share never exceeds what the slide allows.
    block_hw
        Block ``(rows, columns)`` in samples.
    """

    def __init__(
        self,
        slide_mpp: float,
        max_bytes: int = 0,
        limit: int = DEFAULT_LIMIT,
        block_hw: tuple[int, int] = BLOCK_HW,
    ) -> None:
        self.slide_mpp, self.limit, self.block_hw = float(slide_mpp), int(limit), block_hw
        self.tiles = TileCache(min(int(max_bytes), self.limit))

    def __getstate__(self) -> dict[str, Any]:
        # The capacity travels (a reader process gets the run's share), the blocks do not.
        return {"slide_mpp": self.slide_mpp, "limit": self.limit, "block_hw": self.block_hw,
                "max_bytes": self.tiles.max_bytes}  # fmt: skip

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)  # type: ignore[misc]

    @property
    def max_bytes(self) -> int:
        """The capacity now."""
        return self.tiles.max_bytes

    def need(self, band_hw: tuple[int, int]) -> int:
        """Bytes for reads sweeping a band of ``band_hw`` level-0 pixels to fetch each block once.

        Any ``h x w`` window touches at most ``ceil(h / bh) + 1`` block rows and
        ``ceil(w / bw) + 1`` block columns; least-recently-used eviction then
        drops only blocks the sweep has left. Counted at step 1, the largest
        (coarser steps cover more level-0 pixels per block). Capped at ``limit``.
        """
        (bh, bw), (h, w) = self.block_hw, band_hw
        blocks = (math.ceil(h / bh) + 1) * (math.ceil(w / bw) + 1)
        return min(blocks * bh * bw * 3, self.limit)

    def resize(self, max_bytes: int) -> None:
        """Set the capacity (at most ``limit``), evicting what no longer fits."""
        self.tiles.resize(min(int(max_bytes), self.limit))

    def step(self, box: Box, mpp: float | None) -> int | None:
        """The whole sampling step of ``box`` at ``mpp`` when its samples lie on the lattice."""
        s = 1.0 if mpp is None else mpp / self.slide_mpp
        if s < 1 or s != int(s):
            return None
        k = int(s)
        return k if box[0] % k == 0 and box[1] % k == 0 else None

    def read(
        self, box: Box, mpp: float | None, fetch: Callable[[Box, float | None], NDArray[np.uint8]],
        out: NDArray[np.uint8] | None = None,
    ) -> NDArray[np.uint8] | None:  # fmt: skip
        """``box`` at ``mpp`` cut from cached blocks (``fetch`` makes a missing one), or ``None``.

        ``None`` means "read it directly": the cache is off, or the read's
        samples are not block samples (see the module notes), or ``out`` is given
        and is not the read's ``(h, w, 3)``. With ``out`` (e.g. a batch slot) the
        pieces are copied straight into it and it is returned: one copy per pixel,
        no allocation.
        """
        if self.tiles.max_bytes == 0:
            return None
        s = self.step(box, mpp)
        if s is None:
            return None
        h, w = output_size(box, self.slide_mpp, mpp)
        if out is None:
            out = np.empty((h, w, 3), dtype=np.uint8)
        elif out.shape != (h, w, 3):
            return None
        y0, x0 = box[1] // s, box[0] // s  # the first sample, in samples of step s
        for by, bx, src, dst in self._pieces(y0, x0, h, w):
            block = self.tiles.get((s, by, bx), partial(fetch, self._box(by, bx, s), mpp))
            out[dst] = block[src]
        return out

    def _box(self, by: int, bx: int, s: int) -> Box:
        """Level-0 box of block ``(by, bx)`` at step ``s``."""
        bh, bw = self.block_hw
        return bx * bw * s, by * bh * s, bw * s, bh * s

    def _pieces(
        self, y0: int, x0: int, h: int, w: int
    ) -> list[tuple[int, int, tuple[slice, slice], tuple[slice, slice]]]:
        """``(by, bx, block slice, output slice)`` of every block an ``h x w`` read overlaps."""
        bh, bw = self.block_hw
        pieces = []
        for by in range(y0 // bh, (y0 + h - 1) // bh + 1):
            ys, ye = max(y0, by * bh), min(y0 + h, (by + 1) * bh)
            for bx in range(x0 // bw, (x0 + w - 1) // bw + 1):
                xs, xe = max(x0, bx * bw), min(x0 + w, (bx + 1) * bw)
                src = (slice(ys - by * bh, ye - by * bh), slice(xs - bx * bw, xe - bx * bw))
                pieces.append((by, bx, src, (slice(ys - y0, ye - y0), slice(xs - x0, xe - x0))))
        return pieces
