"""Tissue masks: arrays, image files, auto, and their errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from harness.errors import ConfigError
from harness.mask import auto_mask, patches_touching, resolve_mask
from harness.slides.array import ArraySlide


@pytest.fixture
def slide() -> ArraySlide:
    img = np.full((400, 600, 3), 242, np.uint8)
    img[100:200, 300:500] = (225, 140, 180)  # a pink tissue block
    return ArraySlide(img, mpp=0.5)


def test_auto_mask_finds_the_tissue_block(slide: ArraySlide) -> None:
    mask = auto_mask(slide)
    ys, xs = np.nonzero(mask)
    h, w = mask.shape
    assert 0.2 < ys.min() / h < 0.3 and 0.45 < ys.max() / h < 0.55
    assert 0.45 < xs.min() / w < 0.55 and 0.8 < xs.max() / w < 0.87


def test_mask_image_file_is_read(slide: ArraySlide, tmp_path) -> None:
    arr = np.zeros((40, 60), np.uint8)
    arr[10:20, 30:50] = 255
    Image.fromarray(arr).save(tmp_path / "m.png")
    mask = resolve_mask(str(tmp_path / "m.png"), slide)
    assert mask is not None and mask.sum() == 200


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        pytest.param(np.ones((40, 40), bool), "aspect ratio", id="wrong-aspect"),
        pytest.param(np.zeros((40, 60), bool), "no tissue", id="empty"),
        pytest.param(np.ones((4, 6, 2, 2), bool), "2-D", id="not-2d"),
        pytest.param(np.full((40, 60), 7), "boolean", id="not-boolean"),
        pytest.param("/nonexistent/mask.png", "does not exist", id="missing-file"),
    ],
)
def test_bad_masks_are_refused(slide: ArraySlide, spec, message) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve_mask(spec, slide)


def test_not_an_image_is_refused(slide: ArraySlide, tmp_path) -> None:
    (tmp_path / "m.png").write_text("not an image")
    with pytest.raises(ConfigError, match="not a readable image"):
        resolve_mask(str(tmp_path / "m.png"), slide)


def test_patch_touching_is_exact_at_mask_pixel_edges() -> None:
    mask = np.zeros((10, 10), bool)
    mask[5, 5] = True  # covers output pixels 50..59 in both axes
    origins = np.array([[0, 0], [40, 40], [50, 50], [60, 60], [45, 59]])
    keep = patches_touching(mask, origins, (10, 10), (100, 100))
    assert keep.tolist() == [False, False, True, False, True]


def _block(dtype=np.uint8, value=255) -> np.ndarray:
    arr = np.zeros((40, 60), dtype)
    arr[10:20, 30:50] = value
    return arr


def test_alpha_is_not_a_colour_transparent_and_opaque_black_are_not_tissue(
    slide: ArraySlide, tmp_path
) -> None:
    # GIVEN an RGBA mask: the block opaque white, opaque black elsewhere, one transparent row
    rgba = np.zeros((40, 60, 4), np.uint8)
    rgba[..., 3] = 255
    rgba[10:20, 30:50, :3] = 255
    rgba[15, :, 3] = 0  # transparent: never tissue, whatever its colour
    Image.fromarray(rgba, "RGBA").save(tmp_path / "m.png")
    mask = resolve_mask(str(tmp_path / "m.png"), slide)
    # THEN only the opaque non-black pixels are tissue
    assert mask is not None and mask.sum() == 200 - 20 and not mask[15].any()


def test_nan_in_a_float_mask_is_not_tissue(slide: ArraySlide, tmp_path) -> None:
    arr = _block(np.float32, 1.0)
    arr[:5] = np.nan
    Image.fromarray(arr, "F").save(tmp_path / "m.tiff")
    mask = resolve_mask(str(tmp_path / "m.tiff"), slide)
    assert mask is not None and mask.sum() == 200


@pytest.mark.parametrize("dtype", [bool, np.uint8, np.float64])
def test_npy_masks_are_read_by_the_same_rules(slide: ArraySlide, tmp_path, dtype) -> None:
    arr = _block(dtype, 1)
    if arr.dtype.kind == "f":
        arr[0] = np.nan
    np.save(tmp_path / "m.npy", arr)
    mask = resolve_mask(str(tmp_path / "m.npy"), slide)
    assert mask is not None and mask.sum() == 200
    np.save(tmp_path / "bad.npy", np.ones((2, 40, 60)))
    with pytest.raises(ConfigError, match="2-D"):
        resolve_mask(str(tmp_path / "bad.npy"), slide)


def test_a_mask_beyond_pils_bomb_guard_is_read(tmp_path) -> None:
    # GIVEN a 1-bit mask of 100 Mpx, over PIL's 89 Mpx decompression-bomb limit
    side = 10_000
    Image.new("1", (side, side), 0).save(tmp_path / "big.png")
    from harness.mask import load_mask_image

    # THEN it is read, and PIL's guard is back in place afterwards
    assert load_mask_image(tmp_path / "big.png").shape == (side, side)
    assert Image.MAX_IMAGE_PIXELS == 178956970 // 2


def test_palette_masks_are_read_by_colour_and_transparency(slide: ArraySlide, tmp_path) -> None:
    # GIVEN a palette mask whose index 0 is black and index 1 white: the block is index 1
    indices = np.zeros((40, 60), np.uint8)
    indices[10:20, 30:50] = 1
    image = Image.fromarray(indices, "P")
    image.putpalette([0, 0, 0, 255, 255, 255])
    image.save(tmp_path / "m.png")
    mask = resolve_mask(str(tmp_path / "m.png"), slide)
    assert mask is not None and mask.sum() == 200
    # WHEN index 0 is white and index 1 black, the colours (not the indices) decide
    image.putpalette([255, 255, 255, 0, 0, 0])
    image.save(tmp_path / "inverse.png")
    mask = resolve_mask(str(tmp_path / "inverse.png"), slide)
    assert mask is not None and mask.sum() == 40 * 60 - 200
    # AND an index marked transparent is not tissue, though white like the block's
    image.putpalette([255, 255, 255, 255, 255, 255])
    image.save(tmp_path / "transparent.png", transparency=0)
    mask = resolve_mask(str(tmp_path / "transparent.png"), slide)
    assert mask is not None and mask.sum() == 200 and mask[10:20, 30:50].all()
