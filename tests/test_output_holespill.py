"""The hole spill: exact round trip, segments freed when their records go, one-line errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import shapely

from harness.output import OutputError
from harness.output._holespill import HoleSpill


def _squares(n: int, offset: int = 0) -> np.ndarray:
    """``n`` unit-ish square rings with whole-pixel corners, as a LinearRing array."""
    x = np.arange(n) * 3 + offset
    boxes = shapely.box(x, 0, x + 1 + np.arange(n) % 2, 2)
    return shapely.get_exterior_ring(boxes)


def _open_fds() -> int:
    return len(list(Path("/proc/self/fd").iterdir()))


def test_rings_come_back_exactly(tmp_path) -> None:
    spill = HoleSpill(tmp_path)
    a, b = _squares(5), _squares(3, offset=100)
    ra, rb = spill.put(a), spill.put(b)
    assert shapely.equals_exact(spill.read(rb), b, tolerance=0).all()
    assert shapely.equals_exact(spill.read(ra), a, tolerance=0).all()
    assert ra.area == pytest.approx(float(shapely.area(shapely.polygons(a)).sum()))
    assert spill.rings_written == 8 and spill.bytes_live == ra.nbytes + rb.nbytes
    spill.close()
    assert list(tmp_path.iterdir()) == []  # unlinked from the start


def test_segments_close_once_nothing_lives_in_them(tmp_path) -> None:
    # GIVEN a store whose segments hold about two records each
    spill = HoleSpill(tmp_path, segment_bytes=2 * _squares(10).size * 40)
    before = _open_fds()
    records = [spill.put(_squares(10, offset=k)) for k in range(8)]
    held = spill.open_segments
    assert held >= 3 and _open_fds() == before + held
    # WHEN all but the last record are released
    spill.release(records[:-1])
    # THEN only the segment being appended to stays open, and the last record reads back
    assert spill.open_segments == 1 and _open_fds() == before + 1
    assert shapely.equals_exact(spill.read(records[-1]), _squares(10, offset=7), tolerance=0).all()
    assert spill.peak_bytes_live == 8 * records[0].nbytes > spill.bytes_live
    spill.close()
    assert _open_fds() == before


def test_fractional_coordinates_are_refused(tmp_path) -> None:
    spill = HoleSpill(tmp_path)
    ring = shapely.get_exterior_ring(shapely.box(0, 0, 1.5, 1))
    with pytest.raises(AssertionError, match="whole output pixels"):
        spill.put(np.array([ring]))
    spill.close()


def test_an_unwritable_folder_is_one_line(tmp_path) -> None:
    spill = HoleSpill(Path(tmp_path / "gone"))
    with pytest.raises(OutputError, match="cannot spill holes") as caught:
        spill.put(_squares(2))
    assert "\n" not in str(caught.value)
