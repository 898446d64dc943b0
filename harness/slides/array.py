"""An in-memory slide over a numpy RGB array (small images, tests, benchmarks)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from harness.errors import SlideError
from harness.slides.base import PAD_VALUE, Box, output_size

if TYPE_CHECKING:
    from numpy.typing import NDArray


class ArraySlide:
    """The :class:`~harness.slides.base.Slide` protocol over an ``(H, W, 3)`` uint8 array.

    Reads at another mpp use nearest-neighbour sampling of pixel centres.
    """

    def __init__(self, image: NDArray[np.uint8], mpp: float = 0.5) -> None:
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise SlideError(
                f"ArraySlide needs an (H, W, 3) uint8 array, got {image.shape} {image.dtype}"
            )
        if not mpp > 0:
            raise SlideError(f"mpp must be positive, got {mpp}")
        self.image, self._mpp = image, float(mpp)

    @property
    def shape(self) -> tuple[int, int]:
        """Level-0 ``(height, width)``."""
        return int(self.image.shape[0]), int(self.image.shape[1])

    @property
    def mpp(self) -> float:
        """Microns per pixel."""
        return self._mpp

    @property
    def downsamples(self) -> tuple[float, ...]:
        """A single level."""
        return (1.0,)

    def read(self, box: Box, mpp: float | None = None) -> NDArray[np.uint8]:
        """Read ``box`` at ``mpp``, white outside the image."""
        x, y, w, h = box
        oh, ow = output_size(box, self._mpp, mpp)
        ys = y + ((np.arange(oh) + 0.5) * h / oh).astype(np.int64)
        xs = x + ((np.arange(ow) + 0.5) * w / ow).astype(np.int64)
        out = np.full((oh, ow, 3), PAD_VALUE, dtype=np.uint8)
        vy = (ys >= 0) & (ys < self.shape[0])
        vx = (xs >= 0) & (xs < self.shape[1])
        out[np.ix_(vy, vx)] = self.image[np.ix_(ys[vy], xs[vx])]
        return out
