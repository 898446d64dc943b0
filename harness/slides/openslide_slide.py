"""The :class:`~harness.slides.base.Slide` protocol over OpenSlide.

OpenSlide (the openslide-bin wheel provides the library) reads Aperio SVS,
Hamamatsu NDPI, MIRAX MRXS, generic tiled TIFF and more. ``read_region``
returns straight-alpha RGBA, transparent outside the scanned area; this
adapter composites it on white, so outside pixels come back as the white
padding the protocol asks for. Resampling follows
:mod:`harness.slides._resample` (area for integer ratios to a stored level,
nearest otherwise).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import openslide

from harness.errors import ConfigError, SlideError
from harness.slides._resample import composite_on_white, read_resampled

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from harness.slides.base import Box


class OpenSlideSlide:
    """A slide file opened with OpenSlide.

    Parameters
    ----------
    path
        Any format OpenSlide reads.
    mpp
        Microns per pixel, overriding (or supplying missing) ``openslide.mpp-x``.

    Notes
    -----
    Pickles as its arguments and reopens in the new process, or after a fork.
    """

    def __init__(self, path: str | os.PathLike[str], mpp: float | None = None) -> None:
        self._path = Path(path)
        self._mpp_arg = mpp
        self._open()

    @property
    def path(self) -> Path:
        """The slide file."""
        return self._path

    def _open(self) -> None:
        if not self._path.is_file():
            raise SlideError(f"slide file not found: {self._path}")
        try:
            self._osr = openslide.OpenSlide(str(self._path))
        except openslide.OpenSlideUnsupportedFormatError as exc:
            raise SlideError(f"{self._path}: not a slide format OpenSlide reads") from exc
        except openslide.OpenSlideError as exc:
            raise SlideError(f"{self._path}: OpenSlide cannot open it ({exc})") from exc
        self._mpp = self._find_mpp()
        self._pid = os.getpid()

    def _find_mpp(self) -> float:
        if self._mpp_arg is not None:
            if not self._mpp_arg > 0:
                raise ConfigError(f"mpp must be positive, got {self._mpp_arg}")
            return float(self._mpp_arg)
        value = self._osr.properties.get(openslide.PROPERTY_NAME_MPP_X)
        try:
            mpp = float(value) if value is not None else 0.0
        except ValueError:
            mpp = 0.0
        if not mpp > 0:
            raise SlideError(
                f"{self._path} has no resolution metadata (openslide.mpp-x); pass mpp= to set it"
            )
        return mpp

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self._path, "mpp": self._mpp_arg}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"], state["mpp"])  # type: ignore[misc]

    def __repr__(self) -> str:
        return f"OpenSlideSlide({str(self._path)!r}, mpp={self._mpp}, vendor={self.vendor!r})"

    @property
    def vendor(self) -> str:
        """OpenSlide's name for the format (``generic-tiff``, ``aperio``, ...)."""
        return str(self._osr.properties.get(openslide.PROPERTY_NAME_VENDOR, "unknown"))

    @property
    def shape(self) -> tuple[int, int]:
        """Level-0 ``(height, width)`` in pixels."""
        w, h = self._osr.dimensions
        return int(h), int(w)

    @property
    def mpp(self) -> float:
        """Microns per pixel at level 0."""
        return self._mpp

    @property
    def downsamples(self) -> tuple[float, ...]:
        """OpenSlide's downsample of each level."""
        return tuple(float(d) for d in self._osr.level_downsamples)

    @property
    def level_shapes(self) -> tuple[tuple[int, int], ...]:
        """``(height, width)`` of each level."""
        return tuple((int(h), int(w)) for w, h in self._osr.level_dimensions)

    def read(self, box: Box, mpp: float | None = None) -> NDArray[np.uint8]:
        """Read ``box`` at ``mpp`` from the best level; white outside the slide."""
        if self._pid != os.getpid():
            self._open()
        return read_resampled(self._read_level, self.downsamples, self._mpp, box, mpp)

    def _read_level(self, level: int, x: int, y: int, w: int, h: int) -> NDArray[np.uint8]:
        d = self._osr.level_downsamples[level]
        # read_region takes the top-left corner in level-0 pixels and the size in level pixels
        origin = (round(x * d), round(y * d))
        try:
            image = self._osr.read_region(origin, level, (w, h))
        except openslide.OpenSlideError as exc:
            raise SlideError(f"{self._path}: OpenSlide cannot read level {level}: {exc}") from exc
        return composite_on_white(np.asarray(image))
