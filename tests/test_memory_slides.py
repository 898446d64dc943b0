"""Memory gates: writing a pyramidal TIFF takes O(tile) memory, whatever the slide size.

Run with ``pytest --memray -m memory``. ``limit_memory`` measures the heap
high-water mark of the test body only, so slides are built (and their lazy
texture tile warmed) in fixtures, and the limit is the same at every size.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from harness.slides import SyntheticSlide, TiffSlide, write_tiff

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.memory

SIZES = [pytest.param(2048, id="2k"), pytest.param(4096, id="4k-4x-area")]


@pytest.fixture
def slide(request: pytest.FixtureRequest) -> SyntheticSlide:
    side = request.param
    slide = SyntheticSlide(side, side, seed=1, artefacts=True)
    slide.read((0, 0, 256, 256))  # builds the grain tile outside the measured body
    return slide


@pytest.mark.limit_memory("12 MB")
@pytest.mark.parametrize("slide", SIZES, indirect=True)
def test_write_tiff_memory_does_not_grow_with_area(slide: SyntheticSlide, tmp_path: Path) -> None:
    write_tiff(slide, tmp_path / "s.tif", compression="jpeg", progress=False)


@pytest.fixture
def written(request: pytest.FixtureRequest, tmp_path: Path) -> TiffSlide:
    side = request.param
    path = write_tiff(SyntheticSlide(side, side, seed=2), tmp_path / "r.tif", progress=False)
    return TiffSlide(path, cache_bytes=4 << 20)


@pytest.mark.limit_memory("12 MB")
@pytest.mark.parametrize("written", SIZES, indirect=True)
def test_tiff_reads_stay_within_the_cache_bound(written: TiffSlide) -> None:
    # GIVEN a 4 MiB tile cache; WHEN every 512 x 512 patch at stride 256 is read
    h, w = written.shape
    for y in range(0, h, 256):
        for x in range(0, w, 256):
            written.read((x, y, 512, 512))
    # THEN the cache honoured its bound
    assert written.cache.nbytes <= 4 << 20
