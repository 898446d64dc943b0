"""Tissue masks: where patches are worth running.

A mask is a 2-D boolean array covering the whole slide at any (low)
resolution with the slide's aspect ratio. A patch runs when its *output* box
touches at least one mask pixel. Masks come as an array, an image file (any
non-zero pixel is tissue), or ``"auto"``: a coarse read of the slide, tissue
where a pixel is saturated or dark (H&E on white glass), dilated by one pixel.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from harness.errors import ConfigError

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from harness.plan import PlanConfig
    from harness.slides.base import Slide

AUTO_SIDE = 1024  # longest side of the coarse read for "auto"
SATURATION_MIN = 20  # max-min over RGB; glass is grey-white (< 10)
BRIGHTNESS_MAX = 200  # mean RGB; glass is > 230


def auto_mask(slide: Slide) -> NDArray[np.bool_]:
    """Tissue mask from a coarse read of the whole slide."""
    h, w = slide.shape
    mpp = slide.mpp * max(1.0, max(h, w) / AUTO_SIDE)
    rgb = slide.read((0, 0, w, h), mpp).astype(np.int16)
    sat = rgb.max(axis=2) - rgb.min(axis=2)
    tissue = (sat > SATURATION_MIN) | (rgb.mean(axis=2) < BRIGHTNESS_MAX)
    return _dilate(tissue)


def _dilate(mask: NDArray[np.bool_]) -> NDArray[np.bool_]:
    out = mask.copy()
    out[1:] |= mask[:-1]
    out[:-1] |= mask[1:]
    out[:, 1:] |= mask[:, :-1]
    out[:, :-1] |= mask[:, 1:]
    return out


MASK_MAX_PIXELS = 2**32
"""Largest mask image read (PIL's decompression-bomb guard is 89 Mpx; masks of whole
slides are legitimately larger, so the limit is raised for the mask read alone)."""


def load_mask_image(path: Path) -> NDArray[np.bool_]:
    """Read a mask image or ``.npy`` array into a boolean tissue mask.

    The rules: a pixel is tissue when its value is non-zero -- in any colour
    channel of an RGB image -- and finite. The alpha channel is not a colour:
    a transparent pixel (alpha 0) is never tissue, an opaque black one is not
    either. NaN in a float mask is not tissue. A palette image is read by
    its palette's colours and transparency, not by its indices. A ``.npy``
    file follows the same rules (boolean, integer or float arrays, 2-D).
    """
    if not path.is_file():
        raise ConfigError(f"mask file {path} does not exist")
    if path.suffix.lower() == ".npy":
        try:
            arr = np.load(path, allow_pickle=False, mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise ConfigError(f"mask file {path} is not a readable .npy array: {exc}") from exc
        if arr.ndim != 2:
            raise ConfigError(f"mask array {path} has shape {arr.shape}; give a 2-D array")
        return _tissue(np.asarray(arr), alpha=None)
    return _read_image(path)


def _read_image(path: Path) -> NDArray[np.bool_]:
    from PIL import Image, UnidentifiedImageError

    guard = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = MASK_MAX_PIXELS  # for this read only
    try:
        with Image.open(path) as img:
            bands = img.getbands()
            arr = np.asarray(img)
            lut = _palette_tissue(img) if img.mode in ("P", "PA") else None
    except Image.DecompressionBombError as exc:
        raise ConfigError(f"mask file {path} has more than {MASK_MAX_PIXELS} pixels") from exc
    except (UnidentifiedImageError, OSError) as exc:
        raise ConfigError(f"mask file {path} is not a readable image: {exc}") from exc
    finally:
        Image.MAX_IMAGE_PIXELS = guard
    if lut is not None:  # palette indices stand for colours (and alphas): look them up
        if arr.ndim == 2:
            return np.asarray(lut[arr], dtype=bool)
        return np.asarray(lut[arr[..., 0]] & (arr[..., 1] != 0), dtype=bool)  # "PA"
    if arr.ndim == 3 and "A" in bands:
        a = bands.index("A")
        colour = np.delete(arr, a, axis=2)
        return _tissue(colour, alpha=arr[..., a])
    return _tissue(arr, alpha=None)


def _palette_tissue(img: Any) -> NDArray[np.bool_]:
    """Whether each of a palette image's 256 indices is tissue, by its colour and alpha.

    The indices themselves mean nothing: index 0 may be white, and a
    ``transparency`` entry makes an index transparent. Converting a 256-pixel
    strip with the same palette applies PIL's own rules, without converting
    the (possibly huge) image itself.
    """
    from PIL import Image

    strip = Image.frombytes("P", (256, 1), bytes(range(256)))
    strip.putpalette(img.getpalette() or [], rawmode="RGB")
    if "transparency" in img.info:
        strip.info["transparency"] = img.info["transparency"]
    rgba = np.asarray(strip.convert("RGBA"))[0]
    tissue: NDArray[np.bool_] = _tissue(rgba[None, :, :3], alpha=rgba[None, :, 3])[0]
    return tissue


def _tissue(values: NDArray[Any], alpha: NDArray[Any] | None) -> NDArray[np.bool_]:
    """Non-zero and finite (in any channel), and not transparent."""
    nonzero = values != 0
    if values.dtype.kind == "f":
        nonzero &= np.isfinite(values)
    tissue = nonzero.any(axis=2) if nonzero.ndim == 3 else nonzero
    if alpha is not None:
        tissue &= alpha != 0
    return np.asarray(tissue, dtype=bool)


def resolve_mask(spec: object, slide: Slide) -> NDArray[np.bool_] | None:
    """Turn ``None``/``"none"``, ``"auto"``, a path or an array into a checked mask."""
    if spec is None or (isinstance(spec, str) and spec.lower() == "none"):
        return None
    if isinstance(spec, str) and spec.lower() == "auto":
        mask = auto_mask(slide)
    elif isinstance(spec, str | Path):
        mask = load_mask_image(Path(spec))
    else:
        mask = np.asarray(spec)
        if mask.dtype != np.bool_ and not np.isin(mask, (0, 1)).all():
            raise ConfigError("a mask array must be boolean (or 0/1)")
        mask = mask.astype(bool)
    check_mask(mask, slide.shape)
    return mask


def check_mask(mask: NDArray[np.bool_], slide_shape: tuple[int, int]) -> None:
    """Refuse masks that are not 2-D or whose aspect ratio differs from the slide's."""
    if mask.ndim != 2 or min(mask.shape) < 1:
        raise ConfigError(f"mask must be a 2-D image, got shape {mask.shape}")
    (mh, mw), (h, w) = mask.shape, slide_shape
    # One mask pixel of rounding on either side is allowed, plus 2 %.
    tolerance = 0.02 + 1.0 / mh + 1.0 / mw
    if abs((mw / mh) / (w / h) - 1.0) > tolerance:
        raise ConfigError(
            f"mask aspect ratio {mw}x{mh} (w x h) does not match the slide's {w}x{h}; "
            "a mask must cover the whole slide"
        )
    if not mask.any():
        raise ConfigError("mask has no tissue: every patch would be skipped")


