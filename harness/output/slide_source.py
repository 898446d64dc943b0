"""The slide an output was made from, re-opened from its recorded source.

``segment`` records the slide it read in ``attrs["wsi_harness"]["slide"]``:
its shape, mpp, reader type and (newer outputs) ``source``, the path or
``synthetic:`` spec it was opened from. Views that show labels over the
tissue (``render --overlay``, the OME-Zarr parent image of a labels-only
output) re-open it here and read it at the output's own grid.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from harness.errors import HarnessError
from harness.output.base import OutputError

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from harness.output.base import Box
    from harness.slides.base import Slide


def recorded_slide(meta: dict[str, Any]) -> Slide:
    """Open the slide recorded in an output's attributes, or say in one line why not."""
    from harness.slides import open_slide

    slide_meta = meta.get("slide") or {}
    source = slide_meta.get("source")
    if not source:
        raise OutputError(
            "the output does not record its slide source (written before sources were recorded)"
        )
    try:
        slide = open_slide(str(source), mpp=slide_meta.get("mpp"))
    except HarnessError as exc:
        raise OutputError(f"cannot re-open the recorded slide {source!r}: {exc}") from exc
    except OSError as exc:
        raise OutputError(f"cannot re-open the recorded slide {source!r}: {exc}") from exc
    recorded = tuple(slide_meta.get("shape") or slide.shape)
    if tuple(slide.shape) != recorded:
        raise OutputError(
            f"the recorded slide {source!r} is now {slide.shape[0]}x{slide.shape[1]} px, "
            f"the output was made from {recorded[0]}x{recorded[1]}: not the same slide"
        )
    return slide


def read_output_grid(slide: Slide, box: Box, mpp: float, step: int = 1) -> NDArray[np.uint8]:
    """RGB of output pixels ``box = (y0, y1, x0, x1)`` sampled every ``step``, ``(h, w, 3)``.

    Output pixel ``(i, j)`` covers level-0 pixels from ``(i, j) * mpp / slide.mpp``;
    the read is resampled by the slide to ``mpp * step`` and cropped or padded
    (white glass) to exactly the sampled grid's shape.
    """
    y0, y1, x0, x1 = box
    s = mpp / slide.mpp
    level0 = (
        round(x0 * s),
        round(y0 * s),
        max(1, round((x1 - x0) * s)),
        max(1, round((y1 - y0) * s)),
    )
    rgb = slide.read(level0, mpp * step)
    h, w = -(-(y1 - y0) // step), -(-(x1 - x0) // step)
    out = np.full((h, w, 3), 255, np.uint8)
    hh, ww = min(h, rgb.shape[0]), min(w, rgb.shape[1])
    out[:hh, :ww] = rgb[:hh, :ww]
    return out
