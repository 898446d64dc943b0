"""The grid arithmetic behind :mod:`harness.plan`: origins, strip entries and chunk tables.

:func:`harness.plan.make_plan` decides *what* a plan holds; this module holds
*how* it is computed, vectorised over the whole grid: the raster-order patch
origins (:func:`grid_origins`), which of them a block keeps and owns, the
strip entries with their halo copies (:func:`_strip_entries`), and the CSR
tables of the chunks each entry touches (:func:`_pairs`) and of the entries
each chunk is used by (:func:`_uses`). Everything is integer arithmetic on
the grid convention of :mod:`harness.plan`.

Only the tables a run holds for its whole length leave :func:`_block_entries`;
the entry-chunk pairs are a transient, dropped as soon as each chunk's count
is known.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from harness.errors import ConfigError

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from harness.plan import Pair, PlanConfig, Region, Window


@dataclass(frozen=True)
class _Layout:
    """Where a plan's block sits: the output, its chunk grid and the block's strips."""

    out_shape: Pair
    grid: Pair  # chunk rows and columns of the whole output
    block: Region  # the chunks planned (the whole grid when ``region`` is None)
    region: Region | None  # the block as asked for
    window: Window | None  # the block's output pixels (None: the whole output)
    width: int  # strip width in chunk columns

    @property
    def n_strips(self) -> int:
        """Strips across the block's chunk columns."""
        return -(-(self.block.c1 - self.block.c0) // self.width)


@dataclass(frozen=True)
class _Entries:
    """A block's entries in processing order and the counts the plan keeps."""

    origins: NDArray[np.int32]  # (n, 2) output-box origins (y, x), in processing order
    strip_starts: NDArray[np.int64]  # entries of strip s: strip_starts[s]:strip_starts[s+1]
    expected: NDArray[np.int32]  # entries touching each chunk id (row-major chunk grid)
    todo: NDArray[np.bool_] | None  # chunks to write (None: every chunk)
    masked_out: int  # grid patches in the block's window that the selection dropped
    n_unique: int  # distinct patches among the entries
    patches_done: int  # kept patches skipped because all their chunks are final
    owned: int  # kept patches whose origin chunk is in the block


def grid_origins(
    out_shape: Pair, out_hw: Pair, stride_hw: Pair, window: Window | None = None
) -> NDArray[np.int64]:
    """Raster-order output origins ``(y, x)`` covering ``out_shape`` (see :mod:`harness.plan`).

    With ``window = (y0, y1, x0, x1)`` only the origins whose output box
    overlaps it, computed per axis (never the whole grid of a huge slide).
    """
    axes = []
    for k, (size, patch, step) in enumerate(zip(out_shape, out_hw, stride_hw, strict=True)):
        n = grid_count(size, patch, step)
        lo, hi = 0, n
        if window is not None:
            w0, w1 = window[2 * k], window[2 * k + 1]
            lo = max(0, -(-(w0 - patch + 1) // step))  # first origin with o + patch > w0
            hi = min(n, -(-w1 // step))  # origins o < w1
        axes.append(np.arange(lo, max(lo, hi), dtype=np.int64) * step)
    ys, xs = np.meshgrid(axes[0], axes[1], indexing="ij")
    return np.stack([ys.ravel(), xs.ravel()], axis=1)


def grid_count(size: int, patch: int, step: int) -> int:
    """Patches along an axis of ``size`` output pixels (the last may overhang)."""
    return 1 if size <= patch else -(-(size - patch) // step) + 1


def _block_entries(
    config: PlanConfig,
    layout: _Layout,
    keep: NDArray[np.bool_] | None,
    tissue: NDArray[np.bool_] | None,
    done: NDArray[np.bool_] | None,
) -> _Entries:
    """The block's selected patches as strip entries, restricted to the chunks it writes.

    One pass, so each transient is dropped as soon as the next table is built.
    """
    out_shape, width, col0 = layout.out_shape, layout.width, layout.block.c0
    n_strips = layout.n_strips
    origins, n_all = _selected_origins(out_shape, config, layout.window, keep, tissue)
    n_kept = len(origins)
    owned = int(np.count_nonzero(_owned(origins, config.chunk_hw, layout.block)))
    todo = _todo(layout.grid, layout.region, done)
    origins, strip = _strip_entries(origins, config, out_shape, width, col0, n_strips)
    ptr, chunk = _pairs(origins, strip, width, col0, config, out_shape)
    if todo is not None:
        kept, ptr, chunk = _keep_pairs(ptr, chunk, todo)
        origins, strip = origins[kept], strip[kept]
    expected = np.bincount(chunk, minlength=layout.grid[0] * layout.grid[1]).astype(np.int32)
    del ptr, chunk  # a transient: entries' chunks are arithmetic (Plan.chunks_of)
    starts = np.searchsorted(strip, np.arange(n_strips + 1))
    n_unique = _distinct(origins, out_shape[1])
    return _Entries(
        origins=origins.astype(np.int32),  # held all run long: half of int64
        strip_starts=starts.astype(np.int64), expected=expected, todo=todo,
        masked_out=n_all - n_kept, n_unique=n_unique, patches_done=n_kept - n_unique, owned=owned,
    )  # fmt: skip


def _strip_entries(
    origins: NDArray[np.int64], config: PlanConfig, out_shape: Pair, strip: int, col0: int,
    n_strips: int,
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:  # fmt: skip
    """Entries in processing order, and the strip of each.

    Strip ``s`` covers chunk columns ``col0 + s * strip`` onwards. A patch whose
    output crosses a strip edge gets one entry per strip, each touching only
    that strip's chunks (the halo patch runs twice), so every chunk sees its
    patches in raster order whatever the strip width. Patches overhanging the
    block's first or last column belong to its first or last strip.
    """
    ow, cw = config.out_hw[1], config.chunk_hw[1]
    x0 = origins[:, 1]
    s0 = np.clip((x0 // cw - col0) // strip, 0, n_strips - 1)
    s1 = np.clip(((np.minimum(x0 + ow, out_shape[1]) - 1) // cw - col0) // strip, 0, n_strips - 1)
    copies = s1 - s0 + 1
    grid_id = np.repeat(np.arange(len(origins), dtype=np.int64), copies)
    first = np.repeat(np.cumsum(copies) - copies, copies)
    s = np.repeat(s0, copies) + np.arange(len(grid_id), dtype=np.int64) - first
    order = np.lexsort((origins[grid_id, 1], origins[grid_id, 0], s))
    return origins[grid_id[order]], s[order]


def _pairs(
    origins: NDArray[np.int64], strip: NDArray[np.int64], width: int, col0: int,
    config: PlanConfig, out_shape: Pair,
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:  # fmt: skip
    """CSR of the chunks each entry touches (row-major within an entry)."""
    (oh, ow), (ch, cw) = config.out_hw, config.chunk_hw
    ncols = -(-out_shape[1] // cw)
    y0, x0 = origins[:, 0], origins[:, 1]
    r0 = y0 // ch
    c0 = np.maximum(x0 // cw, col0 + strip * width)
    c1 = np.minimum((np.minimum(x0 + ow, out_shape[1]) - 1) // cw, col0 + (strip + 1) * width - 1)
    nr = (np.minimum(y0 + oh, out_shape[0]) - 1) // ch - r0 + 1
    nc = np.maximum(c1 - c0 + 1, 0)
    counts = nr * nc
    ptr = np.zeros(len(origins) + 1, dtype=np.int64)
    np.cumsum(counts, out=ptr[1:])
    local = np.arange(ptr[-1], dtype=np.int64) - np.repeat(ptr[:-1], counts)
    ncr = np.repeat(nc, counts)
    chunk = (np.repeat(r0, counts) + local // ncr) * ncols + np.repeat(c0, counts) + local % ncr
    return ptr, chunk


def _keep_pairs(
    ptr: NDArray[np.int64], chunk: NDArray[np.int64], todo: NDArray[np.bool_]
) -> tuple[NDArray[np.bool_], NDArray[np.int64], NDArray[np.int64]]:
    """Restrict a CSR to ``todo`` chunks: (entries that keep any, new ptr, new chunks)."""
    live = todo[chunk]
    per_entry = np.zeros(len(ptr) - 1, dtype=np.int64)
    entry = np.repeat(np.arange(len(ptr) - 1), np.diff(ptr))
    np.add.at(per_entry, entry[live], 1)
    keep = per_entry > 0
    new_ptr = np.zeros(int(keep.sum()) + 1, dtype=np.int64)
    np.cumsum(per_entry[keep], out=new_ptr[1:])
    return keep, new_ptr, chunk[live]


def _uses(
    pair_ptr: NDArray[np.int64], pair_chunk: NDArray[np.int64], expected: NDArray[np.int32]
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """CSR of the entries using each chunk, in processing order (``expected`` = row lengths)."""
    pair_patch = np.repeat(np.arange(len(pair_ptr) - 1, dtype=np.int64), np.diff(pair_ptr))
    perm = np.argsort(pair_chunk, kind="stable")
    use_ptr = np.zeros(len(expected) + 1, dtype=np.int64)
    np.cumsum(expected, out=use_ptr[1:])
    return use_ptr, pair_patch[perm]


def _selected_origins(
    out_shape: Pair,
    config: PlanConfig,
    window: Window | None,
    keep: NDArray[np.bool_] | None,
    tissue: NDArray[np.bool_] | None,
) -> tuple[NDArray[np.int64], int]:
    """The grid's origins in ``window`` that ``keep`` and the ``tissue`` mask select, and how
    many the grid had before selection."""
    origins = grid_origins(out_shape, config.out_hw, config.stride_hw, window)
    n_all = len(origins)
    if keep is not None:
        origins = origins[keep]
    if tissue is not None:
        from harness.mask import patches_touching

        origins = origins[patches_touching(tissue, origins, config.out_hw, out_shape)]
    return origins, n_all


def _owned(origins: NDArray[np.int64], chunk_hw: Pair, block: Region) -> NDArray[np.bool_]:
    """Whether each origin's own chunk (the one holding its top-left pixel) is in ``block``."""
    r, c = origins[:, 0] // chunk_hw[0], origins[:, 1] // chunk_hw[1]
    return np.asarray((r >= block.r0) & (r < block.r1) & (c >= block.c0) & (c < block.c1))


def _todo(
    grid: Pair, region: Region | None, done: NDArray[np.bool_] | None
) -> NDArray[np.bool_] | None:
    """Chunks this plan writes (None: every chunk of the output)."""
    if region is None and done is None:
        return None
    todo = region.mask(grid) if region is not None else np.ones(grid[0] * grid[1], dtype=bool)
    if done is not None:
        if done.shape != todo.shape:
            raise ConfigError(f"done covers {done.size} chunks, the grid has {todo.size}")
        todo &= ~done
    return todo


def _distinct(origins: NDArray[np.int64], width: int) -> int:
    """Distinct patches among entries (halo entries repeat their patch)."""
    if len(origins) == 0:
        return 0
    return int(np.unique(origins[:, 0] * (width + 1) + origins[:, 1]).size)
