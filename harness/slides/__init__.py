"""Slides: the ``Slide`` protocol, readers, synthetic slides and the TIFF writer.

Slide specs
-----------
:func:`open_slide` takes either a file path or a virtual *spec*:

* ``path/to/slide.tif`` or ``.tiff``: :class:`TiffSlide`;
* any other path (``.svs``, ``.ndpi``, ``.mrxs``, ...): :class:`OpenSlideSlide`;
* ``synthetic:SIZE`` or ``synthetic:WIDTHxHEIGHT``, optionally followed by
  comma-separated ``key=value`` parameters: :class:`SyntheticSlide`. Keys:
  ``seed`` (int), ``tissue`` (tissue fraction), ``mpp`` (float) and
  ``artefacts`` (``0``/``1``, or names joined by ``+`` such as ``pen+blur``).
  Example: ``synthetic:65536x32768,seed=3,tissue=0.5,mpp=0.25,artefacts=0``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from harness.errors import ConfigError
from harness.slides.base import Box, Slide
from harness.slides.openslide_slide import OpenSlideSlide
from harness.slides.synthetic import ARTEFACTS, SyntheticSlide
from harness.slides.tiff import TiffSlide, write_tiff

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

__all__ = [
    "Box",
    "OpenSlideSlide",
    "Slide",
    "SyntheticSlide",
    "TiffSlide",
    "open_slide",
    "thumbnail",
    "write_tiff",
]

SYNTHETIC_PREFIX = "synthetic:"


def open_slide(spec: str | os.PathLike[str], mpp: float | None = None) -> Slide:
    """Open a slide file or build a virtual slide from a spec (see the module docs).

    Parameters
    ----------
    spec
        A path or a ``synthetic:`` spec.
    mpp
        For files: microns per pixel overriding the file's metadata. For
        synthetic specs: the level-0 mpp unless the spec sets ``mpp=``.
    """
    text = os.fspath(spec)
    if text.startswith(SYNTHETIC_PREFIX):
        return parse_synthetic(text, mpp)
    path = Path(text)
    if path.suffix.lower() in (".tif", ".tiff"):
        return TiffSlide(path, mpp=mpp)
    return OpenSlideSlide(path, mpp=mpp)


def parse_synthetic(spec: str, mpp: float | None = None) -> SyntheticSlide:
    """Build the :class:`SyntheticSlide` a ``synthetic:`` spec describes."""
    size, *params = spec[len(SYNTHETIC_PREFIX) :].split(",")
    width, height = _parse_size(spec, size)
    kwargs: dict[str, object] = {"mpp": 0.5 if mpp is None else mpp}
    for item in params:
        key, sep, value = item.partition("=")
        if not sep or key not in _PARAMS:
            raise ConfigError(
                f"bad parameter {item!r} in {spec!r}; use key=value with keys {', '.join(_PARAMS)}"
            )
        try:
            kwargs[_PARAMS[key]] = _convert(key, value)
        except ValueError as exc:
            raise ConfigError(f"bad value for {key} in {spec!r}: {value!r} ({exc})") from exc
    return SyntheticSlide(height, width, **kwargs)  # type: ignore[arg-type]


_PARAMS = {"seed": "seed", "tissue": "tissue_fraction", "mpp": "mpp", "artefacts": "artefacts"}


def _parse_size(spec: str, size: str) -> tuple[int, int]:
    parts = size.lower().split("x")
    try:
        dims = [int(p) for p in parts]
    except ValueError:
        dims = []
    if len(dims) not in (1, 2) or min(dims) < 1:
        raise ConfigError(
            f"bad synthetic slide size in {spec!r}: expected SIZE or WIDTHxHEIGHT in pixels, "
            "e.g. synthetic:4096 or synthetic:65536x32768"
        )
    return dims[0], dims[-1]


def _convert(key: str, value: str) -> object:
    if key == "seed":
        return int(value)
    if key in ("tissue", "mpp"):
        return float(value)
    return parse_artefacts(value)


def parse_artefacts(value: str) -> bool | tuple[str, ...]:
    """``0``/``false``, ``1``/``true``, or artefact names joined by ``+``."""
    if value.lower() in ("0", "1", "true", "false"):
        return value.lower() in ("1", "true")
    names = tuple(value.split("+"))
    unknown = sorted(set(names) - set(ARTEFACTS))
    if unknown:
        raise ValueError(f"unknown artefacts {unknown}; choose 0, 1 or from {'+'.join(ARTEFACTS)}")
    return names


def thumbnail(slide: Slide, max_side: int = 1024) -> NDArray[np.uint8]:
    """A whole-slide RGB image whose longer side is at most ``max_side`` pixels.

    One coarse read: file readers use their smallest sufficient pyramid level.
    """
    if max_side < 1:
        raise ConfigError(f"max_side must be >= 1, got {max_side}")
    h, w = slide.shape
    scale = max(1.0, max(h, w) / max_side)
    return slide.read((0, 0, w, h), slide.mpp * scale)
