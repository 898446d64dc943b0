"""Pyramidal TIFF writer and TiffSlide reader: round trips, metadata, cache and bad files."""

from __future__ import annotations

import os
import pickle
import shutil
from typing import TYPE_CHECKING

import numpy as np
import pytest
import tifffile
from PIL import Image

from harness.errors import ConfigError, SlideError
from harness.slides import SyntheticSlide, TiffSlide, open_slide, write_tiff
from harness.slides.base import read_into

if TYPE_CHECKING:
    from pathlib import Path

SHAPE = (1100, 1500)  # not a multiple of the tile: exercises partial edge tiles


@pytest.fixture(scope="module")
def source() -> SyntheticSlide:
    return SyntheticSlide(*SHAPE, seed=11, artefacts=True)


@pytest.fixture(scope="module")
def written(source: SyntheticSlide, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("tiff")
    return {
        c: write_tiff(source, folder / f"s_{c}.tif", compression=c, progress=False)
        for c in ("none", "deflate", "jpeg")
    }


@pytest.mark.parametrize(
    "compression", [pytest.param("none", id="none"), pytest.param("deflate", id="deflate")]
)
def test_lossless_round_trip_is_bitwise(source, written, compression: str) -> None:  # type: ignore[no-untyped-def]
    # GIVEN a slide written losslessly
    slide = TiffSlide(written[compression])
    box = (0, 0, SHAPE[1], SHAPE[0])
    # THEN level 0 and the half-resolution level read back exactly as the source renders them
    assert np.array_equal(slide.read(box), source.read(box))
    assert np.array_equal(slide.read(box, mpp=1.0), source.read(box, mpp=1.0))
    assert np.array_equal(slide.read((256, 128, 700, 500)), source.read((256, 128, 700, 500)))


def test_jpeg_round_trip_is_close(source, written) -> None:  # type: ignore[no-untyped-def]
    slide = TiffSlide(written["jpeg"])
    box = (0, 0, SHAPE[1], SHAPE[0])
    error = np.abs(slide.read(box).astype(np.int16) - source.read(box)).mean()
    assert error < 3.0  # quality 90 measures about 1.5 grey levels


def test_pyramid_metadata(written) -> None:  # type: ignore[no-untyped-def]
    # GIVEN the default pyramid (halve until the longer side is at most 1024)
    slide = TiffSlide(written["deflate"])
    assert slide.shape == SHAPE and slide.mpp == pytest.approx(0.5)
    assert slide.level_shapes == ((1100, 1500), (550, 750))
    assert slide.downsamples == (1.0, 2.0)
    with tifffile.TiffFile(written["deflate"]) as tif:
        pages = list(tif.pages)
        assert len(pages) == 2  # successive top-level pages, not SubIFDs
        assert pages[0].resolutionunit.name == "CENTIMETER"
        assert pages[1].resolution[0] == pytest.approx(1e4 / 1.0)
        assert pages[0].tilelength == 256


def test_reads_between_levels_use_the_finer_level(source, written) -> None:  # type: ignore[no-untyped-def]
    slide = TiffSlide(written["none"])
    image = slide.read((0, 0, 1000, 1000), mpp=0.75)  # between level 0 (0.5) and level 1 (1.0)
    assert image.shape == (667, 667, 3)
    # nearest neighbour of level 0: pixel j comes from floor((j + 0.5) * 1.5)
    full = source.read((0, 0, 1000, 1000))
    idx = np.floor((np.arange(667) + 0.5) * 1.5).astype(int)
    assert np.array_equal(image, full[np.ix_(idx, idx)])


def test_area_downsampling_from_a_level(source, written) -> None:  # type: ignore[no-untyped-def]
    slide = TiffSlide(written["none"])
    level1 = slide.read((0, 0, 1024, 1024), mpp=1.0)
    quarter = slide.read((0, 0, 1024, 1024), mpp=2.0)
    blocks = level1.reshape(256, 2, 256, 2, 3).astype(np.uint32).sum(axis=(1, 3))
    assert np.array_equal(quarter, ((blocks + 2) // 4).astype(np.uint8))


@pytest.mark.parametrize(
    ("box", "mpp"),
    [
        pytest.param((300, 200, 256, 256), 0.5, id="level-0-inside"),
        pytest.param((1400, 1000, 256, 256), 0.5, id="level-0-over-the-corner"),
        pytest.param((-300, -300, 200, 200), 0.5, id="off-the-slide"),
        pytest.param((0, 0, 512, 512), 1.0, id="level-1-as-stored"),
        pytest.param((0, 0, 1000, 1000), 0.75, id="resampled"),
        pytest.param((0, 0, 1024, 1024), 2.0, id="area-downsampled"),
    ],
)
def test_read_into_a_slot_equals_read(written, box, mpp: float) -> None:  # type: ignore[no-untyped-def]
    # GIVEN a slot of a batch, dirty from a previous patch (the loader reuses its ring)
    slide = TiffSlide(written["jpeg"])
    expect = TiffSlide(written["jpeg"]).read(box, mpp)
    slot = np.full((2, *expect.shape), 7, dtype=np.uint8)
    # WHEN the read is written into it
    read_into(slide, box, mpp, slot[0])
    # THEN it holds exactly the read's pixels (glass where the box leaves the slide)
    assert np.array_equal(slot[0], expect)
    assert (slot[1] == 7).all()


def test_outside_is_white(written) -> None:  # type: ignore[no-untyped-def]
    slide = TiffSlide(written["jpeg"])
    image = slide.read((SHAPE[1] - 10, -5, 40, 30))
    assert (image[:5] == 255).all() and (image[:, 10:] == 255).all()


def test_tile_cache_decodes_each_tile_once_and_stays_bounded(written) -> None:  # type: ignore[no-untyped-def]
    # GIVEN a cache that holds two 256 x 256 RGB tiles
    slide = TiffSlide(written["jpeg"], cache_bytes=2 * 256 * 256 * 3)
    # WHEN the same tile region is read twice
    slide.read((10, 10, 100, 100))
    slide.read((20, 20, 100, 100))
    # THEN the second read is a hit
    assert (slide.cache.misses, slide.cache.hits) == (1, 1)
    slide.read((0, 0, 1024, 1024))
    assert slide.cache.nbytes <= 2 * 256 * 256 * 3


def test_pickles_and_reopens_after_a_fork(written) -> None:  # type: ignore[no-untyped-def]
    slide = TiffSlide(written["deflate"])
    box = (300, 300, 200, 200)
    copy = pickle.loads(pickle.dumps(slide))
    assert np.array_equal(copy.read(box), slide.read(box))
    # GIVEN the object believes it was opened by another process (as after fork)
    slide._pid = -1
    # THEN the next read reopens the file with its own descriptor
    assert np.array_equal(slide.read(box), copy.read(box))
    assert slide._pid == os.getpid()


def test_rgba_is_composited_on_white(tmp_path: Path) -> None:
    rgba = np.zeros((64, 64, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[:, :32, 3] = 255  # left half opaque red-ish, right half transparent
    path = tmp_path / "rgba.tif"
    tifffile.imwrite(
        path,
        rgba,
        photometric="rgb",
        tile=(32, 32),
        extrasamples=["unassalpha"],
        resolution=(20000, 20000),
        resolutionunit="CENTIMETER",
    )
    image = TiffSlide(path).read((0, 0, 64, 64))
    assert image.shape == (64, 64, 3)
    assert (image[:, :32] == (200, 0, 0)).all() and (image[:, 32:] == 255).all()


def _float_tiff(path: Path) -> Path:
    tifffile.imwrite(
        path,
        np.zeros((32, 32, 3), np.float32),
        photometric="rgb",
        resolution=(1e4, 1e4),
        resolutionunit="CENTIMETER",
    )
    return path


def _png_as_tif(path: Path) -> Path:
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path, format="PNG")
    return path


def _truncated(path: Path, source: Path) -> Path:
    data = source.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _no_resolution(path: Path) -> Path:
    tifffile.imwrite(path, np.zeros((32, 32, 3), np.uint8), photometric="rgb", tile=(16, 16))
    return path


@pytest.mark.parametrize(
    ("make", "match"),
    [
        pytest.param(lambda p, s: p, "not found", id="missing"),
        pytest.param(lambda p, s: _png_as_tif(p), "not a readable TIFF", id="png-renamed"),
        pytest.param(lambda p, s: _truncated(p, s), "truncated", id="truncated"),
        pytest.param(lambda p, s: _float_tiff(p), "RGB or RGBA uint8", id="float32"),
        pytest.param(lambda p, s: _no_resolution(p), "no resolution metadata", id="no-resolution"),
    ],
)
def test_bad_files_give_clear_slide_errors(tmp_path: Path, written, make, match: str) -> None:  # type: ignore[no-untyped-def]
    path = make(tmp_path / "bad.tif", written["none"])
    with pytest.raises(SlideError, match=match):
        open_slide(path)


def test_mpp_argument_supplies_missing_resolution(tmp_path: Path) -> None:
    slide = TiffSlide(_no_resolution(tmp_path / "nores.tif"), mpp=0.25)
    assert slide.mpp == 0.25 and slide.read((0, 0, 32, 32)).shape == (32, 32, 3)


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"tile": 100}, id="tile"),
        pytest.param({"compression": "lzma"}, id="compression"),
        pytest.param({"levels": 0}, id="levels"),
        pytest.param({"quality": 0}, id="quality"),
    ],
)
def test_bad_writer_arguments(tmp_path: Path, kwargs) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError):
        write_tiff(SyntheticSlide(64, 64), tmp_path / "x.tif", progress=False, **kwargs)
    assert not list(tmp_path.iterdir())