def patches_touching(
    mask: NDArray[np.bool_],
    origins: NDArray[np.int64],
    out_hw: tuple[int, int],
    out_shape: tuple[int, int],
) -> NDArray[np.bool_]:
    """For each output box, whether it touches a mask pixel (summed-area table, O(1) each)."""
    mh, mw = mask.shape
    table = np.zeros((mh + 1, mw + 1), dtype=np.int64)
    table[1:, 1:] = mask.cumsum(axis=0).cumsum(axis=1)
    y0, x0 = origins[:, 0], origins[:, 1]
    y1 = np.minimum(y0 + out_hw[0], out_shape[0])
    x1 = np.minimum(x0 + out_hw[1], out_shape[1])
    my0, my1 = (y0 * mh) // out_shape[0], -((-y1 * mh) // out_shape[0])
    mx0, mx1 = (x0 * mw) // out_shape[1], -((-x1 * mw) // out_shape[1])
    inside = table[my1, mx1] - table[my0, mx1] - table[my1, mx0] + table[my0, mx0]
    return np.asarray(inside > 0)


def count_patches(slide: Slide, config: PlanConfig, mask: NDArray[np.bool_] | None) -> int:
    """Grid patches a run keeps (those touching tissue), counted row band by row band.

    Never materialises the whole grid: memory is one band of origin rows.
    """
    from harness.plan import grid_count, grid_origins, output_shape

    out = output_shape(slide.shape, slide.mpp, config.mpp)
    (oh, ow), (sh, sw) = config.out_hw, config.stride_hw
    rows, cols = grid_count(out[0], oh, sh), grid_count(out[1], ow, sw)
    if mask is None:
        return rows * cols
    kept, band = 0, max(1, 2**20 // max(cols, 1))
    for r in range(0, rows, band):
        y0 = r * sh
        y1 = min(out[0], (min(rows, r + band) - 1) * sh + 1)
        origins = grid_origins(out, config.out_hw, config.stride_hw, (y0, y1, 0, out[1]))
        origins = origins[(origins[:, 0] >= y0) & (origins[:, 0] < y1)]
        kept += int(np.count_nonzero(patches_touching(mask, origins, config.out_hw, out)))
    return kept
