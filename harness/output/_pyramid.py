"""Multiscale pyramids written block by block, each block exactly once.

A *block* is the unit one array write covers: a zarr v3 shard (NGFF 0.5) or a
zarr v2 chunk (NGFF 0.4), the same square side ``B`` at every level. Level 0
is assembled from the export pass's tiles (:class:`BlockAssembler`); level
``k + 1`` is then built from level ``k`` read back block by block: one level
``k + 1`` block summarises the 2 x 2 level ``k`` blocks below it, read one at
a time, so memory is one block of each level and each block is read once and
written once, whatever the slide size (:func:`build_level`).

Reducers halve the last two (y, x) axes of an array. Odd edges are padded by
repeating the last row / column, which gives every real pixel of an edge
block the same weight, so the mode and the means are exactly those of the
real pixels. The level ``k`` pixel ``i`` of a mode or mean pyramid summarises
level-0 pixels ``[i 2^k, (i + 1) 2^k)``, so its centre lies
``(2^k - 1) / 2`` level-0 pixels further on (:func:`centre_offset`); a
nearest pyramid keeps level-0 pixel ``i 2^k`` itself (offset 0).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    import zarr
    from numpy.typing import NDArray

    from harness.output.base import Box

    Reducer = Callable[[NDArray[Any]], NDArray[Any]]

REDUCERS = ("mode", "nearest", "nanmean", "mean")


def level_shapes(shape: tuple[int, int], min_side: int) -> list[tuple[int, int]]:
    """``(h, w)`` of each level, halving (rounding up) until the longer side is <= ``min_side``."""
    shapes = [shape]
    while max(shapes[-1]) > min_side:
        h, w = shapes[-1]
        shapes.append((-(-h // 2), -(-w // 2)))
    return shapes


def centre_offset(reducer: str, level: int) -> float:
    """Level-0 pixels from a level's pixel ``i 2^k`` to the centre of what pixel ``i`` shows."""
    return 0.0 if reducer == "nearest" else (2**level - 1) / 2


def _quads(a: NDArray[Any]) -> list[NDArray[Any]]:
    """The four 2 x 2 phases of ``a`` (last two axes), odd edges padded by repetition."""
    h, w = a.shape[-2:]
    pad = [(0, 0)] * (a.ndim - 2) + [(0, h % 2), (0, w % 2)]
    p = np.pad(a, pad, mode="edge") if h % 2 or w % 2 else a
    return [p[..., 0::2, 0::2], p[..., 0::2, 1::2], p[..., 1::2, 0::2], p[..., 1::2, 1::2]]