def test_auto_levels_stop_near_1024(tmp_path: Path) -> None:
    path = write_tiff(SyntheticSlide(300, 4100), tmp_path / "wide.tif", tile=512, progress=False)
    assert TiffSlide(path).level_shapes == ((300, 4100), (150, 2050), (75, 1025), (38, 513))
    shutil.rmtree(tmp_path)


def test_fit_cache_shrinks_to_the_band_and_travels_with_pickles(written) -> None:  # type: ignore[no-untyped-def]
    # GIVEN a slide opened with a large cache (256 px tiles)
    slide = TiffSlide(written["jpeg"], cache_bytes=64 << 20)
    # WHEN fitted to a 384 x 1000 px band
    got = slide.fit_cache((384, 1000))
    # THEN it holds whole tiles over the band plus one each way, and no more
    assert got == (2 + 1) * 256 * (4 + 1) * 256 * 3 == slide.cache.max_bytes
    slide.read((0, 0, 1500, 1100))
    assert slide.cache.nbytes <= got
    # AND a process that unpickles the slide (a loader worker) gets the same bound
    assert pickle.loads(pickle.dumps(slide)).cache.max_bytes == got
    # AND fitting never grows the cache past what it was opened with
    assert TiffSlide(written["jpeg"], cache_bytes=1000).fit_cache((4096, 4096)) == 1000
