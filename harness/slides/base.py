"""The ``Slide`` contract every reader implements, and helpers shared by readers.

Coordinates
-----------
A *box* is ``(x, y, width, height)`` in level-0 pixels. ``read(box, mpp)``
returns the region resampled to ``mpp`` microns per pixel, an ``(h, w, 3)``
uint8 RGB array with ``h = round(height * slide.mpp / mpp)`` and likewise
``w`` (see :func:`output_size`). Parts of the box outside the slide are
padded with white (255, 255, 255), the colour of empty glass, so reads at
the slide edge look like background to tissue detectors and models.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

from harness.errors import SlideError

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

Box = tuple[int, int, int, int]
"""``(x, y, width, height)`` in level-0 pixels."""

PAD_VALUE = 255
"""Value used for pixels outside the slide (white glass)."""


@runtime_checkable
class Slide(Protocol):
    """A whole-slide image that can be read region by region."""

    @property
    def shape(self) -> tuple[int, int]:
        """Level-0 ``(height, width)`` in pixels."""
        ...

    @property
    def mpp(self) -> float:
        """Microns per pixel at level 0."""
        ...

    @property
    def downsamples(self) -> tuple[float, ...]:
        """Downsample factor of each stored level relative to level 0 (first is 1.0)."""
        ...

    def read(self, box: Box, mpp: float | None = None) -> NDArray[np.uint8]:
        """Read ``box`` (level-0 pixels) resampled to ``mpp`` (default: level 0)."""
        ...


def read_into(slide: Slide, box: Box, mpp: float | None, out: NDArray[np.uint8]) -> None:
    """``slide.read(box, mpp)`` written into ``out``, an ``(h, w, 3)`` uint8 array (a batch slot).

    A slide with its own ``read_into`` (one that assembles reads from cached
    blocks) copies its pixels straight into ``out``; any other is read and
    copied. A read of another shape is a :class:`~harness.errors.SlideError`,
    never broadcast into ``out``.
    """
    own = getattr(slide, "read_into", None)
    if own is not None:
        own(box, mpp, out)
    else:
        put(out, slide.read(box, mpp), box, mpp)


def put(out: NDArray[np.uint8], pixels: NDArray[np.uint8], box: Box, mpp: float | None) -> None:
    """``out[...] = pixels`` when the shapes agree; a :class:`~harness.errors.SlideError` if not."""
    if pixels.shape != out.shape:
        raise SlideError(
            f"slide read of {box} at mpp {mpp} gave {pixels.shape}, expected {out.shape}"
        )
    out[...] = pixels


def output_size(box: Box, slide_mpp: float, mpp: float | None) -> tuple[int, int]:
    """Return ``(h, w)`` of the array that ``read(box, mpp)`` produces."""
    _, _, width, height = box
    if mpp is None:
        return height, width
    scale = slide_mpp / mpp
    return max(1, round(height * scale)), max(1, round(width * scale))


@runtime_checkable
class CachedSlide(Slide, Protocol):
    """A slide that keeps a byte-bounded cache of decoded tiles, counted in the run budget."""

    def cache_need(self, band_hw: tuple[int, int]) -> int:
        """Cache bytes for reads sweeping a band of ``band_hw`` level-0 pixels to decode once."""
        ...

    def resize_cache(self, max_bytes: int) -> None:
        """Set the cache capacity (evicting what no longer fits)."""
        ...