def mode2(a: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """Most frequent value of each 2 x 2 block; ties go to the lowest value.

    Uncovered pixels (255) count like any label, so a block is uncovered only
    when most of it is, and a covered class wins a tie against uncovered.
    """
    q = np.stack(_quads(a))
    counts = (q[:, None] == q[None, :]).sum(axis=1, dtype=np.uint16)
    key = counts * 256 + (255 - q.astype(np.uint16))
    best = key.argmax(axis=0)[None]
    out: NDArray[np.uint8] = np.take_along_axis(q, best, axis=0)[0]
    return out


def nearest2(a: NDArray[Any]) -> NDArray[Any]:
    """The top-left pixel of each 2 x 2 block."""
    return a[..., ::2, ::2].copy()


def nanmean2(a: NDArray[np.floating[Any]]) -> NDArray[np.floating[Any]]:
    """Mean of each 2 x 2 block over its non-NaN values (NaN where all are NaN), in float32."""
    total = np.zeros(_half(a.shape), np.float32)
    count = np.zeros(_half(a.shape), np.float32)
    for q in _quads(a):
        ok = ~np.isnan(q)
        total += np.where(ok, q, 0)
        count += ok
    with np.errstate(invalid="ignore", divide="ignore"):
        out = total / count  # 0 / 0 = NaN: every value of the block was NaN
    return out.astype(a.dtype, copy=False)


def mean2(a: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """Mean of each 2 x 2 block of uint8 values, rounded half up."""
    quads = _quads(a)
    total = quads[0].astype(np.uint16)
    for q in quads[1:]:
        total += q
    out: NDArray[np.uint8] = ((total + 2) // 4).astype(np.uint8)
    return out


def _half(shape: tuple[int, ...]) -> tuple[int, ...]:
    return (*shape[:-2], -(-shape[-2] // 2), -(-shape[-1] // 2))


REDUCE: dict[str, Reducer] = {
    "mode": mode2,
    "nearest": nearest2,
    "nanmean": nanmean2,
    "mean": mean2,
}


def blocks(shape: tuple[int, int], block: int) -> Iterator[Box]:
    """Block boxes ``(y0, y1, x0, x1)`` in raster order, clipped to ``shape``."""
    h, w = shape
    for y in range(0, h, block):
        for x in range(0, w, block):
            yield (y, min(y + block, h), x, min(x + block, w))


def is_fill(data: NDArray[Any], fill: float | None) -> bool:
    """Whether every value equals the array's fill (NaN fill: every value is NaN)."""
    if fill is None:
        return False
    if isinstance(fill, float) and np.isnan(fill):
        return bool(np.isnan(data).all())
    return bool((data == fill).all())


@dataclass
class LevelWriter:
    """Writes whole blocks of one level; remembers which blocks hold data.

    ``fill`` is the array's fill value, or None when every block is written
    (an RGB image has no "nothing here" value). All-fill blocks are skipped:
    the store stays as sparse as the source.
    """

    array: zarr.Array[Any]
    block: int
    fill: float | None
    written: set[tuple[int, int]] = field(default_factory=set)

    def write(self, box: Box, data: NDArray[Any]) -> None:
        """Write the block at ``box`` (one whole block, once)."""
        key = (box[0] // self.block, box[2] // self.block)
        if key in self.written:
            raise AssertionError(f"block {key} of {self.array.path} written twice")
        if is_fill(data, self.fill):
            return
        self.array[..., box[0] : box[1], box[2] : box[3]] = data
        self.written.add(key)


class BlockAssembler:
    """Gathers the export pass's tiles into whole level-0 blocks.

    A tile holding whole blocks hands them on as views (no copy); blocks that
    tiles only partly cover are kept in ``pending`` until they are complete.
    When tiles are aligned to blocks (the export CLI makes them so), nothing
    is ever pending; otherwise at most one row of blocks is.
    """

    def __init__(self, writer: LevelWriter, shape: tuple[int, int], lead: tuple[int, ...]):
        self.writer, self.shape, self.lead = writer, shape, lead
        self.pending: dict[tuple[int, int], tuple[NDArray[Any], list[int]]] = {}

    def add(self, box: Box, data: NDArray[Any]) -> None:
        """Take one tile ``data[..., h, w]`` at ``box``; write every block it completes."""
        y0, y1, x0, x1 = box
        b = self.writer.block
        for by in range(y0 // b, -(-y1 // b)):
            for bx in range(x0 // b, -(-x1 // b)):
                blk = (
                    by * b,
                    min(by * b + b, self.shape[0]),
                    bx * b,
                    min(bx * b + b, self.shape[1]),
                )
                self._add_part(box, data, blk)

    def _add_part(self, box: Box, data: NDArray[Any], blk: Box) -> None:
        y0, y1, x0, x1 = box
        cy0, cy1, cx0, cx1 = max(y0, blk[0]), min(y1, blk[1]), max(x0, blk[2]), min(x1, blk[3])
        part = data[..., cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]
        key = (blk[0], blk[2])
        if key not in self.pending and (cy0, cy1, cx0, cx1) == blk:
            self.writer.write(blk, part)
            return
        if key not in self.pending:
            fill = self.writer.fill if self.writer.fill is not None else 0
            buf = np.full((*self.lead, blk[1] - blk[0], blk[3] - blk[2]), fill, data.dtype)
            self.pending[key] = (buf, [0])
        buf, filled = self.pending[key]
        buf[..., cy0 - blk[0] : cy1 - blk[0], cx0 - blk[2] : cx1 - blk[2]] = part
        filled[0] += (cy1 - cy0) * (cx1 - cx0)
        if filled[0] == buf.shape[-2] * buf.shape[-1]:
            del self.pending[key]
            self.writer.write(blk, buf)

    def flush(self) -> None:
        """Write blocks no tile completed (only if the tiles did not cover the map)."""
        for (y, x), (buf, _) in sorted(self.pending.items()):
            self.writer.write((y, y + buf.shape[-2], x, x + buf.shape[-1]), buf)
        self.pending.clear()


def build_level(src: LevelWriter, dst: LevelWriter, reduce: Reducer) -> None:
    """Write every block of ``dst`` from the 2 x 2 blocks of ``src`` below it, one at a time."""
    b = dst.block
    half = b // 2
    sh, sw = src.array.shape[-2:]
    lead = tuple(dst.array.shape[:-2])
    dst_fill = dst.fill if dst.fill is not None else 0
    for box in blocks(tuple(dst.array.shape[-2:]), b):  # type: ignore[arg-type]
        by, bx = box[0] // b, box[2] // b
        below = [(2 * by + qy, 2 * bx + qx) for qy in (0, 1) for qx in (0, 1)]
        below = [(y, x) for y, x in below if y * b < sh and x * b < sw]
        if src.fill is not None and not any(k in src.written for k in below):
            continue  # everything below is fill, so this block would be too
        out = np.full((*lead, box[1] - box[0], box[3] - box[2]), dst_fill, dst.array.dtype)
        for y, x in below:
            if src.fill is not None and (y, x) not in src.written:
                part = np.full(
                    (*lead, min(b, sh - y * b), min(b, sw - x * b)), src.fill, src.array.dtype
                )
            else:
                part = np.asarray(src.array[..., y * b : (y + 1) * b, x * b : (x + 1) * b])
            small = reduce(part)
            oy, ox = (y - 2 * by) * half, (x - 2 * bx) * half
            out[..., oy : oy + small.shape[-2], ox : ox + small.shape[-1]] = small
        dst.write(box, out)
