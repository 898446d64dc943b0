"""Final holes of open regions, kept on disk until their region closes.

GeoJSON writes a polygon's exterior ring before its holes, so the holes of a
region cannot be written before the region closes: the tracer
(:mod:`harness.output._regions`) parks the ones that are already final here
instead of in memory. A stroma sheet spanning a slide holds a million nuclei
as holes; they cost disk, not RAM, until its feature is written.

Layout: append-only *segments*, each an unlinked temporary file (a crash
leaves nothing behind; closing it frees the disk) of up to
:data:`SEGMENT_BYTES`. A record is one batch of rings: ``int32`` ring sizes,
then ``int32`` ``x, y`` pairs. Coordinates are whole output pixels (pixel-edge
polygons, their unions and tolerance-0 simplification keep them whole), so
8 bytes a vertex, half of WKB. A segment other than the one being appended to
is closed as soon as no live record is left in it. One shared store (not one
file per region) keeps the open file count at the number of live segments,
however many regions spill.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING

import numpy as np
import shapely

from harness.output.base import OutputError

if TYPE_CHECKING:
    from collections.abc import Iterable
    from pathlib import Path

    from numpy.typing import NDArray

SEGMENT_BYTES = 64 * 2**20
"""Size at which a segment stops growing and the next one starts."""


@dataclass(frozen=True)
class SpillRecord:
    """Where one batch of holes lies, and what it adds up to (area in output px²)."""

    segment: int
    offset: int
    rings: int
    vertices: int
    area: float

    @property
    def nbytes(self) -> int:
        """Bytes of the record on disk."""
        return 4 * self.rings + 8 * self.vertices


class HoleSpill:
    """Batches of hole rings in shared, unlinked temporary files under ``folder``."""

    def __init__(self, folder: Path, segment_bytes: int = SEGMENT_BYTES) -> None:
        self.folder = folder
        self.segment_bytes = segment_bytes
        self._files: dict[int, IO[bytes]] = {}
        self._live: dict[int, int] = {}
        self._current = -1
        self._end = segment_bytes  # forces a first segment on the first put
        self.rings_written = 0
        self.bytes_live = 0
        self.peak_bytes_live = 0

    def put(self, rings: NDArray[np.object_]) -> SpillRecord:
        """Append ``rings`` (LinearRings with whole-pixel coordinates) as one record."""
        xy, index = shapely.get_coordinates(rings, return_index=True)
        coords = xy.astype(np.int32)
        if not np.array_equal(coords, xy):
            raise AssertionError("spilled hole coordinates must be whole output pixels")
        sizes = np.bincount(index, minlength=len(rings)).astype(np.int32)
        blob = sizes.tobytes() + coords.tobytes()
        if self._end + len(blob) > self.segment_bytes and self._end > 0:
            self._new_segment()
        self._write(self._files[self._current], blob, self._end)
        area = float(shapely.area(shapely.polygons(rings)).sum())
        record = SpillRecord(self._current, self._end, len(rings), len(coords), area)
        self._end += len(blob)
        self._live[self._current] += 1
        self.rings_written += len(rings)
        self.bytes_live += record.nbytes
        self.peak_bytes_live = max(self.peak_bytes_live, self.bytes_live)
        return record

    def read(self, record: SpillRecord) -> NDArray[np.object_]:
        """The rings of ``record`` back, as LinearRings."""
        data = os.pread(self._files[record.segment].fileno(), record.nbytes, record.offset)
        if len(data) != record.nbytes:
            raise OutputError(f"spilled holes in {self.folder} were cut short (disk error?)")
        sizes = np.frombuffer(data, np.int32, record.rings)
        xy = np.frombuffer(data, np.int32, offset=4 * record.rings).reshape(-1, 2)
        index = np.repeat(np.arange(record.rings), sizes)
        rings: NDArray[np.object_] = shapely.linearrings(xy.astype(np.float64), indices=index)
        return rings

    def release(self, records: Iterable[SpillRecord]) -> None:
        """Forget ``records``; close every segment left without a live record."""
        for record in records:
            self._live[record.segment] -= 1
            self.bytes_live -= record.nbytes
            if not self._live[record.segment] and record.segment != self._current:
                self._drop(record.segment)

    def close(self) -> None:
        """Close every segment (their disk space is freed: they are unlinked)."""
        for segment in list(self._files):
            self._drop(segment)
        self.bytes_live = 0

    @property
    def open_segments(self) -> int:
        """Segments (open files) held now."""
        return len(self._files)

    def _new_segment(self) -> None:
        if self._current in self._files and not self._live[self._current]:
            self._drop(self._current)
        try:
            # Closed by _drop (when its records are gone) or close(): it outlives this call.
            handle = tempfile.TemporaryFile(  # noqa: SIM115
                dir=self.folder, prefix=".geojson-holes-", buffering=0
            )
        except OSError as exc:
            raise self._error(exc) from exc
        self._current += 1
        self._files[self._current], self._live[self._current], self._end = handle, 0, 0

    def _write(self, handle: IO[bytes], blob: bytes, offset: int) -> None:
        view = memoryview(blob)
        try:
            while view:
                n = os.pwrite(handle.fileno(), view, offset)
                view, offset = view[n:], offset + n
        except OSError as exc:
            raise self._error(exc) from exc

    def _error(self, exc: OSError) -> OutputError:
        return OutputError(f"cannot spill holes to {self.folder}: {exc.strerror or exc}")

    def _drop(self, segment: int) -> None:
        self._files.pop(segment).close()
        self._live.pop(segment, None)
