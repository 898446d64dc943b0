"""OpenSlide sees what write_tiff wrote; OpenSlideSlide reads like TiffSlide."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import openslide
import pytest
import tifffile

from harness.errors import SlideError
from harness.slides import OpenSlideSlide, SyntheticSlide, TiffSlide, open_slide, write_tiff

if TYPE_CHECKING:
    from pathlib import Path


@pytest.fixture(scope="module")
def pyramid(tmp_path_factory: pytest.TempPathFactory) -> Path:
    slide = SyntheticSlide(2100, 2600, mpp=0.25, seed=5)
    path = tmp_path_factory.mktemp("os") / "pyramid.tif"
    return write_tiff(slide, path, compression="deflate", progress=False)


def test_openslide_reports_our_geometry(pyramid: Path) -> None:
    # GIVEN a three-level pyramid written as successive pages
    with openslide.OpenSlide(str(pyramid)) as osr:
        # THEN OpenSlide sees every level and the mpp from the resolution tags
        assert osr.properties[openslide.PROPERTY_NAME_VENDOR] == "generic-tiff"
        assert osr.dimensions == (2600, 2100)
        assert osr.level_count == 3
        assert osr.level_dimensions == ((2600, 2100), (1300, 1050), (650, 525))
        assert float(osr.properties[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(0.25)


@pytest.mark.parametrize(
    ("box", "mpp"),
    [
        pytest.param((0, 0, 700, 500), None, id="level0"),
        pytest.param((512, 256, 800, 600), 0.5, id="level1"),
        pytest.param((0, 0, 2600, 2100), 2.0, id="area-from-level2"),
        pytest.param((2500, 2000, 300, 300), None, id="edge"),
    ],
)
def test_reads_equal_tiffslide(pyramid: Path, box, mpp) -> None:  # type: ignore[no-untyped-def]
    via_openslide = OpenSlideSlide(pyramid)
    via_tifffile = TiffSlide(pyramid)
    assert via_openslide.shape == via_tifffile.shape
    assert via_openslide.mpp == pytest.approx(via_tifffile.mpp)
    assert via_openslide.downsamples == via_tifffile.downsamples
    assert np.array_equal(via_openslide.read(box, mpp), via_tifffile.read(box, mpp))


def test_open_slide_picks_openslide_for_other_suffixes(pyramid: Path, tmp_path: Path) -> None:
    svs = tmp_path / "copy.svs"
    svs.write_bytes(pyramid.read_bytes())
    assert isinstance(open_slide(svs), OpenSlideSlide)


def test_pickles(pyramid: Path) -> None:
    import pickle

    slide = OpenSlideSlide(pyramid)
    copy = pickle.loads(pickle.dumps(slide))
    assert np.array_equal(copy.read((10, 10, 64, 64)), slide.read((10, 10, 64, 64)))


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(SlideError, match="not found"):
        OpenSlideSlide(tmp_path / "missing.svs")
    junk = tmp_path / "junk.svs"
    junk.write_bytes(b"this is not a slide" * 100)
    with pytest.raises(SlideError, match="not a slide format"):
        OpenSlideSlide(junk)
    nores = tmp_path / "nores.svs"
    tifffile.imwrite(nores, np.zeros((64, 64, 3), np.uint8), photometric="rgb", tile=(16, 16))
    with pytest.raises(SlideError, match="no resolution metadata"):
        OpenSlideSlide(nores)
    assert OpenSlideSlide(nores, mpp=0.5).mpp == 0.5
