"""Decisions on noise fields that do not depend on the window a read happens to cover.

:func:`harness.slides._noise.field` evaluates a field on a read's sample grid
with two small matrix products: fast, but BLAS picks its kernel and its
accumulation order from the matrix shapes, so the last bits of a sample's
float32 value depend on the read's window (measured: the holes field of one
pixel came out 0.64306664 from a 563 x 698 read and 0.6430666 from a 256 x 512
one, from the same four products). A synthetic pixel is made of *decisions*
on field values -- tissue or not (a threshold), hole or not, nucleus present
or not, texture level (the integer part) -- and a decision taken on a value
within rounding of its boundary can then differ between two reads of the same
pixel: 5 pixels in 300 random reads of a 4000 x 3000 slide did.

So each decision is taken on the fast value only where that value lies more
than :func:`tolerance` from the boundary, and otherwise on the *exact* value
of that sample (:func:`field_at`: the same float32 weights and lattice values,
combined in float64 in a fixed order, one sample at a time). The fast value's
error is a few float32 ulps of the field's range; the tolerance is 128 of
them, so wherever the fast and exact values could fall on different sides of a
boundary the exact one decides. Every decision is then the exact value's, a
function of the sample position alone: any two reads agree bitwise, and a
block cache (:mod:`harness.slides._blockcache`) serves the same bytes as a
direct read. About one sample in 10^4 needs the exact value.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from harness.slides._noise import Octave, hash2, mix_key, resolved

if TYPE_CHECKING:
    from collections.abc import Callable

    from numpy.typing import NDArray


def tolerance(octaves: tuple[Octave, ...]) -> float:
    """128 float32 ulps of the largest value the octaves can sum to."""
    return sum(o.weight for o in octaves) * 2.0**-16


def _weights(
    coords: NDArray[np.float64], spacing: float
) -> tuple[NDArray[np.int64], NDArray[np.float32], NDArray[np.float32]]:
    """Lattice cell and float32 smoothstep weights ``(1 - t, t)``, as ``interp_weights`` makes."""
    g = coords / spacing
    cell = np.floor(g)
    t = g - cell
    t = t * t * (3.0 - 2.0 * t)
    return cell.astype(np.int64), (1.0 - t).astype(np.float32), t.astype(np.float32)


def field_at(
    seed: int,
    octaves: tuple[Octave, ...],
    u: NDArray[np.float64],
    v: NDArray[np.float64],
    step: float,
) -> NDArray[np.float64]:
    """The exact field at the points ``(u[k], v[k])``: what :func:`field` approximates.

    Same octaves, band limit, float32 weights and float32 lattice values as
    :func:`~harness.slides._noise.field`; the bilinear sums in float64.
    """
    keep = resolved(octaves, step)
    out = np.full(u.shape, sum(0.5 * o.weight for o in octaves if o not in keep), np.float64)
    for o in keep:
        cy, y0, y1 = _weights(v, o.spacing)
        cx, x0, x1 = _weights(u, o.spacing)
        rows, cols = np.stack([cy, cy + 1])[:, None], np.stack([cx, cx + 1])[None, :]
        if o.wrap:
            rows, cols = rows % o.wrap, cols % o.wrap
        values = hash2(mix_key(seed, o.salt), rows, cols).astype(np.float32)  # (2, 2, n)
        values *= np.float32(o.weight / 2.0**32)
        wy = np.stack([y0, y1]).astype(np.float64)[:, None]
        wx = np.stack([x0, x1]).astype(np.float64)[None, :]
        terms = wy * wx * values
        # An explicit order: the exact value must not depend on how many points ask.
        out += terms[0, 0]
        out += terms[0, 1]
        out += terms[1, 0]
        out += terms[1, 1]
    return out


def where(mask: NDArray[np.bool_]) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    """``np.nonzero`` of a 2-D mask, through the flat index (13x faster for sparse masks)."""
    flat = np.flatnonzero(mask)
    rows, cols = np.divmod(flat, mask.shape[1])
    return rows, cols


def exceeds(
    fast: NDArray[np.float32],
    threshold: float,
    tol: float,
    exact: Callable[[NDArray[np.intp], NDArray[np.intp]], NDArray[np.float64]],
) -> NDArray[np.bool_]:
    """``field > threshold`` per sample, decided on the exact value near the threshold.

    ``exact(rows, cols)`` gives the exact field at those samples of ``fast``.
    """
    thr, margin = np.float32(threshold), np.float32(tol)
    out = fast > thr
    if fast.size == 0 or fast.min() > thr + margin or fast.max() < thr - margin:
        return out  # smooth fields: most reads lie wholly on one side
    rows, cols = where(np.abs(fast - thr) <= margin)
    if rows.size:
        out[rows, cols] = exact(rows, cols) > float(thr)
    return out


def levels(
    fast: NDArray[np.float32],
    tol: float,
    exact: Callable[[NDArray[np.intp], NDArray[np.intp]], NDArray[np.float64]],
) -> NDArray[np.uint8]:
    """The integer part of a non-negative field below 256, decided exactly near integers."""
    out = fast.astype(np.uint8)
    frac = fast - out
    rows, cols = where((frac <= np.float32(tol)) | (frac >= np.float32(1.0 - tol)))
    if rows.size:
        out[rows, cols] = np.floor(exact(rows, cols)).astype(np.uint8)
    return out
