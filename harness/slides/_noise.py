"""Seeded value noise evaluated on separable sample grids.

A field is a weighted sum of *octaves*. Each octave hashes its integer lattice
points to values in ``[0, 1)`` and interpolates them with smoothstep weights.
Because the interpolation is separable, a field sampled on a grid of columns
``u`` and rows ``v`` is ``Wy @ V @ Wx.T``: one small matrix product per field,
whatever the number of octaves (their factors are concatenated). That keeps a
256 x 256 region at a handful of BLAS calls instead of per-pixel arithmetic.

Every value is a pure function of ``(key, lattice point)``, so any region is
evaluated alone and overlapping regions agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from numpy.typing import NDArray

_P1, _P2 = np.uint32(0x85EBCA77), np.uint32(0x9E3779B1)
_M1, _M2 = np.uint32(0x7FEB352D), np.uint32(0x846CA68B)
_S15, _S16 = np.uint32(15), np.uint32(16)


def mix_key(seed: int, salt: int) -> int:
    """Combine a slide seed and a per-field salt into one 32-bit hash key."""
    return (seed * 0x27D4EB2F + salt * 0x165667B1 + 0x3C6EF372) & 0xFFFFFFFF


def hash2(key: int, iy: NDArray[np.int64], ix: NDArray[np.int64]) -> NDArray[np.uint32]:
    """32-bit avalanche hash of integer lattice coordinates (broadcasting).

    Array arithmetic in uint32 wraps modulo 2**32 (numpy does not warn for
    arrays), which is exactly the hash's definition.
    """
    h = iy.astype(np.uint32) * _P1 + ix.astype(np.uint32) * _P2
    h += np.uint32(key)
    h ^= h >> _S16
    h *= _M1
    h ^= h >> _S15
    h *= _M2
    h ^= h >> _S16
    return h


@dataclass(frozen=True)
class Octave:
    """One lattice of value noise.

    Attributes
    ----------
    spacing
        Lattice spacing in level-0 pixels.
    weight
        Multiplier of the octave's ``[0, 1)`` values in the field sum.
    salt
        Distinguishes this octave's lattice values from every other's.
    wrap
        If positive, lattice indices repeat with this period (a tileable octave).
    """

    spacing: float
    weight: float
    salt: int
    wrap: int = 0


def interp_weights(coords: NDArray[np.float64], spacing: float) -> tuple[NDArray[np.float32], int]:
    """Smoothstep interpolation matrix from lattice points to sorted ``coords``.

    Returns
    -------
    tuple
        ``(W, first)``: ``W[i, k]`` is the weight of lattice point
        ``first + k`` at ``coords[i]``; every row has two entries summing to 1.
    """
    g = coords / spacing
    cell = np.floor(g)
    t = g - cell
    t = t * t * (3.0 - 2.0 * t)
    first = int(cell[0])
    col = (cell - first).astype(np.intp)
    k = int(col[-1]) + 2
    weights = np.zeros((coords.size, k), dtype=np.float32)
    flat = weights.reshape(-1)
    col += np.arange(0, coords.size * k, k)
    flat[col] = 1.0 - t
    flat[col + 1] = t
    return weights, first


def resolved(octaves: tuple[Octave, ...], step: float) -> tuple[Octave, ...]:
    """Octaves whose lattice is coarse enough to sample at ``step`` pixels without aliasing."""
    return tuple(o for o in octaves if o.spacing >= 2.0 * step)


def field(
    seed: int,
    octaves: tuple[Octave, ...],
    u: NDArray[np.float64],
    v: NDArray[np.float64],
    step: float,
) -> NDArray[np.float32]:
    """Sample a noise field on the grid ``v x u`` (rows x columns), shape ``(len(v), len(u))``.

    Octaves finer than twice the sampling ``step`` are band-limited away: they
    contribute their mean (half their weight), so coarse reads are smooth and
    keep the field's overall level.
    """
    keep = resolved(octaves, step)
    constant = sum(0.5 * o.weight for o in octaves if o not in keep)
    if not keep:
        return np.full((v.size, u.size), constant, dtype=np.float32)
    lefts, rights = [], []
    for octave in keep:
        wy, fy = interp_weights(v, octave.spacing)
        wx, fx = interp_weights(u, octave.spacing)
        iy = np.arange(fy, fy + wy.shape[1], dtype=np.int64)[:, None]
        ix = np.arange(fx, fx + wx.shape[1], dtype=np.int64)[None, :]
        if octave.wrap:
            iy, ix = iy % octave.wrap, ix % octave.wrap
        values = hash2(mix_key(seed, octave.salt), iy, ix).astype(np.float32)
        values *= np.float32(octave.weight / 2.0**32)
        lefts.append(_product(wy, values))
        rights.append(wx)
    left = np.concatenate(lefts, axis=1) if len(lefts) > 1 else lefts[0]
    right = np.concatenate(rights, axis=1) if len(rights) > 1 else rights[0]
    out = _product(left, right.T)
    if constant:
        out += np.float32(constant)
    return out


_SERIAL_MNK = 262_144  # OpenBLAS runs a GEMM single-threaded at or below m * n * k = 4 * 65536


def _product(left: NDArray[np.float32], right: NDArray[np.float32]) -> NDArray[np.float32]:
    """``left @ right`` in row blocks small enough that BLAS does not spawn threads.

    These products are tiny; a threaded GEMM spends far longer waking and
    synchronising threads (badly so on a loaded machine) than computing.
    """
    m, k = left.shape
    n = right.shape[1]
    out = np.empty((m, n), dtype=np.float32)
    rows = max(1, _SERIAL_MNK // max(1, n * k))
    for top in range(0, m, rows):
        np.matmul(left[top : top + rows], right, out=out[top : top + rows])
    return out


def periodic_tile(seed: int, octave: Octave) -> NDArray[np.float32]:
    """One period of a wrapping octave at integer pixels, tiled 2 x 2.

    Any ``h x w`` window with ``h, w <= period`` is then a slice (a view) of
    the result, which is how full-resolution reads get the finest octave for free.
    """
    period = round(octave.spacing * octave.wrap)
    coords = np.arange(period, dtype=np.float64)
    one = field(seed, (octave,), coords, coords, 1.0)
    return np.tile(one, (2, 2))
