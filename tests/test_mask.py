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
