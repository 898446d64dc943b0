"""One bounded pass over a finished output, feeding every requested export format.

:func:`export` opens a *complete* zarr output (:mod:`harness.output.zarr_store`)
and reads it once, in tiles of whole source chunks in raster order (tile rows
top to bottom, left to right inside a row). Each tile's labels (and
probabilities, when the output has them and a consumer wants them) go to
every :class:`TileConsumer`: one module per format (OME-Zarr, GeoJSON, ...).
Memory is one tile plus what each consumer keeps, never the whole map.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from harness.output.zarr_store import (
    LABELS,
    PROBABILITIES,
    open_output,
    output_array,
    output_meta,
)

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    from numpy.typing import NDArray

    from harness.output.base import Box

DEFAULT_TILE = 1024
"""Tile side of the export pass, in output pixels (rounded to whole source chunks)."""


@dataclass(frozen=True)
class SourceInfo:
    """What an exporter needs to know about the output it reads.

    ``scale`` is level-0 slide pixels per output pixel (``mpp / slide_mpp``):
    multiply output coordinates by it for slide coordinates.
    """

    path: str
    shape: tuple[int, int]
    chunk: tuple[int, int]
    channels: int
    classes: tuple[str, ...]
    mpp: float
    slide_mpp: float
    has_probabilities: bool
    probability_dtype: str | None
    attrs: dict[str, Any]

    @property
    def scale(self) -> float:
        """Level-0 slide pixels per output pixel."""
        return self.mpp / self.slide_mpp


class TileConsumer(Protocol):
    """An export format fed tile by tile, in raster order of tiles.

    Attributes
    ----------
    dest
        Where the finished export lands (what the CLI prints).
    block
        Side the consumer writes in (tiles should be multiples of it, so each
        block arrives whole and nothing waits for the next tile row); ``0``
        when any tile suits it.
    """

    dest: Path
    block: int

    @property
    def wants_probabilities(self) -> bool:
        """Whether :meth:`tile` needs the probabilities (they are read only if someone does)."""
        ...

    def tile(self, box: Box, labels: NDArray[np.uint8], probs: NDArray[Any] | None) -> None:
        """One tile: ``box = (y0, y1, x0, x1)``, labels ``(h, w)``, probs ``(h, w, C)``."""
        ...

    def close(self) -> None:
        """Every tile was given: finish the format's output (pyramids, trailers, renames)."""
        ...

    def abort(self) -> None:
        """The pass failed: remove partial output (never leave a complete-looking file)."""
        ...


def source_info(path: str | Path) -> SourceInfo:
    """Describe a complete output (refuses an incomplete one)."""
    group = open_output(path)
    meta: dict[str, Any] = output_meta(group)
    labels = output_array(group, LABELS)
    probs = output_array(group, PROBABILITIES) if PROBABILITIES in group else None
    classes = tuple(meta.get("classes", ()))
    slide = meta.get("slide", {})
    mpp = float(meta["mpp"])
    return SourceInfo(
        path=str(path),
        shape=(int(labels.shape[0]), int(labels.shape[1])),
        chunk=(int(labels.chunks[0]), int(labels.chunks[1])),
        channels=len(classes),
        classes=classes,
        mpp=mpp,
        slide_mpp=float(slide.get("mpp") or mpp),
        has_probabilities=probs is not None,
        probability_dtype=None if probs is None else str(probs.dtype),
        attrs=meta,
    )


def tiles(info: SourceInfo, tile: int = DEFAULT_TILE) -> list[Box]:
    """Tile boxes of whole source chunks, raster order, clipped to the output."""
    (h, w), (ch, cw) = info.shape, info.chunk
    th, tw = max(ch, tile // ch * ch), max(cw, tile // cw * cw)
    return [
        (y, min(y + th, h), x, min(x + tw, w)) for y in range(0, h, th) for x in range(0, w, tw)
    ]


def export(
    path: str | Path,
    consumers: Sequence[TileConsumer],
    tile: int = DEFAULT_TILE,
    progress: bool = False,
) -> SourceInfo:
    """Read the output at ``path`` once and feed every consumer; abort them all on error."""
    from tqdm import tqdm

    info = source_info(path)
    group = open_output(path)
    labels = output_array(group, LABELS)
    want = info.has_probabilities and any(c.wants_probabilities for c in consumers)
    probs = output_array(group, PROBABILITIES) if want else None
    boxes = tiles(info, tile)
    try:
        for y0, y1, x0, x1 in tqdm(boxes, unit="tile", disable=not progress):
            lab = np.asarray(labels[y0:y1, x0:x1])
            pr = None if probs is None else np.asarray(probs[y0:y1, x0:x1])
            for consumer in consumers:
                consumer.tile((y0, y1, x0, x1), lab, pr if consumer.wants_probabilities else None)
        for consumer in consumers:
            consumer.close()
    except BaseException:
        for consumer in consumers:
            consumer.abort()
        raise
    return info
