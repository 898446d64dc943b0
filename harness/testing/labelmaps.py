"""Labels-only outputs written straight from a known label map, for export tests and studies.

An export reads a finished output (:mod:`harness.output.zarr_store`); running
``segment()`` to get one is slow at 64k (10+ minutes) and leaves the label map
to the model. :func:`write_label_output` writes the real layout through
:meth:`ZarrStore.create <harness.output.zarr_store.ZarrStore.create>` (a zarr
v3 group whose ``labels`` array is uint8, fill
:data:`~harness.output.NO_LABEL`, no probabilities, ``complete`` set last) from
an array or from a function of the box, band by band, so a 64k ground-truth
output costs one band of memory; :func:`synthetic_labels` is such a function
for a :class:`~harness.slides.SyntheticSlide`'s ground truth.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from harness.output.base import OutputError
from harness.output.zarr_store import ZarrStore

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from numpy.typing import NDArray

    from harness.slides.synthetic import SyntheticSlide


def write_label_output(
    path: str | Path,
    labels: NDArray[np.uint8] | Callable[[tuple[int, int, int, int]], NDArray[np.uint8]],
    *,
    shape: tuple[int, int] | None = None,
    chunk: int | tuple[int, int] = 256,
    classes: Sequence[str] = ("background", "stroma", "nuclei"),
    mpp: float = 0.5,
    slide_mpp: float | None = None,
    band_rows: int | None = None,
    meta: dict[str, Any] | None = None,
) -> Path:
    """Write a complete labels-only output at ``path`` (which must not exist).

    Parameters
    ----------
    labels
        The whole ``(H, W)`` map, or ``labels(box)`` returning the map of
        ``box = (y0, y1, x0, x1)`` (called once per band of whole chunk rows);
        then ``shape`` is required.
    chunk
        Chunk side(s) of the ``labels`` array (the plan's output chunk).
    mpp, slide_mpp
        Processing and level-0 resolution; their ratio is the export scale.
    band_rows
        Rows per write (a multiple of the chunk height); default one chunk row.
    meta
        Extra entries for the format record (model, plan, slide, ...).
    """
    if callable(labels):
        if shape is None:
            raise ValueError("shape is required when labels is a function of the box")
        h, w = shape
    else:
        h, w = labels.shape
    path = Path(path)
    if path.exists():
        raise OutputError(f"{path} already exists")
    ch, cw = (chunk, chunk) if isinstance(chunk, int) else chunk
    rows = ch if band_rows is None else max(ch, band_rows // ch * ch)
    level0 = slide_mpp or mpp
    size = [round(h * mpp / level0), round(w * mpp / level0)]
    slide = {"shape": size, "mpp": level0, "type": "ground-truth"}
    record = {"mpp": mpp, "classes": list(classes), "model": "ground-truth", "slide": slide}
    store = ZarrStore.create(path, (h, w), (ch, cw), len(classes), {**record, **(meta or {})},
                             probabilities=False)  # fmt: skip
    for y in range(0, h, rows):
        y1 = min(y + rows, h)
        band = labels((y, y1, 0, w)) if callable(labels) else labels[y:y1]
        store.labels[y:y1] = np.asarray(band, dtype=np.uint8)
    store.mark_complete({})
    return path


def synthetic_labels(
    slide: SyntheticSlide, step: int = 1024
) -> Callable[[tuple[int, int, int, int]], NDArray[np.uint8]]:
    """``labels(box)`` of ``slide``'s ground truth at its own resolution, ``step`` columns a call.

    Reading a band ``step`` columns at a time keeps the synthetic model's
    float64 fields to a ``rows x step`` window, whatever the slide width.
    """

    def labels(box: tuple[int, int, int, int]) -> NDArray[np.uint8]:
        y0, y1, x0, x1 = box
        out = np.empty((y1 - y0, x1 - x0), np.uint8)
        for x in range(x0, x1, step):
            x_end = min(x + step, x1)
            out[:, x - x0 : x_end - x0] = slide.labels((x, y0, x_end - x, y1 - y0))
        return out

    return labels
