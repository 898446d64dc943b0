"""Procedural synthetic H&E whole-slide images with ground-truth labels.

The tissue model
----------------
Every pixel is a pure function of ``(seed, slide parameters, sample position,
sampling step)``. A read at ``mpp`` of box ``(x, y, w, h)`` samples level-0
positions ``x + (j + 0.5) * s - 0.5`` (and likewise rows), where
``s = mpp / slide.mpp``; so reads at the slide's own mpp sample integer
pixels and any two reads agree bitwise where their sample positions coincide.
Nothing is stored: a 200k x 200k slide costs a few small arrays to describe.

* **Tissue**: two octaves of low-frequency value noise, faded to zero near the
  slide border and thresholded so that about ``tissue_fraction`` of the slide
  is tissue. **Holes** (lumens, tears) are a mid-frequency field thresholded
  to remove about 12 % of the tissue.
* **Stroma**: pink, textured by three octaves of noise (30, 8 and 3 µm).
* **Nuclei**: one candidate per square cell of about 8 µm, present with a
  probability that follows a 150 µm density field; an axis-aligned ellipse
  with hashed centre and radii that fits inside its cell.
* **Colour**: class and texture level index a lookup table of colour ramps
  centred on :data:`PALETTE`, so each class stays nearest its own palette
  colour, as the ``hne-colour`` model expects.

Sampling is band-limited: noise octaves finer than two sample steps
contribute their mean, so low-resolution reads are smooth. Nuclei are point
sampled at every resolution (a coarse read shows them as purple speckle).

Labels
------
``labels()`` returns :data:`BACKGROUND` (0), :data:`STROMA` (1),
:data:`NUCLEI` (2) and, where the pen artefact is enabled, :data:`INK` (3)
for pen ink. Folds and blur change colour only; their pixels keep their
tissue label.

Artefacts
---------
``"pen"``: a wavy green ink stroke near the top of the slide (opaque).
``"fold"``: a band of doubled, darker tissue through a tissue-rich spot.
``"blur"``: an out-of-focus rectangle (separable box blur applied twice), as
scanners produce for a whole field of view.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from harness.errors import ConfigError
from harness.palette import PALETTE
from harness.slides import _artefacts as art
from harness.slides._blockcache import DEFAULT_LIMIT, BlockCache
from harness.slides._decide import exceeds, field_at, levels, tolerance, where
from harness.slides._noise import field, hash2, mix_key, periodic_tile
from harness.slides._synthlayout import (
    ABSENT,
    FOLD,
    LEVELS,
    LUT,
    axis,
    edge_fade,
    inside,
    layout,
    window,
)
from harness.slides.base import PAD_VALUE, Box, output_size, put

if TYPE_CHECKING:
    from collections.abc import Iterable

    from numpy.typing import NDArray

BACKGROUND, STROMA, NUCLEI, INK = 0, 1, 2, 3
ARTEFACTS: tuple[str, ...] = ("pen", "fold", "blur")


def _parse_artefacts(artefacts: bool | Iterable[str]) -> tuple[str, ...]:
    if artefacts is True:
        return ARTEFACTS
    if artefacts is False:
        return ()
    names = tuple(artefacts)
    unknown = sorted(set(names) - set(ARTEFACTS))
    if unknown:
        raise ConfigError(f"unknown artefact(s) {unknown}; choose from {', '.join(ARTEFACTS)}")
    return tuple(a for a in ARTEFACTS if a in names)


MAX_SIDE = 10**6
"""Largest synthetic side: 1 M px, five times the largest real slides (the tissue layout
holds a (side / 300)^2 table: 44 MB at this side, 413 GiB at 10^8; a 20-digit size
allocated exabytes before this check)."""


class SyntheticSlide:
    """A procedural H&E slide: see the module documentation for the model.

    Parameters
    ----------
    height, width
        Level-0 size in pixels.
    mpp
        Microns per pixel at level 0; nuclei and texture scale with it.
    seed
        Selects the tissue layout; equal seeds give equal slides.
    tissue_fraction
        Approximate share of the slide covered by tissue, in ``(0, 0.85]``.
    artefacts
        ``True`` for all of :data:`ARTEFACTS`, ``False`` for none, or names.
    cache_bytes
        Most bytes the block cache may hold (:mod:`harness.slides._blockcache`).
        It starts empty and off: a run sizes it to its budget share
        (:meth:`resize_cache`), so reads outside a run cost what they always did.
    """

    def __init__(
        self,
        height: int,
        width: int,
        mpp: float = 0.5,
        seed: int = 0,
        tissue_fraction: float = 0.4,
        artefacts: bool | Iterable[str] = False,
        cache_bytes: int = DEFAULT_LIMIT,
    ) -> None:
        if int(height) < 1 or int(width) < 1:
            raise ConfigError(f"slide size must be at least 1 x 1 pixels, got {height} x {width}")
        if max(int(height), int(width)) > MAX_SIDE:
            raise ConfigError(f"synthetic slides are at most {MAX_SIDE:,} pixels a side, got "
                              f"{int(height):,} x {int(width):,}")  # fmt: skip
        if not 0.01 <= mpp <= 1000:
            raise ConfigError(f"mpp must be in [0.01, 1000] microns per pixel, got {mpp}")
        if not 0 < tissue_fraction <= 0.85:
            raise ConfigError(f"tissue_fraction must be in (0, 0.85], got {tissue_fraction}")
        self._shape = (int(height), int(width))
        self._mpp = float(mpp)
        self.seed = int(seed) & 0xFFFFFFFF
        self.tissue_fraction = float(tissue_fraction)
        self.artefacts = _parse_artefacts(artefacts)
        self._layout = layout(*self._shape, self._mpp, self.seed, self.tissue_fraction)
        self._tile: NDArray[np.float32] | None = None
        self._art = art.place(self._shape, self.seed, self.artefacts, self._coarse_tissue())
        self._blocks = BlockCache(self._mpp, 0, limit=int(cache_bytes))

    def __repr__(self) -> str:
        h, w = self._shape
        return (
            f"SyntheticSlide(height={h}, width={w}, mpp={self._mpp}, seed={self.seed}, "
            f"tissue_fraction={self.tissue_fraction}, artefacts={self.artefacts})"
        )

    @property
    def spec(self) -> str:
        """The canonical ``synthetic:`` spec that rebuilds this slide (every parameter explicit)."""
        h, w = self._shape
        art = "+".join(self.artefacts) if self.artefacts else "0"
        return (
            f"synthetic:{w}x{h},seed={self.seed},tissue={self.tissue_fraction!r},"
            f"mpp={self._mpp!r},artefacts={art}"
        )

    @property
    def shape(self) -> tuple[int, int]:
        """Level-0 ``(height, width)`` in pixels."""
        return self._shape

    @property
    def mpp(self) -> float:
        """Microns per pixel at level 0."""
        return self._mpp

    @property
    def downsamples(self) -> tuple[float, ...]:
        """A virtual slide has one level; every other resolution is generated directly."""
        return (1.0,)

    @property
    def cache(self) -> BlockCache:
        """The block cache (off until :meth:`resize_cache` gives it bytes)."""
        return self._blocks

    def cache_need(self, band_hw: tuple[int, int]) -> int:
        """Cache bytes for reads sweeping ``band_hw`` (level-0 px) to generate each pixel once."""
        return self._blocks.need(band_hw)

    def resize_cache(self, max_bytes: int) -> None:
        """Set the block cache capacity (at most ``cache_bytes``; 0 turns it off)."""
        self._blocks.resize(max_bytes)

    def read(self, box: Box, mpp: float | None = None) -> NDArray[np.uint8]:
        """Render ``box`` at ``mpp`` as ``(h, w, 3)`` uint8 RGB, white outside the slide.

        With the cache on, aligned reads are cut from cached blocks (bitwise the
        same pixels: see :mod:`harness.slides._blockcache`); others render directly.
        """
        cut = self._blocks.read(box, mpp, self._read_direct)
        return cut if cut is not None else self._read_direct(box, mpp)

    def read_into(self, box: Box, mpp: float | None, out: NDArray[np.uint8]) -> None:
        """:meth:`read` written into ``out``: cut there from the blocks (see :func:`read_into`)."""
        if self._blocks.read(box, mpp, self._read_direct, out) is None:
            put(out, self._read_direct(box, mpp), box, mpp)

    def _read_direct(self, box: Box, mpp: float | None) -> NDArray[np.uint8]:
        """Render ``box`` itself (no cache)."""
        (h, w), (rows, cols), (u, v), step = self._frame(box, mpp)
        if u.size == w and v.size == h:
            out = self._render_at(u, v, step)  # the common case: nothing to pad
        else:
            out = np.full((h, w, 3), PAD_VALUE, dtype=np.uint8)
            if u.size and v.size:
                out[rows, cols] = self._render_at(u, v, step)
        if self._art.blur is not None:
            art.apply_blur(out, self._art.blur, (box[0], box[1]), step, self._render)
        return out

    def labels(self, box: Box, mpp: float | None = None) -> NDArray[np.uint8]:
        """Ground-truth classes of ``box`` at ``mpp``: 0 background, 1 stroma, 2 nuclei, 3 ink."""
        (h, w), (rows, cols), (u, v), step = self._frame(box, mpp)
        out = np.full((h, w), BACKGROUND, dtype=np.uint8)
        if u.size and v.size:
            out[rows, cols] = self._classes(u, v, step) & np.uint8(3)
        return out

    def tissue_mask(self, mpp: float = 16.0) -> NDArray[np.bool_]:
        """Tissue (stroma or nuclei, holes excluded) of the whole slide at ``mpp``.

        Nuclei are not rendered (they lie inside tissue anyway), so a coarse
        mask costs one small field evaluation per 256-row strip.
        """
        h, w = output_size((0, 0, self._shape[1], self._shape[0]), self._mpp, mpp)
        step = mpp / self._mpp
        u = axis(0, w, step)
        mask = np.zeros((h, w), dtype=bool)
        cols = inside(u, self._shape[1])
        for top in range(0, h, 256):
            v = axis(0, h, step)[top : top + 256]
            rows = inside(v, self._shape[0])
            if rows.stop > rows.start and cols.stop > cols.start:
                tissue = self._tissue(u[cols], v[rows], step)
                mask[top + rows.start : top + rows.stop, cols] = tissue
        return mask

    def _frame(
        self, box: Box, mpp: float | None
    ) -> tuple[tuple[int, int], tuple[slice, slice], tuple[NDArray[np.float64], ...], float]:
        """Output size, the part of it inside the slide, and that part's sample positions."""
        x, y, _, _ = box
        h, w = output_size(box, self._mpp, mpp)
        step = 1.0 if mpp is None else mpp / self._mpp
        u, v = axis(x, w, step), axis(y, h, step)
        cols, rows = inside(u, self._shape[1]), inside(v, self._shape[0])
        return (h, w), (rows, cols), (u[cols], v[rows]), step

    def _render(self, x: float, y: float, w: int, h: int, step: float) -> NDArray[np.uint8]:
        """RGB without blur of ``h x w`` samples from ``(x, y)`` (as :meth:`read`), for the blur."""
        return self._render_at(axis(x, w, step), axis(y, h, step), step)

    def _render_at(
        self, u: NDArray[np.float64], v: NDArray[np.float64], step: float
    ) -> NDArray[np.uint8]:
        cls = self._classes(u, v, step)
        cls *= np.uint8(LEVELS)
        cls += self._texture(u, v, step)
        return LUT.take(cls, axis=0)

    def _texture(
        self, u: NDArray[np.float64], v: NDArray[np.float64], step: float
    ) -> NDArray[np.uint8]:
        """Texture level in ``[0, LEVELS)``; at full resolution the grain is a tile slice.

        The level is the integer part of the field, decided exactly where the
        field is within rounding of an integer (:mod:`harness.slides._decide`).
        """
        lay = self._layout
        octaves = (*lay.texture, lay.grain)
        if step != 1.0 or lay.grain.spacing < 2.0:
            fast = field(self.seed, octaves, u, v, step)

            def exact(r: NDArray[np.intp], c: NDArray[np.intp]) -> NDArray[np.float64]:
                return field_at(self.seed, octaves, u[c], v[r], step)

            return levels(fast, tolerance(octaves), exact)
        grain = window(self._grain_tile(), int(v[0]), int(u[0]), v.size, u.size)
        fast = field(self.seed, lay.texture, u, v, step)
        fast += grain

        def exact_tiled(r: NDArray[np.intp], c: NDArray[np.intp]) -> NDArray[np.float64]:
            # The grain tile is one fixed computation: its values are the same for every read.
            return field_at(self.seed, lay.texture, u[c], v[r], step) + grain[r, c]

        return levels(fast, tolerance(octaves), exact_tiled)

    def _grain_tile(self) -> NDArray[np.float32]:
        if self._tile is None:
            self._tile = periodic_tile(self.seed, self._layout.grain)
        return self._tile

    def __getstate__(self) -> dict[str, object]:
        state = self.__dict__.copy()
        state["_tile"] = None  # rebuilt on demand: 4 MB not worth pickling to every worker
        return state

    def _tissue(
        self, u: NDArray[np.float64], v: NDArray[np.float64], step: float
    ) -> NDArray[np.bool_]:
        lay = self._layout
        t = field(self.seed, lay.tissue, u, v, step)
        (my, mx), (h, w) = lay.edge, self._shape
        ey = ex = None
        if min(v[0] + 0.5, u[0] + 0.5, h - 0.5 - v[-1], w - 0.5 - u[-1]) < max(my, mx):
            ey, ex = edge_fade(v, h, my), edge_fade(u, w, mx)
            t *= ey[:, None]  # only near the border, where tissue fades out
            t *= ex[None, :]

        def exact(r: NDArray[np.intp], c: NDArray[np.intp]) -> NDArray[np.float64]:
            te = field_at(self.seed, lay.tissue, u[c], v[r], step)
            if ey is not None and ex is not None:
                te *= ey[r].astype(np.float64) * ex[c].astype(np.float64)
            return te

        tissue = exceeds(t, lay.tissue_threshold, tolerance(lay.tissue), exact)
        if tissue.any():
            holes = field(self.seed, lay.holes, u, v, step)

            def exact_holes(r: NDArray[np.intp], c: NDArray[np.intp]) -> NDArray[np.float64]:
                return field_at(self.seed, lay.holes, u[c], v[r], step)

            tissue &= ~exceeds(holes, lay.hole_threshold, tolerance(lay.holes), exact_holes)
        return tissue

    def _classes(
        self, u: NDArray[np.float64], v: NDArray[np.float64], step: float
    ) -> NDArray[np.uint8]:
        """Lookup-table class per sample: label, plus :data:`FOLD` inside a fold."""
        tissue = self._tissue(u, v, step)
        cls = tissue.view(np.uint8).copy()
        if tissue.any():
            nuclei = self._nuclei(u, v, step)
            nuclei &= tissue
            cls += nuclei.view(np.uint8)
            if self._art.fold is not None:
                art.add_fold(cls, tissue, self._art.fold, u, v, np.uint8(FOLD))
        if self._art.pen is not None:
            art.add_pen(cls, self._art.pen, u, v, np.uint8(INK))
        return cls

    def _nuclei(
        self, u: NDArray[np.float64], v: NDArray[np.float64], step: float
    ) -> NDArray[np.bool_]:
        if step == 1.0:
            return self._nuclei_block(int(u[0]), int(v[0]), u.size, v.size)
        return self._nuclei_sampled(u, v)

    def _cells(
        self, rows: NDArray[np.int64], cols: NDArray[np.int64]
    ) -> tuple[NDArray[np.float32], ...]:
        """Per-cell nucleus ``(cy, cx, 1/ry^2, 1/rx^2)`` on the grid ``rows x cols``.

        One hash per cell, split into bit fields: presence (8 bits), centre
        (5 + 5) and radii (4 + 4).
        """
        c = self._layout.cell
        h = hash2(mix_key(self.seed, 9), rows[:, None], cols[None, :])
        bits = [((h >> np.uint32(s)) & np.uint32(m)).astype(np.float32) for s, m in _FIELDS]
        cu = np.asarray((cols + 0.5) * c, dtype=np.float64)
        cv = np.asarray((rows + 0.5) * c, dtype=np.float64)
        present = self._present(bits[0], cu, cv)
        ry = np.float32(c) * (np.float32(0.22) + np.float32(0.2 / 15) * bits[3])
        rx = np.float32(c) * (np.float32(0.22) + np.float32(0.2 / 15) * bits[4])
        cy = ry + (np.float32(c) - 2 * ry) * bits[1] / np.float32(31)
        cx = rx + (np.float32(c) - 2 * rx) * bits[2] / np.float32(31)
        cy = np.where(present, cy, ABSENT).astype(np.float32)
        return (
            cy,
            cx.astype(np.float32),
            (1.0 / (ry * ry)).astype(np.float32),
            (1.0 / (rx * rx)).astype(np.float32),
        )

    def _present(
        self, draw: NDArray[np.float32], cu: NDArray[np.float64], cv: NDArray[np.float64]
    ) -> NDArray[np.bool_]:
        """Whether each cell has a nucleus: its 8-bit draw below the density's odds.

        Decided on the exact density where the fast one is within rounding of the draw.
        """
        octaves, c = self._layout.density, self._layout.cell
        density = field(self.seed, octaves, cu, cv, c)
        odds = np.float32(256.0) * np.clip(1.6 * density - 0.45, 0.08, 0.85)
        present: NDArray[np.bool_] = draw < odds
        rows, cols = where(np.abs(odds - draw) <= np.float32(512 * tolerance(octaves)))
        if rows.size:
            d = field_at(self.seed, octaves, cu[cols], cv[rows], c)
            present[rows, cols] = draw[rows, cols] < 256.0 * np.clip(1.6 * d - 0.45, 0.08, 0.85)
        return present

    def _nuclei_block(self, x: int, y: int, w: int, h: int) -> NDArray[np.bool_]:
        """Nuclei at integer pixels, computed cell-block-wise: one full-size add and compare."""
        c = self._layout.cell
        r0, c0 = y // c, x // c
        ny, nx = -(-(y + h) // c) - r0, -(-(x + w) // c) - c0
        cy, cx, iry2, irx2 = self._cells(np.arange(r0, r0 + ny), np.arange(c0, c0 + nx))
        loc = np.arange(c, dtype=np.float32)
        dy2 = (loc[None, :, None] - cy[:, None, :]) ** 2 * iry2[:, None, :]  # (ny, c, nx)
        dx2 = (loc[None, None, :] - cx[:, :, None]) ** 2 * irx2[:, :, None]  # (ny, nx, c)
        d2 = dy2[:, :, :, None] + dx2[:, None, :, :]
        hit = (d2 < np.float32(1.0)).reshape(ny * c, nx * c)
        top, left = y - r0 * c, x - c0 * c
        return hit[top : top + h, left : left + w]

    def _nuclei_sampled(self, u: NDArray[np.float64], v: NDArray[np.float64]) -> NDArray[np.bool_]:
        """Nuclei at arbitrary sorted sample positions: gathers each sample's cell."""
        c = self._layout.cell
        ci, ri = np.floor(u / c).astype(np.int64), np.floor(v / c).astype(np.int64)
        cols, col_of = np.unique(ci, return_inverse=True)
        rows, row_of = np.unique(ri, return_inverse=True)
        cy, cx, iry2, irx2 = self._cells(rows, cols)
        pick = np.ix_(row_of, col_of)
        dy = (v - ri * c).astype(np.float32)[:, None] - cy[pick]
        dx = (u - ci * c).astype(np.float32)[None, :] - cx[pick]
        return dy * dy * iry2[pick] + dx * dx * irx2[pick] < np.float32(1.0)

    def _coarse_tissue(self) -> NDArray[np.float32]:
        """Tissue field (border fade included) on a 64 x 64 grid, for placing artefacts."""
        h, w = self._shape
        v = (np.arange(64) + 0.5) * h / 64 - 0.5
        u = (np.arange(64) + 0.5) * w / 64 - 0.5
        lay = self._layout
        t = field(self.seed, lay.tissue, u, v, 1.0) * edge_fade(v, h, lay.edge[0])[:, None]
        return t * edge_fade(u, w, lay.edge[1])[None, :]


#: ``(shift, mask)`` of each bit field of a nucleus cell hash.
_FIELDS = ((0, 255), (8, 31), (13, 31), (18, 15), (22, 15))

__all__ = ["ARTEFACTS", "BACKGROUND", "INK", "NUCLEI", "PALETTE", "STROMA", "SyntheticSlide"]
